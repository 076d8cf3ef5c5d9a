#!/usr/bin/env bash
# Needles in a haystack, variable tracking and common words (`ember eval --suite ruler`)
# through the HTTP API of `ember serve` on the default model (8K window),
# dense against sparse attention, with and without the needles marked
# [IMPORTANT]. One server per setting on a free loopback port.
#
#   scripts/niah_table.sh [OUT.jsonl] [SAMPLES] [LENGTHS] [SUITE]
#
# Appends the eval rows, each tagged with its "setting", to OUT.jsonl
# (default docs/long_context_quality.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-docs/long_context_quality.jsonl}
samples=${2:-2}
lengths=${3:-1024,2048,4096,8192}
suite=${4:-ruler}
ember=${EMBER_BIN:-${CARGO_TARGET_DIR:-target}/release/ember}
[ -x "$ember" ] || { echo "no ember binary at $ember (set EMBER_BIN or CARGO_TARGET_DIR)" >&2; exit 1; }

# setting label | ember serve flags | ember eval flags
settings=(
  "dense||"
  "sparse default|--attention sparse|"
  "sparse window 320|--attention sparse --sparse-dense-below 0 --sparse-local 4|"
  "sparse window 320 + [IMPORTANT]|--attention sparse --sparse-dense-below 0 --sparse-local 4|--important"
)

for setting in "${settings[@]}"; do
  IFS='|' read -r label serve_flags eval_flags <<<"$setting"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # shellcheck disable=SC2086
  "$ember" serve --port "$port" --served-model-name smollm2 $serve_flags 2>/dev/null &
  server=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 $server 2>/dev/null || { echo "$label: the server did not start" >&2; exit 1; }
    sleep 0.5
  done
  rows=$(mktemp)
  # shellcheck disable=SC2086
  "$ember" eval --base-url "http://127.0.0.1:$port/v1" --model smollm2 --suite "$suite" \
    --lengths "$lengths" --samples "$samples" --max-tokens 64 --json "$rows" $eval_flags >&2
  kill $server
  wait $server 2>/dev/null || true
  python3 - "$label" "$rows" >>"$out" <<'EOF'
import json, sys
for line in open(sys.argv[2]):
    row = json.loads(line)
    print(json.dumps({"setting": sys.argv[1], **row}))
EOF
  rm -f "$rows"
done
