#!/usr/bin/env bash
# Starts one autorep process per device on this machine, with the launch variables every
# PyTorch launcher sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
# MASTER_PORT), waits for all of them, and stops the others as soon as one fails.
#
#   scripts/launch.sh -n 2 -- build/autorep train --config configs/quickstart.json --out runs/ddp
#
# Several machines: run it on each with the same --nnodes, --addr (rank 0's machine) and --port,
# and --node-rank 0..nnodes-1. A cluster scheduler that sets the variables itself needs no launcher
# (see scripts/slurm-sweep.sh and README "Multi-process training").
set -euo pipefail

usage() {
  cat <<EOF
usage: $0 [-n NPROC] [--nnodes N] [--node-rank K] [--addr HOST] [--port PORT] -- COMMAND [ARGS...]
  -n, --nproc-per-node NPROC  processes on this machine (default: GPUs if any, else 2)
  --nnodes N                  machines taking part (default 1)
  --node-rank K               this machine's index, 0..N-1 (default 0)
  --addr HOST                 rank 0's machine (default \$MASTER_ADDR or 127.0.0.1)
  --port PORT                 rendezvous TCP port (default \$MASTER_PORT or 29500)
EOF
}

nproc=""
nnodes=1
node_rank=0
addr="${MASTER_ADDR:-127.0.0.1}"
port="${MASTER_PORT:-29500}"
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--nproc-per-node) nproc="$2"; shift 2 ;;
    --nnodes) nnodes="$2"; shift 2 ;;
    --node-rank) node_rank="$2"; shift 2 ;;
    --addr) addr="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "launch.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "launch.sh: no command given (put it after --)" >&2; usage >&2; exit 2; }
if [ -z "$nproc" ]; then
  nproc=2
  if command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
    [ "$gpus" -gt 0 ] && nproc=$gpus
  fi
fi
for v in nproc nnodes node_rank port; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "launch.sh: $v must be a number, got '${!v}'" >&2; exit 2; }
done
[ "$nproc" -ge 1 ] && [ "$nnodes" -ge 1 ] && [ "$node_rank" -lt "$nnodes" ] ||
  { echo "launch.sh: need nproc >= 1, nnodes >= 1 and node-rank < nnodes" >&2; exit 2; }

world=$((nproc * nnodes))
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < nproc; i++)); do
  RANK=$((node_rank * nproc + i)) WORLD_SIZE=$world LOCAL_RANK=$i LOCAL_WORLD_SIZE=$nproc \
    MASTER_ADDR=$addr MASTER_PORT=$port "$@" &
  pids+=($!)
done

# The first process to fail stops the rest (they would otherwise wait for it until the timeout).
status=0
remaining=${#pids[@]}
while [ "$remaining" -gt 0 ]; do
  finished=""
  set +e
  wait -n -p finished
  rc=$?
  set -e
  [ -n "$finished" ] || break  # no child left
  remaining=$((remaining - 1))
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    echo "launch.sh: a process exited with status $rc; stopping the others" >&2
    stop_all
  fi
done
exit "$status"
