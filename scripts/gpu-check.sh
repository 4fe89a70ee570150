#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU and a CUDA PyTorch (its LibTorch is what
# autorep builds against) but none of our Debian packages: carry gpu-deps/ (scripts/gpu-prepare.sh)
# with the working tree. It
#   1. configures and builds `autorep` and `test_layers` against PyTorch's LibTorch (CUDA kernels
#      on, ONNX off), with ccache when present,
#   2. runs the CUDA test cases ([cuda]: fused vs composite for every granularity and dtype,
#      non-contiguous and channels_last inputs, N x F with F > 65,535, moments, every gradient,
#      CUDA against CPU),
#   3. `bench gate --device cuda` at float32/bfloat16/float16 on the shipped shapes,
#   4. `bench step --device cuda` for resnet20 (1x28x28, batch 128) and resnet18 (3x32x32,
#      batch 256, bf16 teacher),
#   5. a 1-epoch teacher and a 2-epoch AutoReP reduction (1 search + 1 finetune) of resnet20 on
#      the real Fashion-MNIST files carried in gpu-deps/data, then the export's verify,
#   6. with two or more GPUs, the same reduction as two NCCL processes.
# Prints one "gpu-check: PASS|FAIL <item>: <detail>" line per item (the last lines of the output)
# and exits with the number of failures. Budget: about 8 minutes on one H200, build included.
# Usage: scripts/gpu-check.sh [--dry-run] [BUILD_DIR] [OUT_DIR]   (defaults build-gpu, ${OUT:-runs}/gpu-check)
#   --dry-run: on a machine without a GPU, only the build step (configure with gpu-deps/ first and
#   Debian's package folders ignored, then build `autorep`) against the LibTorch of
#   $GPU_CHECK_TORCH_PREFIX (default: Debian's, /usr/share/cmake/Torch's prefix /usr).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
build=${1:-build-gpu}
out=${2:-${OUT:-runs}/gpu-check}
deps=$root/gpu-deps
py=${PYTHON:-python3}
jobs=${GPU_CHECK_JOBS:-$(nproc)}
mkdir -p "$out"
summary=()
fails=0
record() {  # record PASS|FAIL item detail
  summary+=("gpu-check: $1 $2: $3")
  [ "$1" = PASS ] || fails=$((fails + 1))
  echo "gpu-check: $1 $2: $3"
}
finish() {
  echo
  echo "== gpu-check summary"
  printf '%s\n' "${summary[@]}"
  exit "$fails"
}
step() { echo; echo "== $*"; }

if [ $dry = 1 ]; then
  [ -d "$deps/include/nlohmann" ] || { record FAIL dry-run "gpu-deps/ missing: run scripts/gpu-prepare.sh"; finish; }
  torch_prefix=${GPU_CHECK_TORCH_PREFIX:-/usr}
  multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
  # Debian's folders of the packages gpu-deps/ replaces: CMake must find them all in gpu-deps/.
  ignore="/usr/share/cmake/nlohmann_json;/usr/share/cmake/CLI11;/usr/lib/$multiarch/cmake/nlohmann_json"
  start=$(date +%s)
  if cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DAUTOREP_ONNX=OFF -DAUTOREP_BUILD_TESTS=OFF \
       -DCMAKE_PREFIX_PATH="$deps;$torch_prefix" -DCMAKE_IGNORE_PATH="$ignore" \
       -DZLIB_INCLUDE_DIR="$deps/include" -DZLIB_LIBRARY="$deps/lib/libz.a" \
       -DJPEG_INCLUDE_DIR="$deps/include" -DJPEG_LIBRARY="$deps/lib/libjpeg.a" >"$out/configure.log" 2>&1 &&
     grep -q "$deps/share/cmake/nlohmann_json" "$build/CMakeCache.txt" &&
     grep -q "AUTOREP_GLOO_INCLUDE:PATH=$deps/include" "$build/CMakeCache.txt" &&
     cmake --build "$build" -j"$jobs" --target autorep >"$out/build.log" 2>&1 &&
     "$build/autorep" count --model resnet20 --input 1x28x28 >"$out/count.log" 2>&1; then
    record PASS dry-run "configured from gpu-deps/ and built autorep against $torch_prefix in $(( $(date +%s) - start )) s ($(grep -o "autorep: LibTorch.*" "$out/configure.log"))"
  else
    tail -20 "$out/configure.log" "$out/build.log" 2>/dev/null; record FAIL dry-run "see $out/configure.log, $out/build.log"
  fi
  finish
