#!/usr/bin/env bash
# Prefill time and peak memory against prompt length, dense against sparse
# attention, through the engine as a served request runs (chunked prefill,
# one request, one output token), on the default model with its window
# stretched to 64K by YaRN.
#
#   scripts/bench_long_context.sh [OUT.jsonl] [LENGTHS...]
#
# Appends one JSON object per run to OUT.jsonl (default
# docs/long_context_speed.jsonl): {"attention","prompt_len","ttft_s",
# "prefill_tok_s","peak_rss_mib"}. Lengths default to 1024 ... 65536,
# doubling; dense and sparse alternate at each length (ATTENTION="sparse
# dense" or a single mode changes that). Render the table and
# plot with scripts/plot_long_context.py.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-docs/long_context_speed.jsonl}
shift || true
lengths=("$@")
if [ ${#lengths[@]} -eq 0 ]; then
  lengths=(1024 2048 4096 8192 16384 32768 65536)
fi
ember=${EMBER_BIN:-${CARGO_TARGET_DIR:-target}/release/ember}
[ -x "$ember" ] || { echo "no ember binary at $ember (set EMBER_BIN or CARGO_TARGET_DIR)" >&2; exit 1; }
model=${EMBER_MODEL:-${EMBER_CACHE_DIR:-$HOME/.cache/ember}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
# SmolLM2-135M was trained to 8192 positions; YaRN x8 gives 65536.
rope='{"rope_type":"yarn","factor":8,"original_max_position_embeddings":8192}'

for length in "${lengths[@]}"; do
  # Prompt plus its one output token must fit the 65536-token window.
  n=$((length < 65536 ? length : 65535))
  for attention in ${ATTENTION:-dense sparse}; do
    extra=()
    if [ "$attention" = sparse ]; then
      # The default layout (64-token blocks, 16 local, 64 sinks, dense
      # below 4096), with blocks the window has passed given back.
      extra=(--attention sparse --kv-retention visible)
    fi
    line=$("$ember" bench --model "$model" --rope-scaling "$rope" --kv-cache-memory 4GiB \
      --concurrency 1 --requests 1 --prompt-len "$n" --output-len 1 "${extra[@]}" 2>/dev/null | grep '^{"model"')
    python3 - "$attention" "$n" "$line" >>"$out" <<'EOF'
import json, sys
attention, n, line = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
level = line["levels"][0]
ttft = level["ttft_p50_ms"] / 1000
print(json.dumps({"attention": attention, "prompt_len": n, "ttft_s": round(ttft, 2),
                  "prefill_tok_s": round(n / ttft, 1), "peak_rss_mib": round(level["peak_rss_mib"])}))
EOF
    tail -n 1 "$out"
  done
done
