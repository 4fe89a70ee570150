#!/usr/bin/env bash
# A budget sweep as a Slurm array job: each array task runs its share of the (method, budget)
# grid with `autorep sweep --shard K/N`; one last job merges the tables and draws the plot.
#
#   # 1. the shared teacher, once (the shards distil from it):
#   sbatch --wait scripts/slurm-sweep.sh teacher configs/sweep-fashion-mnist-resnet20.json
#   # 2. the runs, 12 array tasks for 4 methods x 3 budgets:
#   sbatch --wait --array=1-12 scripts/slurm-sweep.sh shard configs/sweep-fashion-mnist-resnet20.json
#   # 3. the table and the Pareto plot:
#   scripts/slurm-sweep.sh collect configs/sweep-fashion-mnist-resnet20.json
#
# Every task writes into the sweep's "out" folder, which must be on a file system all nodes
# share. A task that is preempted and requeued resumes its run from checkpoints/last.pt.
# One GPU per task; for a multi-GPU task set --gpus-per-task and --ntasks-per-node and let
# `srun` start one process per GPU (autorep reads SLURM's variables through the exports below).
#
#SBATCH --job-name=autorep-sweep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=autorep-sweep-%A_%a.out
set -euo pipefail

mode="${1:?usage: slurm-sweep.sh teacher|shard|collect SWEEP.json [extra autorep sweep options]}"
sweep="${2:?usage: slurm-sweep.sh teacher|shard|collect SWEEP.json [extra autorep sweep options]}"
shift 2
autorep="${AUTOREP:-build/autorep}"

# The standard launch variables from Slurm's own, for tasks that span several processes.
if [ "${SLURM_NTASKS:-1}" -gt 1 ]; then
  export WORLD_SIZE="$SLURM_NTASKS" RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID"
  export LOCAL_WORLD_SIZE="${SLURM_NTASKS_PER_NODE:-$SLURM_NTASKS}"
  export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"
  export MASTER_PORT="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
fi

case "$mode" in
  teacher) exec "$autorep" sweep --config "$sweep" --teacher-only "$@" ;;
  shard)
    : "${SLURM_ARRAY_TASK_ID:?run the shard mode as an array job (sbatch --array=1-N)}"
    : "${SLURM_ARRAY_TASK_COUNT:?run the shard mode as an array job (sbatch --array=1-N)}"
    exec "$autorep" sweep --config "$sweep" --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" --quiet-runs "$@" ;;
  collect) exec "$autorep" sweep --config "$sweep" --collect "$@" ;;
  *) echo "slurm-sweep.sh: mode must be teacher, shard or collect, got '$mode'" >&2; exit 2 ;;
esac
