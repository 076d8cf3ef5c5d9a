#!/usr/bin/env bash
# Ember against llama.cpp on the same GGUF with the same threads, the two
# interleaved round by round so both see the same machine state:
#   prefill  pp512          llama-bench -p 512     | ember bench --engine-only --n-prompt 512
#   decode   tg128          llama-bench -n 128     | ember bench --engine-only --n-gen 128
#   decode   tg128 @ d512   llama-bench -n 128 -d 512 | ... --depth 512
#   16 parallel sequences of 128 + 128 tokens, output tokens/s:
#            llama-batched-bench -npp 128 -ntg 128 -npl 16 | ember bench --concurrency 16
# Prints a Markdown table (mean ± standard deviation over the rounds, and
# Ember / llama.cpp) for docs/PERFORMANCE.md; raw results go to stderr.
#
# llama.cpp is built once by scripts/build-llama-cpp.sh (from the
# llama-cpp-python==0.3.36 sdist, which vendors its source; about 8 minutes
# on 2 cores).
#
# Usage: scripts/bench_llama_cpp.sh [--model FILE.gguf] [--threads N] [--rounds R]
set -euo pipefail
cd "$(dirname "$0")/.."

model="" threads="$(nproc)" rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -n "$model" ] || model="$(scripts/fetch-default-model.sh)"

bin=$(scripts/build-llama-cpp.sh)

ember="${EMBER_BIN:-target/release/ember}"
[ -x "$ember" ] || cargo build --release --locked -p ember-cli >&2

bandwidth_bin=$(mktemp)
cc -O2 -mavx2 -pthread scripts/membw.c -o "$bandwidth_bin"
results=$(mktemp)
for round in $(seq 1 "$rounds"); do
  echo "round $round/$rounds" >&2
  "$bin/llama-bench" -m "$model" -t "$threads" -p 512 -n 128 -d 0,512 -r 1 -o jsonl 2>/dev/null \
    | sed 's/^/llama-bench /' >> "$results"
  "$ember" bench --engine-only --model "$model" --threads "$threads" --n-prompt 512 --n-gen 128 \
    --depth 0,512 --repetitions 1 2>/dev/null | tail -n 1 | sed 's/^/ember-engine /' >> "$results"
  "$bin/llama-batched-bench" -m "$model" -t "$threads" -c 4096 -npp 128 -ntg 128 -npl 16 \
    --output-format jsonl 2>&1 | grep '^{' | sed 's/^/llama-batched /' >> "$results"
  "$ember" bench --model "$model" --threads "$threads" --concurrency 16 --prompt-len 128 \
    --output-len 128 --requests 16 2>/dev/null | tail -n 1 | sed 's/^/ember-batched /' >> "$results"
  echo "bandwidth {\"gbps\": $("$bandwidth_bin" "$threads")}" >> "$results"
done
cat "$results" >&2

python3 - "$results" "$model" "$threads" "$rounds" <<'EOF'
import json, os, statistics, sys

path, model, threads, rounds = sys.argv[1:]
llama, ember, bandwidth = {}, {}, []
for line in open(path):
    kind, _, payload = line.partition(" ")
    data = json.loads(payload)
    if kind == "llama-bench":
        name = f"pp{data['n_prompt']}" if data["n_prompt"] else f"tg{data['n_gen']}"
        if data.get("n_depth"):
            name += f" @ d{data['n_depth']}"
        llama.setdefault(name, []).append(data["avg_ts"])
    elif kind == "ember-engine":
        for t in data["tests"]:
            ember.setdefault(t["test"], []).append(t["avg_ts"])
    elif kind == "llama-batched":
        # Output tokens over the whole run (prefill included), as ember bench counts them.
        llama.setdefault("16 x (128 + 128)", []).append(data["pl"] * data["tg"] / data["t"])
    elif kind == "ember-batched":
        level = data["levels"][0]
        ember.setdefault("16 x (128 + 128)", []).append(level["output_tokens_per_s"])
    elif kind == "bandwidth":
        bandwidth.append(data["gbps"])

def cell(values):
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"

print(f"{model}, {threads} threads, {rounds} interleaved rounds (tokens/s)\n")
print("| test | Ember | llama.cpp | Ember / llama.cpp |")
print("|---|---:|---:|---:|")
for name in ["pp512", "tg128", "pp512 @ d512", "tg128 @ d512", "16 x (128 + 128)"]:
    e, l = ember.get(name, []), llama.get(name, [])
    ratio = f"{statistics.mean(e) / statistics.mean(l):.2f}x" if e and l else "-"
    print(f"| {name} | {cell(e)} | {cell(l)} | {ratio} |")
if bandwidth:
    # Every weight is read once per decoded token: the file size bounds the
    # bytes read (its metadata is a few MB of it).
    gb = os.path.getsize(model) / 1e9
    bw = statistics.mean(bandwidth)
    print(f"\nRead bandwidth (scripts/membw.c, {threads} threads): {bw:.1f} GB/s; at {gb * 1e3:.0f} MB per token "
          f"the decode limit is {bw / gb:.0f} tokens/s.")
    for who, table in (("Ember", ember), ("llama.cpp", llama)):
        if table.get("tg128"):
            tg = statistics.mean(table["tg128"])
            print(f"{who} tg128 reads {tg * gb:.1f} GB/s, {100 * tg * gb / bw:.0f}% of it.")
EOF
