#!/usr/bin/env bash
# Cloud TPU VM pod slice: create, install hvpose on every worker, run the same command on all workers, fetch logs,
# delete. Data and workdir live on GCS so every worker sees them.
#
#   launch/tpu_vm.sh [--dry-run] create|install|run|logs|delete|all
#
# Settings (environment):
#   TPU_NAME=hvpose-v4-32  ZONE=us-central2-b  ACCELERATOR=v4-32  RUNTIME=tpu-ubuntu2204-base
#   REPO_URL=<git URL of hvpose>  BRANCH=main
#   CONFIG=configs/coco.py  WORKDIR=gs://BUCKET/hvpose/run1  EXTRA_FLAGS="--config.data.train.annotations=..."
# --dry-run prints every command instead of running it.
set -euo pipefail

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
ACTION=${1:?usage: launch/tpu_vm.sh [--dry-run] create|install|run|logs|delete|all}

TPU_NAME=${TPU_NAME:-hvpose-v4-32}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REPO_URL=${REPO_URL:-https://example.invalid/hvpose.git}
BRANCH=${BRANCH:-main}
CONFIG=${CONFIG:-configs/coco.py}
WORKDIR=${WORKDIR:-gs://YOUR_BUCKET/hvpose/run1}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
LOG=/tmp/hvpose-train.log

run() {  # prints the command; runs it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

on_all_workers() {  # runs a shell command on every worker of the slice at once
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

create() {
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME"
}

install() {
  on_all_workers "set -e; rm -rf ~/hvpose; git clone --branch $BRANCH $REPO_URL ~/hvpose; cd ~/hvpose; \
python3 -m venv .venv; .venv/bin/pip install -q -U pip; .venv/bin/pip install -q -e . 'jax[tpu]' gcsfs google-cloud-storage"
}

train() {
  # Every worker runs the same command; hvpose.main calls jax.distributed.initialize() on a pod slice.
  on_all_workers "cd ~/hvpose && nohup .venv/bin/python -m hvpose.main --config=$CONFIG --workdir=$WORKDIR \
--mode=train_and_eval $EXTRA_FLAGS > $LOG 2>&1 &"
}

logs() {
  mkdir -p logs
  run gcloud compute tpus tpu-vm scp "$TPU_NAME:$LOG" "logs/$TPU_NAME-worker0.log" --zone="$ZONE" --worker=0
  on_all_workers "tail -n 3 $LOG"
}

delete() {
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
}

case "$ACTION" in
  create) create ;;
  install) install ;;
  run) train ;;
  logs) logs ;;
  delete) delete ;;
  all) create; install; train ;;
  *) echo "unknown action $ACTION" >&2; exit 2 ;;
esac
