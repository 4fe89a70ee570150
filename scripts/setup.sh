#!/usr/bin/env bash
# Installs every Debian package autorep needs (idempotent, non-interactive) and builds it in
# Release into build/. Usage: scripts/setup.sh [--no-build | --target TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ccache
  ninja-build             # the build tool (a fresh build folder uses it; Make works too)
  libtorch-dev            # LibTorch 1.13 (CPU)
  nlohmann-json3-dev      # JSON configs and exports
  catch2                  # tests (v2 API)
  libcli11-dev            # command line
  zlib1g-dev              # .gz data files
  libjpeg-dev             # image-folder data sets (libjpeg-turbo)
  libopenblas0-pthread    # fast BLAS for LibTorch on CPU
  libgloo-dev             # Gloo headers for multi-process training
  dataset-fashion-mnist   # the real data set of the default runs
  gnuplot-nox             # sweep plots
  libonnx-dev libprotobuf-dev  # the ONNX export (trainer/deploy)
  libopencv-dnn-dev       # OpenCV DNN: the runtime that checks the ONNX files
  python3-onnx            # onnx.checker on exported files (a test case)
  python3                 # acceptance-check helpers
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi

# --no-build: packages only; --target T: build only T (the demo builds only `autorep`, not the
# test executables); no argument: build everything (what scripts/test.sh needs).
target=()
case "${1:-}" in
  --no-build) exit 0 ;;
  --target) [ -n "${2:-}" ] || { echo "setup: --target needs a target name" >&2; exit 2; }
            target=(--target "$2") ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--no-build | --target TARGET]" >&2; exit 2 ;;
esac
# A new build folder uses Ninja (it keeps both cores busy across the libraries); an existing
# one keeps the generator it was made with.
generator=()
[ -f build/CMakeCache.txt ] || ! command -v ninja >/dev/null 2>&1 || generator=(-G Ninja)
cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" "${target[@]}"
echo "setup: built ${2:-every target} in build/"
