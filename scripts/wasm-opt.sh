#!/usr/bin/env bash
# wasm-opt for the release build (WASM_OPT_BIN in the Makefile): the npm package binaryen's,
# run as worker-build asks, less the `--debuginfo` it adds to keep the wasm's name section.
# Those function names are a quarter of the raw wasm (about 60 KB of the gzipped Worker) and
# only make stack traces readable; `make bench-profile` builds a copy that keeps them.
args=()
for arg in "$@"; do
  [[ "$arg" == "--debuginfo" || "$arg" == "-g" ]] || args+=("$arg")
done
exec "$(dirname "$0")/../node_modules/.bin/wasm-opt" "${args[@]}"
