#!/usr/bin/env bash
# Download the wheels the GPU checks need on a machine whose image has torch + CUDA but not
# this project's extra packages (Python 3.12, x86-64): implicit with the RAPIDS memory manager
# its CUDA extension loads against (rmm-cu13 26.4.x; newer releases make implicit fall back to
# the CPU silently) and polars. They land in .whl/ (git-ignored locally via .git/info/exclude).
#   tools/gpu_wheels.sh            then, on the GPU machine:   bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info && { grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude; }
for p in implicit==0.7.3 rmm-cu13==26.4.0 librmm-cu13==26.4.0 "rapids-logger==0.2.*" polars==1.32.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi abi3 --abi cp312 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$p"
done
ls -la .whl
