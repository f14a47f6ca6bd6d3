#!/usr/bin/env bash
# The multi-GPU runs (issue 12) in one device call on a machine with 2, 4 or 8 GPUs: for each
# layout (tp x pp) that fits its GPUs, `up` on 70B-shaped synthetic weights measured by `bench
# serve` at 1, 16 and 64 streams (512-token prompts, 128 out) through http-serve-bench.sh, one GPU
# (1x1) first, with `bench decode` beside it; then the GPU parity and the data plane's checks.
# Each part runs under its own limit; logs go to $OUT, a table of the served figures last.
# Runs from a bundle folder DIR made by `node scripts/device-bundle.mjs DIR` (which copies this
# script and http-serve-bench.sh into it); on the GPU machine: bash DIR/multi-gpu-run.sh. LAYOUTS="1x1 2x1" picks the layouts (by
# default every one the GPUs fit: 1x1 2x1 1x2 on two, and 4x1 2x2 on four, and 8x1 on eight);
# ONLY="serve parity data" the parts (those three by default; ONLY=load, in a call of its own,
# times `up --tp 2` from a real-layout 70B checkpoint on disk against reading its files, each
# with a cold and a warm page cache). PRESET, DEVICE, CONCURRENCY, PROMPT_TOKENS, OUTPUT_TOKENS and
# MAX_BATCH_TOKENS pass to http-serve-bench.sh. A dry run on the CPU, from the repository root with
# .device/ bundled:
#   PRESET=tiny DEVICE=cpu LAYOUTS="1x1 2x1 1x2" CONCURRENCY="1 2" PROMPT_TOKENS=32 OUTPUT_TOKENS=8 \
#     bash test/gpu/multi-gpu-run.sh .device
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
D="$(cd "${1:-$here}" && pwd)"  # the bundle
source "$D/setup.sh"            # /tmp/node, the addon, the protos; NCCL_NVLS_ENABLE=0
export NCCL_NVLS_ENABLE=0
O="${OUT:-/tmp/out}"
mkdir -p "$O"
: >"$O/summary.txt"
bench="$D/http-serve-bench.sh"
[ -f "$bench" ] || bench="$here/http-serve-bench.sh"  # run from the repository: the one beside this script
device=${DEVICE:-cuda}
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ -z "${LAYOUTS:-}" ]; then
  LAYOUTS="1x1"
  [ "$gpus" -ge 2 ] && LAYOUTS="$LAYOUTS 2x1 1x2"
  [ "$gpus" -ge 4 ] && LAYOUTS="$LAYOUTS 4x1 2x2"
  [ "$gpus" -ge 8 ] && LAYOUTS="$LAYOUTS 8x1"
fi
{ date -u; nvidia-smi -L 2>/dev/null || echo "no GPU (device $device)"; echo "layouts: $LAYOUTS"; } | tee "$O/env.txt"
wants() { [[ " ${ONLY:-serve parity data} " == *" $1 "* ]]; }
part() {  # name, limit (s), command...
  local name=$1 limit=$2 t0=$SECONDS
  shift 2
  timeout "$limit" "$@" >"$O/$name.log" 2>&1
  echo "== $name rc=$? ($((SECONDS - t0)) s)" | tee -a "$O/summary.txt"
}

if wants serve; then
  port=18300
  for layout in $LAYOUTS; do
    tp=${layout%x*} pp=${layout#*x}
    port=$((port + 1))
    # One GPU gets `bench decode` beside its served figures (the issue's same-machine reference).
    skip=1
    [ "$layout" = 1x1 ] && skip=
    part "serve-$layout" 580 env TP="$tp" PP="$pp" OUT="$O/serve-$layout" BENCH_PORT="$port" SKIP_DECODE="$skip" \
      DEVICE="$device" MEDCLUSTER="/tmp/node $D/medcluster.mjs" bash "$bench"
  done
fi
if [ "$device" = cuda ]; then
  wants parity && part parity 150 /tmp/node "$D/gpu-parity.mjs"
  if wants data && [ -f "$D/collective-gpu.mjs" ]; then
    part data-nccl 60 /tmp/node "$D/collective-gpu.mjs" nccl
    part data-processes 90 /tmp/node "$D/collective-gpu.mjs" processes
    part data-cluster 200 /tmp/node "$D/collective-gpu.mjs" cluster "$D/medcluster.mjs"
  fi
fi

if wants load; then
  m=${LOAD_MODEL_DIR:-/tmp/medcluster-70b}
  [ -f "$m/config.json" ] || part load-make 540 /tmp/node "$D/medcluster.mjs" make-model --preset llama-2-70b --out "$m"
  sync
  evict() { for f in "$m"/*; do dd if="$f" iflag=nocache count=0 status=none; done; }  # the files' cached pages
  ms() { echo $((($(date +%s%N) - $1) / 1000000)); }
  readAll() { local t0=$(date +%s%N); cat "$m"/* >/dev/null; echo "$1: $(du -sb "$m" | cut -f1) bytes in $(ms $t0) ms"; }
  ready() {  # `up --tp 2` from the checkpoint until it serves
    local t0=$(date +%s%N) port=$((18400 + RANDOM % 100))
    /tmp/node "$D/medcluster.mjs" up --model "$m" --device "$device" --tp "${LOAD_TP:-2}" --http-port "$port" --grpc-port 0 \
      2>"$O/load-up-$1.log" &
    local pid=$!
    for _ in $(seq 1 1200); do
      grep -q "medcluster: serving" "$O/load-up-$1.log" && break
      kill -0 $pid 2>/dev/null || break
      sleep 0.25
    done
    echo "$1: up --tp ${LOAD_TP:-2} serving after $(ms $t0) ms ($(grep -c 'medcluster: serving' "$O/load-up-$1.log") serving line)"
    kill $pid; wait $pid 2>/dev/null
  }
  { evict; readAll "read, cold"; readAll "read, warm"; evict; ready cold; ready warm; } 2>&1 | tee "$O/load.txt"
fi

# The served figures, a row per layout and stream count.
{
  echo "| layout (tp x pp) | streams | output tok/s | TTFT p50 ms | ITL p50 ms | TPOT p50 ms |"
  echo "|---|---|---|---|---|---|"
  for layout in $LAYOUTS; do
    r="$O/serve-$layout/report.txt"
    [ -f "$r" ] || continue
    awk -v l="$layout" '
      /^Concurrency/ { split($0, a, ":"); split(a[2], b, "/"); c = b[1] + 0 }
      /^Output token throughput/ { out = $NF }
      /^Median TTFT/ { ttft = $NF }
      /^Median TPOT/ { tpot = $NF }
      /^Median ITL/ { printf "| %s | %d | %s | %s | %s | %s |\n", l, c, out, ttft, $NF, tpot }
    ' "$r"
  done
} | tee "$O/served.md"
