#!/usr/bin/env bash
# Fetches, where pip reaches PyPI, the wheels that `benchmarks/gpu.sh` needs on a GPU machine without a network:
# hvpose's dependencies that such an image (jax, flax, optax, orbax, torch, torchvision, numpy, opencv, h5py,
# pillow, tqdm, absl already there) usually lacks. Into .whl/ (keep it out of git: `echo /.whl/ >>.git/info/exclude`).
#
#   benchmarks/gpu_wheels.sh [PYTHON_VERSION, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64 any; do
  platforms+=(--platform "$tag")
done
# ml-collections (configs), pycocotools (COCO evaluation), tensorboardX and its protobuf-free needs, grain,
# tensorflow-datasets and its pure-Python needs (hvpose.data imports them), importlib_resources.
for package in ml-collections pycocotools tensorboardX grain tensorflow-datasets importlib_resources \
               array-record dm-tree promise simple-parsing termcolor toml immutabledict \
               tensorflow-metadata googleapis-common-protos; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    "${platforms[@]}" -d .whl "$package" || echo "gpu_wheels: no wheel for $package" >&2
done
du -sh .whl
