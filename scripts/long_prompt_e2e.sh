#!/usr/bin/env bash
# One long prompt end to end through `ember serve`: the default model with
# its window stretched to 64K by YaRN, a prompt of N tokens sent to
# /v1/completions over loopback, 16 tokens back. Prints the server's
# prefill progress lines, the request's time and the server's peak RSS.
#
#   scripts/long_prompt_e2e.sh N [ember serve flags...]
#   scripts/long_prompt_e2e.sh 65536 --attention sparse --kv-retention visible --kv-cache-memory 256MiB
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:?usage: scripts/long_prompt_e2e.sh N [ember serve flags...]}
shift
ember=${EMBER_BIN:-${CARGO_TARGET_DIR:-target}/release/ember}
[ -x "$ember" ] || { echo "no ember binary at $ember (set EMBER_BIN or CARGO_TARGET_DIR)" >&2; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
rope='{"rope_type":"yarn","factor":8,"original_max_position_embeddings":8192}'
# A dense 64K prefill takes about an hour here: no request timeout.
config=$(mktemp --suffix .toml)
printf '[server]\nrequest_timeout_secs = 0\n' >"$config"

"$ember" serve --port "$port" --config "$config" --rope-scaling "$rope" "$@" 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log" "$config"' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done

python3 - "$port" "$n" "$server" <<'EOF'
import json, random, sys, time, urllib.request
port, n, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3]
models = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models"))
model = models["data"][0]
# Token ids of ordinary vocabulary entries (SmolLM2's specials sit below 20).
rng = random.Random(n)
prompt = [rng.randrange(100, 40000) for _ in range(n)]
body = json.dumps({"model": model["id"], "prompt": prompt, "max_tokens": 16, "temperature": 0}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"content-type": "application/json"})
started = time.time()
answer = json.load(urllib.request.urlopen(request, timeout=24 * 3600))
seconds = time.time() - started
peak_kib = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmHWM"))
print(json.dumps({"prompt_tokens": answer["usage"]["prompt_tokens"], "completion_tokens": answer["usage"]["completion_tokens"],
                  "max_model_len": model.get("max_model_len"), "seconds": round(seconds, 1),
                  "server_peak_rss_mib": round(peak_kib / 1024)}))
EOF
grep -E "KV cache|prefill" "$log" | sed -e 's/\x1b\[[0-9;]*m//g'
