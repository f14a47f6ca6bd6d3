#!/usr/bin/env bash
# Builds the standalone GPU check/bench program (no GPU needed to build).
#   kernels/gpu/build.sh [OUT_DIR]   (default: <repo>/.device)
# MC_GPU_ARCH overrides the targets (e.g. "-gencode=arch=compute_90a,code=sm_90a" for a smaller
# binary to carry to an H100/H200 machine).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/.device}"
mkdir -p "$out"
NVCC="${NVCC:-nvcc}"
ARCH="${MC_GPU_ARCH:--gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=compute_90}"
srcs=("$here/check.cu" "$here/e2e.cu" "$root"/kernels/native/cuda/*.cu)
ccs=("$root"/kernels/native/cuda/*.cc)
"$NVCC" -std=c++17 -O3 $ARCH -cudart static -lineinfo -Xptxas -warn-spills \
  "${srcs[@]}" -x cu "${ccs[@]}" -o "$out/medcluster-gpu-check" -ldl -lpthread -lrt
echo "built $out/medcluster-gpu-check"
