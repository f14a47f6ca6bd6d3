#!/usr/bin/env bash
# Builds medcluster-collective-bench (collective-bench.cu with the CUDA backend's sources; no GPU
# needed to build).   kernels/gpu/build-collective-bench.sh [OUT_DIR]   (default: <repo>/.device)
#   ARCH overrides the -gencode flags (e.g. ARCH="-gencode=arch=compute_90a,code=sm_90a").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/.device}"
mkdir -p "$out"
NVCC="${NVCC:-nvcc}"
ARCH="${ARCH:--gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=compute_90}"
"$NVCC" -std=c++17 -O3 $ARCH -cudart static -lineinfo \
  "$here/collective-bench.cu" "$root"/kernels/native/cuda/*.cu -x cu "$root"/kernels/native/cuda/*.cc \
  -o "$out/medcluster-collective-bench" -ldl -lpthread -lrt
echo "built $out/medcluster-collective-bench"
