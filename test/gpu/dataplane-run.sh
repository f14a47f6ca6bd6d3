#!/usr/bin/env bash
# One device call for the data plane (issue 10): the collective bench (where built), then each
# mode of collective-gpu.mjs, gpu-parity.mjs, and with DECODE=1 `bench decode` on 70B shapes, each
# in its own process under its own limit. Logs to $OUT. Runs from a bundle folder DIR made by
#   node scripts/device-bundle.mjs DIR && kernels/gpu/build-collective-bench.sh DIR
#   cp test/gpu/dataplane-run.sh DIR/run.sh && git rev-parse HEAD > DIR/COMMIT
# then, on the GPU machine: bash DIR/run.sh
set -u
D="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$D/setup.sh"
export NCCL_NVLS_ENABLE=0
O="${OUT:-/tmp/out}"; mkdir -p "$O"
{
  echo "commit $(cat "$D/COMMIT")"; date -u; nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,compute_mode --format=csv
  lib=$(ldconfig -p 2>/dev/null | awk '/libnccl\.so\.2/{print $NF; exit}')
  if [ -z "$lib" ]; then
    lib=$(python3 -c "import importlib.util,os;s=importlib.util.find_spec('nvidia.nccl');print(os.path.join(list(s.submodule_search_locations)[0],'lib','libnccl.so.2'))" 2>/dev/null)
  fi
  echo "libnccl: ${lib:-none found}"
} > "$O/env.log" 2>&1
lib=$(awk '/^libnccl: \//{print $2}' "$O/env.log")
[ -n "$lib" ] && [ -e "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cat "$O/env.log"
/tmp/node "$D/medcluster.mjs" make-model --out /tmp/tiny --preset tiny > /dev/null 2>&1 && export MEDCLUSTER_TINY_MODEL=/tmp/tiny
# ONLY="cluster parity" runs only the parts named.
part() {
  local name=$1 limit=$2; shift 2
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && return 0
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$O/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc ($(( $(date +%s) - t0 )) s)"
  grep -E '^(FAIL|RESULT)|passed|skipped|rows|Error|error' "$O/$name.log" | head -40
}
[ -x "$D/medcluster-collective-bench" ] && part bench 20 "$D/medcluster-collective-bench"
part kernels 40 /tmp/node "$D/collective-gpu.mjs" kernels
part nccl 25 /tmp/node "$D/collective-gpu.mjs" nccl
part processes 40 /tmp/node "$D/collective-gpu.mjs" processes
# The in-process modes load every kernel at start: with lazy loading, the first launch of a kernel
# waits for the context's running kernels, and one rank's all-reduce spins until its peer (the
# same context) arrives, which then never happens (see the overhead mode's comment).
part model 40 env CUDA_MODULE_LOADING=EAGER /tmp/node "$D/collective-gpu.mjs" model
part cluster 100 /tmp/node "$D/collective-gpu.mjs" cluster "$D/medcluster.mjs"
part parity 90 /tmp/node "$D/gpu-parity.mjs"
part overhead 150 env CUDA_MODULE_LOADING=EAGER /tmp/node "$D/collective-gpu.mjs" overhead "${OVERHEAD_LAYERS:-8}"
[ -n "${EAGER:-}" ] && OVERHEAD_GRAPHS=0 part overhead-eager 150 env CUDA_MODULE_LOADING=EAGER /tmp/node "$D/collective-gpu.mjs" overhead "${OVERHEAD_LAYERS:-8}"
[ -n "${DECODE:-}" ] && part decode 240 /tmp/node "$D/medcluster.mjs" bench decode --synthetic llama-2-70b \
  --device cuda --batch 1,16,64 --prompt-tokens 512 --decode-tokens 128
