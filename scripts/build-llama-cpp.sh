#!/usr/bin/env bash
# Builds llama.cpp once, CPU only, from the llama-cpp-python==0.3.36 sdist
# (which vendors llama.cpp's source), with -DGGML_NATIVE=ON and without its
# web UI, into $EMBER_CACHE_DIR/llama.cpp-0.3.36 (about 8 minutes on 2
# cores), and prints the directory of its binaries: llama-bench,
# llama-batched-bench and llama-server. CMake comes from PyPI into a
# private venv; a C/C++ compiler must be installed.
set -euo pipefail

version=0.3.36
sdist_sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
cache="${EMBER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}"
prefix="$cache/llama.cpp-$version"
bin="$prefix/build/bin"
targets=(llama-bench llama-batched-bench llama-server)

missing=0
for target in "${targets[@]}"; do [ -x "$bin/$target" ] || missing=1; done
if [ "$missing" = 1 ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check cmake >&2
  echo "fetching llama-cpp-python==$version (sdist, vendors llama.cpp)" >&2
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$version" -d "$work" >&2
  sdist="$work/llama_cpp_python-$version.tar.gz"
  echo "$sdist_sha  $sdist" | sha256sum --check --status || { echo "sha256 mismatch: $sdist" >&2; exit 1; }
  tar xzf "$sdist" -C "$work"
  rm -rf "$prefix" && mkdir -p "$prefix"
  cp -r "$work/llama_cpp_python-$version/vendor/llama.cpp/." "$prefix/"
  echo "building ${targets[*]} in $prefix" >&2
  "$work/venv/bin/cmake" -S "$prefix" -B "$prefix/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=ON >&2
  "$work/venv/bin/cmake" --build "$prefix/build" -j "$(nproc)" --target "${targets[@]}" >&2
fi
echo "$bin"