fi

step "0/6 machine"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L; then
  record FAIL machine "no NVIDIA GPU (nvidia-smi)"; finish
fi
gpus=$(nvidia-smi -L | grep -c '^GPU')
[ -d "$deps/include/nlohmann" ] || { record FAIL machine "gpu-deps/ missing: run scripts/gpu-prepare.sh on the CPU machine and carry gpu-deps"; finish; }
torch_prefix=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null) || {
  record FAIL machine "no PyTorch for $py (set PYTHON=...)"; finish; }
torch_info=$("$py" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())')
cuda_arch=$("$py" -c 'import torch; p=torch.cuda.get_device_capability(); print(f"{p[0]}{p[1]}")' 2>/dev/null || echo 90)
record PASS machine "$gpus GPU(s) ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)), torch $torch_info, sm_$cuda_arch, $jobs cores"

step "1/6 build against $torch_prefix"
start=$(date +%s)
launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
# nvcc next to the CUDA runtime PyTorch uses, when the machine has none on PATH.
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break; done
fi
if ! cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DAUTOREP_ONNX=OFF \
    -DCMAKE_PREFIX_PATH="$deps;$torch_prefix" -DCMAKE_CUDA_ARCHITECTURES="$cuda_arch" \
    -DZLIB_INCLUDE_DIR="$deps/include" -DZLIB_LIBRARY="$deps/lib/libz.a" \
    -DJPEG_INCLUDE_DIR="$deps/include" -DJPEG_LIBRARY="$deps/lib/libjpeg.a" \
    "${launcher[@]}" >"$out/configure.log" 2>&1; then
  tail -30 "$out/configure.log"; record FAIL build "configure failed (see $out/configure.log)"; finish
fi
grep "autorep: LibTorch" "$out/configure.log"
kernels=1
if ! grep -q "CUDA kernels: ON" "$out/configure.log"; then
  # A CUDA LibTorch without nvcc still trains on the GPU (the gate's ATen composite): go on, but
  # the kernels themselves are not checked.
  kernels=0
  record FAIL kernels "CUDA kernels not built (no nvcc found; see $out/configure.log): the rest runs the gate's ATen composite"
fi
if ! cmake --build "$build" -j"$jobs" --target autorep test_layers >"$out/build.log" 2>&1; then
  grep -E "error|Error" "$out/build.log" | head -30; record FAIL build "build failed (see $out/build.log)"; finish
fi
record PASS build "autorep and test_layers in $(( $(date +%s) - start )) s"
bin=$build/autorep

step "2/6 CUDA test cases"
if [ $kernels = 0 ]; then
  echo "gpu-check: SKIP tests: no CUDA kernels built"
elif "$build/tests/layers/test_layers" "[cuda]" >"$out/tests.log" 2>&1; then
  record PASS tests "$(grep -E "^All tests passed|test cases" "$out/tests.log" | tail -1)"
else
  tail -40 "$out/tests.log"; record FAIL tests "$(grep -E "test cases" "$out/tests.log" | tail -1) (see $out/tests.log)"
fi
[ $kernels = 1 ] && grep -q "no CUDA device" "$out/tests.log" && record FAIL tests "the tests saw no CUDA device"

