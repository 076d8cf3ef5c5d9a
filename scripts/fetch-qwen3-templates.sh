#!/usr/bin/env bash
# Fetches Qwen3's chat templates once, for the template tests: no package
# ships Qwen's tokenizer_config.json, but two packages carry copies of the
# templates (sha256-pinned here):
#   - Qwen3-Instruct-2507 (the no-thinking template of Qwen3-4B-Instruct-2507)
#     from the `chat_template` of xinference==4.1.0's
#     xinference/model/llm/models/Qwen3-Instruct.json (Apache-2.0);
#   - the original hybrid-thinking Qwen3 template from llama-cpp-python==0.3.36's
#     vendor/llama.cpp/models/templates/Qwen-Qwen3-0.6B.jinja (MIT package;
#     copied from Qwen/Qwen3-0.6B by llama.cpp's get_chat_template.py).
# Destination: $EMBER_CACHE_DIR/qwen3/{Qwen3-Instruct-2507,Qwen3-hybrid}.jinja.
# Prints the folder.
set -euo pipefail
cache="${EMBER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}"
dest="$cache/qwen3"
if [ -f "$dest/Qwen3-Instruct-2507.jinja" ] && [ -f "$dest/Qwen3-hybrid.jinja" ]; then
  echo "$dest"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
check() { echo "$1  $2" | sha256sum --check --status || { echo "sha256 mismatch: $2" >&2; exit 1; }; }
pipdl() { python3 -m pip download --quiet --no-deps --disable-pip-version-check "$@" -d "$work" >&2; }

echo "fetching xinference==4.1.0 (~56 MB) and llama-cpp-python==0.3.36 sources (~77 MB) for Qwen3's chat templates" >&2
pipdl xinference==4.1.0
check 40dd71d79e85a86f85c0d8b435fe51111fcf2c09227350d4a452229709528f2d "$work/xinference-4.1.0-py3-none-any.whl"
pipdl --no-binary llama-cpp-python llama-cpp-python==0.3.36
check 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e "$work/llama_cpp_python-0.3.36.tar.gz"

mkdir -p "$dest"
python3 - "$work" "$dest" <<'PY'
import json, sys, tarfile, zipfile
work, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(f"{work}/xinference-4.1.0-py3-none-any.whl") as z:
    spec = json.loads(z.read("xinference/model/llm/models/Qwen3-Instruct.json"))
open(f"{dest}/Qwen3-Instruct-2507.jinja.partial", "w").write(spec[0]["chat_template"])
with tarfile.open(f"{work}/llama_cpp_python-0.3.36.tar.gz") as t:
    member = t.extractfile("llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/Qwen-Qwen3-0.6B.jinja")
    open(f"{dest}/Qwen3-hybrid.jinja.partial", "wb").write(member.read())
PY
mv "$dest/Qwen3-Instruct-2507.jinja.partial" "$dest/Qwen3-Instruct-2507.jinja"
mv "$dest/Qwen3-hybrid.jinja.partial" "$dest/Qwen3-hybrid.jinja"
echo "$dest"
