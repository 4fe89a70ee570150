#!/usr/bin/env bash
# Builds autorep (installing its Debian packages first when needed) and runs every test; where
# clang is installed, then also fuzzes every reader of user files for a fixed number of inputs
# under AddressSanitizer + UndefinedBehaviorSanitizer (scripts/fuzz.sh, its own build folder
# build-fuzz/, a second build of the libraries with clang: 25 minutes here with other jobs on
# the cores, less on an idle machine; AUTOREP_TEST_FUZZ=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if command -v nvcc >/dev/null 2>&1; then
  echo "test: nvcc -c layers/kernels/gate_cuda.cu (stand-alone CUDA kernel compile)"
  tmp=$(mktemp -d)
  nvcc -std=c++17 -c layers/kernels/gate_cuda.cu -o "$tmp/gate_cuda.o"
  rm -rf "$tmp"
fi
(cd build && ctest --output-on-failure -j"$(nproc)" "$@")
if command -v clang++ >/dev/null 2>&1 && [ "${AUTOREP_TEST_FUZZ:-1}" != 0 ]; then
  scripts/fuzz.sh --runs 10000
else
  echo "test: fuzzing skipped ($(command -v clang++ >/dev/null 2>&1 && echo AUTOREP_TEST_FUZZ=0 || echo 'no clang++'))"
fi
