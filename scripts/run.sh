#!/usr/bin/env bash
# The main job: fetch the default model once, build Ember, and serve the
# OpenAI-compatible API on it at http://127.0.0.1:8080 (Ctrl-C stops it).
# Extra arguments go to `ember serve`, e.g.
#   scripts/run.sh --model /path/to/Qwen3-4B-Instruct-2507 --port 9000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-default-model.sh >/dev/null
exec cargo run --quiet --release --locked -p ember-cli -- serve "$@"
