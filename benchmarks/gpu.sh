#!/usr/bin/env bash
# The accelerator run of the benchmarks: one short script for a machine with an NVIDIA GPU, jax with CUDA, torch
# and torchvision already installed, and possibly no network (the device machines lent to this project; see
# benchmarks/README.md). hvpose runs from this checkout (PYTHONPATH=src); Python packages the machine lacks are
# installed from wheels in .whl/ when that folder exists (fetch them where pip works:
# `benchmarks/gpu_wheels.sh`). Results go to $OUT (default benchmarks/results), named after the GPU.
#
#   OUT=/some/dir benchmarks/gpu.sh [PYTHON]
#
# Each benchmark runs under its own time limit, so one that hangs or fails still leaves the others' figures.
# About 8 minutes on an H100/H200, most of it compiling.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hvpose-site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/hvpose-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
"$PYTHON" -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__, torch.cuda.is_available())' \
  || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee "$OUT/nvidia-smi.csv"
status=0
run() {  # run LIMIT_SECONDS NAME ARGS...: one benchmark, its log beside its results
  local limit=$1 name=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$PYTHON" "benchmarks/$name.py" "$@" 2>&1 | tee "$OUT/$name.log" || status=1
}
# The paper's step at the batch sizes a GPU trains with, bfloat16 and float32 (TF32), against PyTorch.
run 300 train_step --paper --peer --batches 64 --paper_batches 8,16 --dtypes bfloat16,float32 --repeats 10
# Voting at the bandwidth floor, and its share of ResNet-101 inference.
run 120 voting --batch 32 --repeats 10
run 120 inference --batch 32 --depth 101
exit $status
