#!/usr/bin/env bash
# Multi-node GPU training with Slurm: one process per GPU (jax.distributed's Slurm detection gives each process
# the GPU of its SLURM_LOCALID), NODES x GPUS_PER_NODE processes in all.
#
#   launch/slurm_gpu.sh [--dry-run]          # submits itself with sbatch
#
# Settings (environment): NODES=4 GPUS_PER_NODE=8 PARTITION=gpu TIME=72:00:00 VENV=$PWD/.venv
#   CONFIG=configs/coco.py WORKDIR=/shared/hvpose/run1 EXTRA_FLAGS="--config.train.batch_size=256"
#   SUBMIT_CHECK=1 (0 skips the interpreter check on the submitting node, e.g. when it cannot run the nodes' Python)
# hvpose.main sees SLURM_NTASKS > 1 and calls jax.distributed.initialize(), which reads Slurm's environment
# (coordinator, process id, local GPU).
# The job requeues on preemption: the SIGTERM Slurm sends makes hvpose save a checkpoint, and the requeued job
# runs the same command, which resumes from it.
#
# What the nodes need: a filesystem shared by the login node and all compute nodes that holds this checkout, the
# WORKDIR, and the venv $VENV; the venv made there beforehand with `make setup` (Python >= 3.12; PYTHON=python3.12
# make setup picks one) plus a CUDA build of JAX (`$VENV/bin/pip install -U "jax[cuda12]"` or similar); and Slurm
# giving each task its GPU (--gpus-per-task=1; the job's processes must see the GPUs, CUDA_VISIBLE_DEVICES is set per
# task). Nothing is installed by the job. The job script fails at once, with one line, if $VENV/bin/python is missing
# or older than 3.12, or lacks jax or hvpose; the same check runs here before sbatch (--dry-run prints it instead).
# --dry-run prints the job script and the commands without running them (sbatch need not be installed).
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
SUBMIT_CHECK=${SUBMIT_CHECK:-1}

# The interpreter check, as shell code: in the job script (on the batch node) and on this node before sbatch.
PY=$VENV/bin/python
PY_CHECK='import sys; v = sys.version_info; v >= (3, 12) or sys.exit("hvpose: %s is Python %d.%d; hvpose needs >= 3.12 (re-create the venv: PYTHON=python3.12 make setup)" % (sys.executable, v[0], v[1])); import importlib.util as u; missing = [m for m in ("jax", "hvpose") if u.find_spec(m) is None]; missing and sys.exit("hvpose: %s lacks %s (run make setup, then pip install jax[cuda12])" % (sys.executable, " and ".join(missing)))'
CHECK="[ -x \"$PY\" ] || { echo \"hvpose: no Python at $PY on \$(hostname); make the venv on the shared filesystem with make setup (Python >= 3.12)\" >&2; exit 1; }
\"$PY\" -c '$PY_CHECK' || exit 1"

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
$CHECK
srun --kill-on-bad-exit=1 "$PY" -m hvpose.main --config=$CONFIG --workdir=$WORKDIR \\
  --mode=train_and_eval --config.data.worker_count=4 $EXTRA_FLAGS
JOBSCRIPT

echo "$JOB"
if [ "$DRY_RUN" = 1 ]; then
  if [ "$SUBMIT_CHECK" = 1 ]; then echo "+ bash -c <the check above, on this node>:"; echo "$CHECK" | sed 's/^/+   /'; fi
  echo "+ mkdir -p $WORKDIR"
  echo "+ sbatch <the job script above>"
else
  if [ "$SUBMIT_CHECK" = 1 ]; then bash -c "$CHECK"; fi
  mkdir -p "$WORKDIR"
  echo "$JOB" | sbatch
fi
