#!/usr/bin/env bash
# Fills gpu-deps/ (git-ignored) with what scripts/gpu-check.sh needs on a GPU machine that has a
# CUDA PyTorch but none of our Debian packages and no network:
#   include/   header-only libraries (nlohmann/json, CLI11, Catch2 v2), Gloo's headers (c10d
#              includes them), zlib's and libjpeg's headers
#   lib/       zlib and libjpeg as static archives (nothing to install on the other machine)
#   share/cmake/  the CMake package files of nlohmann/json and CLI11
#   data/fashion-mnist/  the four Fashion-MNIST files for the reduction run
# Run it here (after scripts/setup.sh --no-build), then carry gpu-deps with the working tree:
#   device run ... carry ["gpu-deps"]  ->  scripts/gpu-check.sh
# Usage: scripts/gpu-prepare.sh [OUT_DIR]   (default gpu-deps)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-deps}
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

missing=()
need() { [ -e "$1" ] || missing+=("$1 (Debian package $2)"); }
need /usr/include/nlohmann/json.hpp nlohmann-json3-dev
need /usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake nlohmann-json3-dev
need /usr/include/CLI/CLI.hpp libcli11-dev
need /usr/include/catch2/catch.hpp catch2
need /usr/include/gloo/algorithm.h libgloo-dev
need /usr/include/zlib.h zlib1g-dev
need "/usr/lib/$multiarch/libz.a" zlib1g-dev
need /usr/include/jpeglib.h libjpeg-dev
need "/usr/lib/$multiarch/libjpeg.a" libjpeg-dev
need /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz dataset-fashion-mnist
if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu-prepare: missing on this machine (run scripts/setup.sh --no-build first):" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi

tmp="$out.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/include" "$tmp/lib" "$tmp/share/cmake" "$tmp/data/fashion-mnist"
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/catch2 /usr/include/gloo "$tmp/include/"
cp /usr/include/zlib.h /usr/include/zconf.h /usr/include/jpeglib.h /usr/include/jerror.h \
  /usr/include/jmorecfg.h "$tmp/include/"
# jconfig.h lives in the multiarch folder on Debian; the other machine looks in include/.
cp "/usr/include/$multiarch/jconfig.h" "$tmp/include/"
cp "/usr/lib/$multiarch/libz.a" "/usr/lib/$multiarch/libjpeg.a" "$tmp/lib/"
cp -r /usr/share/cmake/nlohmann_json "$tmp/share/cmake/"
[ -d /usr/share/cmake/CLI11 ] && cp -r /usr/share/cmake/CLI11 "$tmp/share/cmake/"
cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$tmp/data/fashion-mnist/"
cat > "$tmp/README" <<EOF
Made by scripts/gpu-prepare.sh on $(date -u +%Y-%m-%d) from this machine's Debian packages, for
scripts/gpu-check.sh on a GPU machine without them. Not part of the source tree (git-ignored).
EOF
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "gpu-prepare: $out filled ($(du -sh "$out" | cut -f1)); carry it with the working tree and run scripts/gpu-check.sh there"
