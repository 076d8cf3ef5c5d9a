#!/usr/bin/env bash
# Installs the Debian packages the tests need, once: the lavapipe software
# Vulkan driver that runs the wgpu device without a GPU, Python's venv for
# the client tests, curl, and Chromium for the chat page's browser tests.
set -euo pipefail
missing=()
for pkg in mesa-vulkan-drivers libvulkan1 python3-venv curl chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
