#!/usr/bin/env bash
# Every test Ember has, as CI runs them:
#   1. the workspace's unit, parity (flex CPU device), GGUF, CLI and
#      end-to-end tests (the last on the default model, fetched once);
#   2. the tiny-model parity tests again on the wgpu device, over the lavapipe
#      software Vulkan driver (slow kernel compilation: tiny models only);
#   3. real clients (the `openai` SDK, LangChain, the OpenAI Agents SDK, the
#      `anthropic` SDK) and curl against running `ember serve`s, directly and
#      through a routing Ember (scripts/client-tests.sh);
#   4. the chat page at `/` in Debian's Chromium, driven by Playwright
#      (scripts/web-tests.sh);
#   5. the short reliability suite (docs/RELIABILITY.md): a soak with
#      hang-ups and preemption, malformed bodies on every route, drain on
#      SIGTERM and restart after SIGKILL;
#   6. a type-check of the `cuda` feature (its LLVM bundle cannot be
#      downloaded here; DOCS_RS=1 makes the bundler skip the download).
# Steps 1 and 2 share one build: the workspace is compiled once with the wgpu
# features on (the tests still default to the flex device), so Burn is not
# compiled twice with two feature sets.
# EMBER_SKIP_WGPU=1 / EMBER_SKIP_CUDA_CHECK=1 skip steps 2 / 6 locally.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "system packages, the default model, Qwen3's chat templates"
scripts/setup-system.sh
scripts/fetch-default-model.sh
scripts/fetch-qwen3-templates.sh

features=()
[ "${EMBER_SKIP_WGPU:-0}" = 1 ] || features=(--features "ember-cli/wgpu ember-model/test-wgpu")

step "workspace tests on flex"
cargo test --release --locked --workspace "${features[@]}"

if [ "${EMBER_SKIP_WGPU:-0}" != 1 ]; then
  step "parity tests on wgpu (lavapipe)"
  export WGPU_BACKEND=vulkan
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
  lvp=$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -n 1 || true)
  [ -n "$lvp" ] && export VK_ICD_FILENAMES="$lvp"
  EMBER_TEST_DEVICE=wgpu cargo test --release --locked --workspace "${features[@]}" --test parity
fi

step "client tests against ember serve"
scripts/client-tests.sh "${CARGO_TARGET_DIR:-target}/release/ember"

step "the chat page in Chromium"
scripts/web-tests.sh "${CARGO_TARGET_DIR:-target}/release/ember"

step "reliability, short runs"
for script in "soak.py --quick" "malformed_http.py --quick" "drain.py"; do
  # shellcheck disable=SC2086
  python3 scripts/$script --ember "${CARGO_TARGET_DIR:-target}/release/ember"
done

if [ "${EMBER_SKIP_CUDA_CHECK:-0}" != 1 ]; then
  step "type-check --features cuda"
  DOCS_RS=1 cargo check --release --locked -p ember-cli --features cuda
fi
step "all tests passed"
