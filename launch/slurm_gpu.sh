#!/usr/bin/env bash
# Multi-node GPU training with Slurm: one process per GPU (jax.distributed's Slurm detection gives each process
# the GPU of its SLURM_LOCALID), NODES x GPUS_PER_NODE processes in all.
#
#   launch/slurm_gpu.sh [--dry-run]          # submits itself with sbatch
#
# Settings (environment): NODES=4 GPUS_PER_NODE=8 PARTITION=gpu TIME=72:00:00 VENV=$PWD/.venv
#   CONFIG=configs/coco.py WORKDIR=/shared/hvpose/run1 EXTRA_FLAGS="--config.train.batch_size=256"
# hvpose.main sees SLURM_NTASKS > 1 and calls jax.distributed.initialize(), which reads Slurm's environment
# (coordinator, process id, local GPU).
# The job requeues on preemption: the SIGTERM Slurm sends makes hvpose save a checkpoint, and the requeued job
# runs the same command, which resumes from it.
set -euo pipefail

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
NODES=${NODES:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PARTITION=${PARTITION:-gpu}
TIME=${TIME:-72:00:00}
VENV=${VENV:-$PWD/.venv}
CONFIG=${CONFIG:-configs/coco.py}
WORKDIR=${WORKDIR:-$PWD/workdir/run1}
EXTRA_FLAGS=${EXTRA_FLAGS:-}

read -r -d '' JOB <<JOBSCRIPT || true
#!/usr/bin/env bash
#SBATCH --job-name=hvpose
#SBATCH --partition=$PARTITION
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=$GPUS_PER_NODE
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=6
#SBATCH --time=$TIME
#SBATCH --requeue
#SBATCH --signal=TERM@120
#SBATCH --output=$WORKDIR/slurm-%j.log
srun --kill-on-bad-exit=1 $VENV/bin/python -m hvpose.main --config=$CONFIG --workdir=$WORKDIR \\
  --mode=train_and_eval --config.data.worker_count=4 $EXTRA_FLAGS
JOBSCRIPT

echo "$JOB"
if [ "$DRY_RUN" = 1 ]; then
  echo "+ sbatch <the job script above>"
else
  mkdir -p "$WORKDIR"
  echo "$JOB" | sbatch
fi
