#!/usr/bin/env bash
# Builds autorep (installing its Debian packages first when needed) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if command -v nvcc >/dev/null 2>&1; then
  echo "test: nvcc -c layers/kernels/gate_cuda.cu (stand-alone CUDA kernel compile)"
  tmp=$(mktemp -d)
  nvcc -std=c++17 -c layers/kernels/gate_cuda.cu -o "$tmp/gate_cuda.o"
  rm -rf "$tmp"
fi
cd build
ctest --output-on-failure -j"$(nproc)" "$@"
