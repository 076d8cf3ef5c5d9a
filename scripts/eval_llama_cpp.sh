#!/usr/bin/env bash
# The same `ember eval` suite against `ember serve` and llama.cpp's
# llama-server on the same GGUF, greedy, one request at a time, to show the
# eval is server-neutral. llama-server has no `/tokenize` of chat messages,
# so prompts are sized with the GGUF's own tokenizer and chat template
# (`--tokenizer`); Ember's are sized by its `/tokenize`.
#
#   scripts/eval_llama_cpp.sh [OUT.jsonl] [SUITE] [LENGTHS] [SAMPLES]
#
# Appends the rows, each tagged with its "server", to OUT.jsonl (default
# docs/long_context_servers.jsonl) and prints both tables.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/server-helpers.sh

out=${1:-docs/long_context_servers.jsonl}
suite=${2:-ruler}
lengths=${3:-1024,2048,4096}
samples=${4:-2}
ember=${EMBER_BIN:-${CARGO_TARGET_DIR:-target}/release/ember}
[ -x "$ember" ] || { echo "no ember binary at $ember (set EMBER_BIN or CARGO_TARGET_DIR)" >&2; exit 1; }
model=$(scripts/fetch-default-model.sh)
bin=$(scripts/build-llama-cpp.sh)

ember_port=$(free_port)
"$ember" serve --port "$ember_port" --served-model-name smollm2 >"$logs/ember.log" 2>&1 &
pids+=($!)
llama_port=$(free_port)
# One slot (one request at a time, as the eval sends them) with the model's
# whole 8K window; --jinja renders the GGUF's own chat template.
"$bin/llama-server" -m "$model" --port "$llama_port" --host 127.0.0.1 -t "$(nproc)" -c 8192 -np 1 --jinja \
  --alias smollm2 >"$logs/llama.log" 2>&1 &
pids+=($!)
wait_ready "$ember_port"
wait_ready "$llama_port"

run() { # LABEL PORT EXTRA...
  local label="$1" port="$2" rows
  shift 2
  rows=$(mktemp)
  echo "== $label" >&2
  "$ember" eval --base-url "http://127.0.0.1:$port/v1" --model smollm2 --suite "$suite" --lengths "$lengths" \
    --samples "$samples" --max-tokens 64 --json "$rows" "$@"
  python3 - "$label" "$rows" >>"$out" <<'PY'
import json, sys
for line in open(sys.argv[2]):
    print(json.dumps({"server": sys.argv[1], **json.loads(line)}))
PY
}
run "ember" "$ember_port"
run "llama.cpp" "$llama_port" --tokenizer "$model"
