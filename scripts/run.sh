#!/usr/bin/env bash
# The main job: build Ember and generate from a model.
# Today: `ember generate` on the tiny Qwen3 fixture (random weights, real
# tokenizer pipeline); pass your own arguments to override, e.g.
#   scripts/run.sh --model /path/to/Qwen3-4B-Instruct-2507 --prompt "Hello" --dtype f32
set -euo pipefail
cd "$(dirname "$0")/.."
ember() { cargo run --quiet --release --locked -p ember-cli -- "$@"; }
if (($#)); then
  ember generate "$@"
  exit
fi
ember generate --model tests/fixtures/qwen3-tiny \
  --prompt "The capital of France is Paris." --max-tokens 20 --json
