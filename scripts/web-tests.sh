#!/usr/bin/env bash
# The chat page in a real browser: makes a venv with Playwright's Python
# package (tests/web/requirements.txt; the browser is Debian's chromium,
# installed by scripts/setup-system.sh), starts `ember serve` on the default
# model on a free loopback port and a second one that needs an API key, and
# a third routing to the first as an upstream, and runs tests/web. EMBER_SCREENSHOT_DIR=dir also saves the page's screenshot.
# Usage: scripts/web-tests.sh [path/to/ember]
set -euo pipefail
cd "$(dirname "$0")/.."
ember="${1:-${CARGO_TARGET_DIR:-target}/release/ember}"
scripts/setup-system.sh  # Debian's chromium among the rest, once
source scripts/server-helpers.sh
venv="$cache/venv-web"
ensure_venv "$venv" tests/web/requirements.txt
key="web-key-$RANDOM"
port=$(free_port)
"$ember" serve --port "$port" --kv-cache-memory 256MiB >"$logs/serve.log" 2>&1 &
pids+=($!)
port2=$(free_port)
EMBER_API_KEY="$key" "$ember" serve --port "$port2" --kv-cache-memory 64MiB >"$logs/key.log" 2>&1 &
pids+=($!)
# A third Ember in front of the first, as an upstream: the page on a remote model.
port3=$(free_port)
"$ember" serve --port "$port3" --upstream "http://127.0.0.1:$port/v1" >"$logs/front.log" 2>&1 &
pids+=($!)
for p in "$port" "$port2" "$port3"; do wait_ready "$p"; done

export EMBER_BASE_URL="http://127.0.0.1:$port" EMBER_KEY_URL="http://127.0.0.1:$port2" EMBER_FRONT_URL="http://127.0.0.1:$port3"
export EMBER_API_KEY="$key" EMBER_MODEL="SmolLM2-135M-Instruct.Q4_1"
# Playwright drives the system's Chromium; it never downloads a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if ! "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/web; then
  echo "--- server log"; tail -n 30 "$logs/serve.log"; exit 1
fi
