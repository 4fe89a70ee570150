#!/usr/bin/env bash
# Copies the small artefacts of finished runs that README numbers rest on into
# docs/results/<name>/ (result.json, metrics.jsonl, config.json, log.txt, the export; a
# baseline's checkpoints/best.pt with --teacher, the ONNX graph export/model.onnx with --onnx),
# so a later session can check or reuse them without retraining.
# Usage: scripts/keep-results.sh [--teacher] [--onnx] RUN_DIR NAME
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=0 onnx=0
while [ $# -gt 0 ]; do
  case "$1" in
    --teacher) teacher=1; shift ;;
    --onnx) onnx=1; shift ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || { echo "usage: scripts/keep-results.sh [--teacher] [--onnx] RUN_DIR NAME" >&2; exit 2; }
run=$1 name=$2 dst=docs/results/$2
[ -f "$run/result.json" ] || { echo "keep-results: $run has no result.json (not finished)" >&2; exit 1; }
mkdir -p "$dst"
for f in result.json metrics.jsonl config.json log.txt; do [ -f "$run/$f" ] && cp "$run/$f" "$dst/"; done
[ -f "$run/export/mask.json" ] && mkdir -p "$dst/export" && cp "$run/export/mask.json" "$dst/export/"
if [ $onnx -eq 1 ]; then mkdir -p "$dst/export" && cp "$run/export/model.onnx" "$dst/export/"; fi
if [ $teacher -eq 1 ]; then mkdir -p "$dst/checkpoints" && cp "$run/checkpoints/best.pt" "$dst/checkpoints/"; fi
echo "kept $run in $dst"
