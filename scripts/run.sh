#!/usr/bin/env bash
# The main job: fetch the default model once, build Ember, and ask it a
# question through its chat template. Pass your own `ember generate`
# arguments to override, e.g.
#   scripts/run.sh --model /path/to/Qwen3-4B-Instruct-2507 --chat --prompt "Hello"
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-default-model.sh >/dev/null
ember() { cargo run --quiet --release --locked -p ember-cli -- "$@"; }
if (($#)); then
  ember generate "$@"
  exit
fi
ember generate --chat --prompt "What is the capital of France?" --max-tokens 64
