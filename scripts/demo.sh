#!/usr/bin/env bash
# The main job, end to end on the real Fashion-MNIST data (about 5 minutes on 2 cores):
#   1. a short all-ReLU baseline (the teacher),
#   2. an AutoReP reduction of it to a small ReLU budget (search, projection, finetune),
#   3. the export of the masks and polynomials (autorep.relu-mask JSON) and of the whole network
#      (ONNX), each verified: the JSON against the checkpoint, the ONNX graph by OpenCV DNN,
#   4. a summary: accuracy before/after, ReLUs before/after, where everything is.
# Usage: scripts/demo.sh [OUT_DIR]   (default runs/demo; an existing demo there is replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
# Packages, then only the `autorep` target (the tests are scripts/test.sh's); up to date: seconds.
scripts/setup.sh --target autorep
bin=build/autorep
out=${1:-runs/demo}
rm -rf "$out"
mkdir -p "$out"
start=$(date +%s)

echo "== 1/3 baseline: cnn-small on Fashion-MNIST, all ReLUs kept"
$bin train --config configs/demo-baseline.json --out "$out/baseline"

echo "== 2/3 AutoReP reduction to the budget in configs/demo-autorep.json"
$bin train --config configs/demo-autorep.json --set search.teacher="$out/baseline/checkpoints/best.pt" \
  --out "$out/autorep"

echo "== 3/3 export check"
export_json="$out/autorep/export/mask.json"
$bin inspect "$export_json" | tail -n 4
$bin verify --export "$export_json" --checkpoint "$out/autorep/checkpoints/best.pt"
onnx="$out/autorep/export/model.onnx"
if [ -f "$onnx" ]; then
  $bin verify --onnx "$onnx" --checkpoint "$out/autorep/checkpoints/best.pt" --eval
fi

# Test accuracy of the checkpoint a run selected on validation accuracy (its result.json), and
# that validation accuracy.
field() { sed -n "s/.*\"$2\": *\([0-9.e-]*\).*/\1/p" "$1/result.json" | head -1; }
base_acc=$(field "$out/baseline" accuracy); red_acc=$(field "$out/autorep" accuracy)
base_val=$(field "$out/baseline" val_accuracy); red_val=$(field "$out/autorep" val_accuracy)
relus() { field "$1" relu_count; }
echo
echo "== summary ($(( $(date +%s) - start )) s)"
pct() { awk -v a="$1" 'BEGIN { printf "%.2f%%", a * 100 }'; }
echo "  baseline  : test accuracy $(pct "$base_acc") (validation $(pct "$base_val")), ReLUs $(relus "$out/baseline")"
echo "  autorep   : test accuracy $(pct "$red_acc") (validation $(pct "$red_val")), ReLUs $(relus "$out/autorep")"
echo "  runs      : $out/baseline, $out/autorep (config.json, metrics.jsonl, log.txt, checkpoints/)"
echo "  export    : $export_json (autorep.relu-mask v1; inspect it with: $bin inspect $export_json)"
[ -f "$onnx" ] && echo "  network   : $onnx (ONNX opset 13, checked by OpenCV DNN; see docs/deploy.md)"
exit 0