step "3/6 bench gate --device cuda"
bench_gate() {  # name shape dtype granularity
  local o r
  if o=$("$bin" bench gate --device cuda --shape "$2" --dtype "$3" --granularity "$4" --iters 50 2>&1); then
    echo "$o" | tail -4
    r=$(echo "$o" | grep -o "gate_over_relu=[0-9.]*" | tail -1)
    record PASS "gate $1 $3 $4" "$r, $(echo "$o" | grep -o "bandwidth:.*" | head -1)"
  else
    echo "$o" | tail -5; record FAIL "gate $1 $3 $4" "$(echo "$o" | tail -1)"
  fi
}
for dt in float32 bfloat16 float16; do bench_gate cifar 256,64,32,32 $dt pixel; done
bench_gate cifar 256,64,32,32 float32 channel
bench_gate cifar 256,64,32,32 float32 layer
bench_gate small-spatial 256,512,4,4 float32 pixel
bench_gate linear 256,100000 float32 pixel

step "4/6 bench step --device cuda"
bench_step() {  # name model input batch teacher_dtype
  local o
  if o=$("$bin" bench step --device cuda --model "$2" --input "$3" --batch "$4" --teacher-dtype "$5" --iters 20 2>&1); then
    echo "$o" | tail -4
    record PASS "step $1" "$(echo "$o" | grep -o "search_over_baseline=[0-9.]*" | tail -1), $(echo "$o" | grep -oE "(baseline|search) step.*ms" | tr "\n" " ")$(echo "$o" | grep -o "throughput:.*")"
  else
    echo "$o" | tail -5; record FAIL "step $1" "$(echo "$o" | tail -1)"
  fi
}
bench_step resnet20 resnet20 1x28x28 128 float32
bench_step resnet18-cifar resnet18 3x32x32 256 bfloat16

step "5/6 reduction run on Fashion-MNIST (cuda)"
data=(--set data.path="$deps/data/fashion-mnist" --set train.device='"cuda"')
start=$(date +%s)
if "$bin" train --config configs/fashion-mnist-resnet20.json "${data[@]}" --set train.epochs=1 \
     --out "$out/teacher" >"$out/teacher.log" 2>&1 &&
   "$bin" train --config configs/fashion-mnist-resnet20-autorep.json "${data[@]}" --set train.epochs=2 \
     --set search.search_epochs=1 --set search.budget='"3%"' \
     --set search.teacher="$out/teacher/checkpoints/best.pt" --out "$out/autorep" >"$out/autorep.log" 2>&1 &&
   "$bin" verify --export "$out/autorep/export/mask.json" --checkpoint "$out/autorep/checkpoints/best.pt" \
     >"$out/verify.log" 2>&1; then
  tail -3 "$out/autorep.log"
  field() { sed -n "s/.*\"$2\": *\([0-9.e-]*\).*/\1/p" "$1/result.json" | head -1; }
  record PASS reduction "teacher 1 epoch ($(field "$out/teacher" accuracy)) + autorep 3% 2 epochs in $(( $(date +%s) - start )) s: test accuracy $(field "$out/autorep" accuracy), $(field "$out/autorep" relu_count) ReLUs, export verified"
else
  tail -20 "$out"/*.log; record FAIL reduction "see $out/teacher.log, $out/autorep.log"
fi

step "6/6 NCCL"
if [ "$gpus" -ge 2 ]; then
  if scripts/launch.sh -n 2 -- "$bin" train --config configs/fashion-mnist-resnet20-autorep.json "${data[@]}" \
       --set train.epochs=2 --set search.search_epochs=1 --set search.budget='"3%"' \
       --set search.teacher="$out/teacher/checkpoints/best.pt" --out "$out/autorep-nccl" >"$out/nccl.log" 2>&1; then
    record PASS nccl "2 processes, $(grep -o "ReLUs [0-9]*/[0-9]*" "$out/nccl.log" | tail -1)"
  else
    tail -20 "$out/nccl.log"; record FAIL nccl "see $out/nccl.log"
  fi
else
  echo "gpu-check: SKIP nccl: one GPU (NCCL needs a GPU per process)"
fi
finish
