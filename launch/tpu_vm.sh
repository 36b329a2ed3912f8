#!/usr/bin/env bash
# Cloud TPU VM pod slice: create, install hvpose on every worker, run the same command on all workers, fetch logs,
# delete. Data and workdir live on GCS so every worker sees them.
#
#   launch/tpu_vm.sh [--dry-run] create|install|check|run|logs|delete|all
#
# Settings (environment):
#   TPU_NAME=hvpose-v4-32  ZONE=us-central2-b  ACCELERATOR=v4-32  RUNTIME=tpu-ubuntu2204-base
#   REPO_URL=<git URL of hvpose>  BRANCH=main  PYTHON_VERSION=3.12
#   CONFIG=configs/coco.py  WORKDIR=gs://BUCKET/hvpose/run1  EXTRA_FLAGS="--config.data.train.annotations=..."
# --dry-run prints every command instead of running it (gcloud is not called).
#
# Interpreter: hvpose needs Python >= 3.12, but the TPU VM images (tpu-ubuntu2204-base: Ubuntu 22.04) ship
# python3 3.10, and pip is not guaranteed to be there. So `install` never uses the image's python3 for the venv:
# on every worker it installs uv into ~/.local/bin, lets uv download a managed CPython $PYTHON_VERSION
# (`uv python install`), makes ~/hvpose/.venv with it (`uv venv`) and installs into that venv (`uv pip install`).
# uv comes from PyPI with `python3 -m pip install --user uv` when the image has pip (a plain wheel install into
# ~/.local that needs no sudo); when pip is missing (or refuses, as on PEP 668 images) it falls back to Astral's
# standalone installer (curl), installed unmanaged into ~/.local/bin so no shell profile is edited. apt-get
# (python3-pip, deadsnakes) is avoided: it needs sudo and often waits on the apt lock that unattended-upgrades holds
# on a freshly booted VM, and Ubuntu 22.04 has no python3.12 package.
# `install` ends with `check`: on every worker at once (a pod slice's TPU runtime needs all hosts), the venv's
# python must be >= 3.12, import jax and hvpose and see TPU devices, so a broken install fails here, not at `run`.
set -euo pipefail

USAGE="usage: launch/tpu_vm.sh [--dry-run] create|install|check|run|logs|delete|all"
DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
ACTION=${1:?$USAGE}

TPU_NAME=${TPU_NAME:-hvpose-v4-32}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REPO_URL=${REPO_URL:-https://example.invalid/hvpose.git}
BRANCH=${BRANCH:-main}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
CONFIG=${CONFIG:-configs/coco.py}
WORKDIR=${WORKDIR:-gs://YOUR_BUCKET/hvpose/run1}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
LOG=/tmp/hvpose-train.log
# On the workers (expanded there: keep the ~ unquoted): the checkout, its venv, and uv.
REMOTE_DIR='~/hvpose'
REMOTE_PYTHON=.venv/bin/python  # relative to REMOTE_DIR; `install` creates it, `check` and `run` use it
UV='~/.local/bin/uv'

quote() {  # a word as the shell would read it back: as is when safe, else in single quotes
  case "$1" in
    *[!A-Za-z0-9_./:=@%+,-]* | '') printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

run() {  # prints the command (copy-pastable); runs it unless --dry-run
  printf '+'; local arg; for arg in "$@"; do printf ' '; quote "$arg"; done; printf '\n'
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

on_all_workers() {  # runs a shell command on every worker of the slice at once; fails if it fails on any worker
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

join() {  # join SEP WORDS...: one remote command line from steps
  local sep=$1 out=$2; shift 2
  local step; for step in "$@"; do out+="$sep$step"; done
  printf '%s' "$out"
}

create() {
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME"
}

install() {
  local steps=(
    "set -e"
    # uv: from PyPI with the image's pip if it has one, else Astral's standalone installer (see the header).
    "if python3 -m pip install -q --user -U uv; then :; else echo 'hvpose install: no usable pip; installing uv with the standalone installer' >&2; curl -LsSf -o ~/.uv-install.sh https://astral.sh/uv/install.sh; UV_UNMANAGED_INSTALL=\$HOME/.local/bin sh ~/.uv-install.sh; fi"
    "$UV --version"
    "$UV python install $PYTHON_VERSION"
    "rm -rf $REMOTE_DIR"
    "git clone --branch $BRANCH $REPO_URL $REMOTE_DIR"
    "cd $REMOTE_DIR"
    # --seed puts pip into the venv too, for ad-hoc installs on a worker.
    "$UV venv --seed --python $PYTHON_VERSION .venv"
    "$UV pip install -q --python $REMOTE_PYTHON -e . 'jax[tpu]' gcsfs google-cloud-storage"
  )
  on_all_workers "$(join '; ' "${steps[@]}")"
  check
}

check() {
  # One line per worker, or a one-line reason and a non-zero exit (gcloud fails if any worker fails).
  local py='import sys; sys.version_info >= (3, 12) or sys.exit("hvpose check: Python %s is older than 3.12" % sys.version.split()[0]); import jax, hvpose; jax.default_backend() == "tpu" or sys.exit("hvpose check: jax sees no TPU (backend %s; is another process using it?)" % jax.default_backend()); print("hvpose check: Python", sys.version.split()[0], "jax", jax.__version__, jax.devices())'
  on_all_workers "cd $REMOTE_DIR && $REMOTE_PYTHON -c '$py'"
}

train() {
  # Every worker runs the same command; hvpose.main calls jax.distributed.initialize() on a pod slice.
  on_all_workers "cd $REMOTE_DIR && nohup $REMOTE_PYTHON -m hvpose.main --config=$CONFIG --workdir=$WORKDIR \
--mode=train_and_eval $EXTRA_FLAGS > $LOG 2>&1 &"
}

logs() {
  run mkdir -p logs
  run gcloud compute tpus tpu-vm scp "$TPU_NAME:$LOG" "logs/$TPU_NAME-worker0.log" --zone="$ZONE" --worker=0
  on_all_workers "tail -n 3 $LOG"
}

delete() {
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
}

case "$ACTION" in
  create) create ;;
  install) install ;;
  check) check ;;
  run) train ;;
  logs) logs ;;
  delete) delete ;;
  all) create; install; train ;;
  *) echo "unknown action $ACTION; $USAGE" >&2; exit 2 ;;
esac
