#!/usr/bin/env bash
# One GPU-machine call: the checks, then the benchmarks, full logs under $OUT, a short table last.
# Runs from a folder holding what it needs (nothing is built there; there is no Node there):
#   medcluster-gpu-check        kernels/gpu/build.sh (this commit)
#   base-gpu-check              (optional) the same program built at the baseline commit
#   node.xz, medcluster.mjs, gpu-parity.mjs, medcluster_kernels.node   scripts/device-bundle.mjs
#   proto/                      the .proto files (the CLI loads them)
# Usage: bash device-run.sh [steps...]   steps: info check bench base ab attn e2e ncu parity decode decode64 sass
# (ab: AB_CONFIGS, AB_MS; attn: ATTN_BLOCKS; e2e: E2E_CONFIGS, E2E_BATCHES, E2E_PREFILL; ncu: NCU_RUNS,
# NCU_SOURCE; decode, decode64: DECODE_ENV; parity: PARITY_ENV)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(info check bench base parity decode)
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
node_ready() {
  [ -x /tmp/node ] || { xz -d -c node.xz >/tmp/node && chmod +x /tmp/node; }
  export MEDCLUSTER_KERNELS_ADDON="$here/medcluster_kernels.node"
  export MEDCLUSTER_PROTO_ROOT="$here/proto"
  export MEDCLUSTER_GPU_CHECK="$here/medcluster-gpu-check"
}
t0=$(date +%s)
for s in "${steps[@]}"; do
  ts=$(date +%s)
  case "$s" in
    info)
      note "$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit --format=csv 2>&1 | tail -1); $(uname -r)"
      ;;
    check)
      timeout 240 ./medcluster-gpu-check >"$OUT/check.txt" 2>&1
      rc=$?
      note "check rc=$rc: $(grep -E '^(PASSED|FAILED)' "$OUT/check.txt" | tail -1)"
      grep -E '^FAIL' "$OUT/check.txt" | head -8 | tee -a "$summary"
      ;;
    bench)
      timeout 150 ./medcluster-gpu-check --bench-only --json "$OUT/bench.json" >"$OUT/bench.txt" 2>&1
      note "bench rc=$?"
      grep -E '^copy bandwidth' "$OUT/bench.txt" | tee -a "$summary"
      grep -E '^\| tp=' "$OUT/bench.txt" | tee -a "$summary"
      ;;
    base)  # the baseline commit's kernels, same machine, same call (its quick benchmark)
      [ -x ./base-gpu-check ] && MC_BENCH_QUICK=1 timeout 45 ./base-gpu-check --bench-only >"$OUT/base-bench.txt" 2>&1
      note "base rc=$?"
      grep -E '^\| tp=1' "$OUT/base-bench.txt" | tee -a "$summary"
      ;;
    ab)  # tuning variants of the GEMV against the defaults, tp=1 shapes, in one call
      : >"$OUT/ab.txt"
      # AB_CONFIGS: one variant per line (environment assignments); AB_MS: the row counts.
      configs="${AB_CONFIGS:-
MEDCLUSTER_AWQ_WGMMA_MIN_M=1
MEDCLUSTER_AWQ_WGMMA_MIN_M=1 MEDCLUSTER_AWQ_WGMMA_BLOCKS=1
MEDCLUSTER_AWQ_WGMMA_MIN_M=0
MEDCLUSTER_PDL=0}"
      # A line starting "prev:" runs ./prev-gpu-check (the same program built at an earlier commit).
      while IFS= read -r cfg; do
        echo "## ${cfg:-defaults}" >>"$OUT/ab.txt"
        bin=./medcluster-gpu-check
        case "$cfg" in prev:*) bin=./prev-gpu-check cfg="${cfg#prev:}" ;; esac
        env $cfg MC_BENCH_TP1=1 MC_BENCH_MS="${AB_MS:-1,8,16,32,64,128}" timeout 60 $bin --bench-only 2>&1 |
          grep -E '^\||^AWQ tuning' >>"$OUT/ab.txt"
      done <<<"$configs"
      echo "## MEDCLUSTER_AWQ_DEQUANT_MIN_M=0 (GEMV passes of 64 rows, no cuBLAS)" >>"$OUT/ab.txt"
      MEDCLUSTER_AWQ_DEQUANT_MIN_M=0 MC_BENCH_TP1=1 MC_BENCH_MS=128,256,512 timeout 60 ./medcluster-gpu-check \
        --bench-only 2>&1 | grep -E '^\|' >>"$OUT/ab.txt"
      # Large M on the wgmma kernel (passes of 256 rows) against dequantization + cuBLAS (the default from 1536).
      echo "## MEDCLUSTER_AWQ_DEQUANT_MIN_M=0 MEDCLUSTER_AWQ_WGMMA_MIN_M=1 (wgmma passes of 256 rows)" >>"$OUT/ab.txt"
      MEDCLUSTER_AWQ_DEQUANT_MIN_M=0 MEDCLUSTER_AWQ_WGMMA_MIN_M=1 MC_BENCH_TP1=1 MC_BENCH_MS=256,1024 timeout 90 \
        ./medcluster-gpu-check --bench-only 2>&1 | grep -E '^\|' >>"$OUT/ab.txt"
      note "ab done"
      grep -E '^## |^\| tp=1' "$OUT/ab.txt" | tee -a "$summary"
      ;;
    attn)  # decode attention alone (its own rows of the benchmark); a prev-gpu-check beside it; split targets
      : >"$OUT/attn.txt"
      for bin in ./prev-gpu-check ./medcluster-gpu-check; do
        [ -x "$bin" ] || continue
        echo "## $bin" >>"$OUT/attn.txt"
        MC_BENCH_ATTENTION_ONLY=1 timeout 60 $bin --bench-only 2>&1 | grep -E '^\| tp|^\| 1 KV' >>"$OUT/attn.txt"
      done
      for nb in ${ATTN_BLOCKS:-}; do  # MEDCLUSTER_ATTN_DECODE_BLOCKS values to compare
        echo "## MEDCLUSTER_ATTN_DECODE_BLOCKS=$nb" >>"$OUT/attn.txt"
        MEDCLUSTER_ATTN_DECODE_BLOCKS=$nb MC_BENCH_ATTENTION_ONLY=1 MC_BENCH_TP1=1 timeout 60 ./medcluster-gpu-check \
          --bench-only 2>&1 | grep -E '^\| tp' >>"$OUT/attn.txt"
      done
      note "attn done"
      grep -E '^## |^\| tp=1' "$OUT/attn.txt" | tee -a "$summary"
      ;;
    parity)
      node_ready
      # PARITY_ENV: environment assignments for the run (e.g. MEDCLUSTER_AWQ_WGMMA_MIN_M=1).
      env ${PARITY_ENV:-} timeout 100 /tmp/node gpu-parity.mjs >"$OUT/parity.txt" 2>&1
      note "parity ${PARITY_ENV:-} rc=$?: $(tail -1 "$OUT/parity.txt")"
      grep -E '^FAIL' "$OUT/parity.txt" | head -8 | tee -a "$summary"
      ;;
    decode | decode64)
      node_ready
      b=$([ "$s" = decode ] && echo 1,16 || echo 1,16,64)
      # DECODE_ENV: environment assignments for the run (e.g. MEDCLUSTER_AWQ_WGMMA_MIN_M=9).
      env ${DECODE_ENV:-} timeout 200 /tmp/node medcluster.mjs bench decode --synthetic llama-2-70b --device cuda \
        --batch "$b" --prompt-tokens 512 --decode-tokens 128 >"$OUT/$s.txt" 2>&1
      note "$s ${DECODE_ENV:-} rc=$?"
      grep -E 'cuda' "$OUT/$s.txt" | tail -4 | tee -a "$summary"
      ;;
    e2e)  # the C++ loop over 80 layers (e2e.cu): graph replay against eager at each decode batch, per variant
      : >"$OUT/e2e.txt"
      # E2E_CONFIGS: one variant per line (environment assignments; an empty line: the defaults).
      while IFS= read -r cfg; do
        echo "## ${cfg:-defaults}" >>"$OUT/e2e.txt"
        env $cfg MC_E2E_LAYERS=80 MC_E2E_FP16=0 MC_E2E_BATCHES="${E2E_BATCHES:-1,16,64}" MC_E2E_PREFILL="${E2E_PREFILL:-0}" \
          timeout 240 ./medcluster-gpu-check --e2e >>"$OUT/e2e.txt" 2>&1
        echo "rc=$?" >>"$OUT/e2e.txt"
      done <<<"${E2E_CONFIGS:-
MEDCLUSTER_PDL=0}"
      note "e2e done"
      grep -E '^## |^decode batch|^  samples|^prefill 2048|^rc=' "$OUT/e2e.txt" | tee -a "$summary"
      ;;
    ncu)  # one gate_up matmul launch (GEMV, or wgmma where NCU_RUNS turns it on) at M = 1 and 64 under Nsight Compute
      NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
      : >"$OUT/ncu.txt"
      # NCU_RUNS: one "M [environment...]" per line.
      while read -r m cfg; do
        [ -n "$m" ] || continue
        echo "## M=$m ${cfg}" >>"$OUT/ncu.txt"
        env $cfg MC_BENCH_TP1=1 MC_BENCH_MS=$m timeout 90 "$NCU" --clock-control none -k regex:'awq(Gemv|Wgmma)Kernel' --launch-skip 252 \
          --launch-count 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
          --section Occupancy --section LaunchStats --section SourceCounters --section InstructionStats \
          --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
          --metrics "$(printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' long_scoreboard \
            short_scoreboard mio_throttle math_pipe_throttle wait barrier membar lg_throttle dispatch_stall \
            not_selected selected no_instruction sleeping branch_resolving misc tex_throttle imc_miss drain)sm__inst_executed_pipe_tensor_op_hmma.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,smsp__inst_executed.sum" \
          ${NCU_SOURCE:+-o "$OUT/ncu-m$m" -f} ./medcluster-gpu-check --bench-only >>"$OUT/ncu.txt" 2>&1
        # NCU_SOURCE=1: the warp stall samples per SASS instruction as CSV (the source page), summed by opcode
        # where it comes back: node kernels/gpu/ncu-stalls.mjs ncu-source-m<M>.csv
        if [ -n "${NCU_SOURCE:-}" ] && [ -f "$OUT/ncu-m$m.ncu-rep" ]; then
          "$NCU" -i "$OUT/ncu-m$m.ncu-rep" --page source --csv --print-source sass >"$OUT/ncu-source-m$m.csv" 2>&1
          "$NCU" -i "$OUT/ncu-m$m.ncu-rep" >>"$OUT/ncu.txt" 2>&1
          rm -f "$OUT/ncu-m$m.ncu-rep"
        fi
      done <<<"${NCU_RUNS:-1
64}"
      note "ncu rc=$?"
      grep -E "^## |Duration|Memory Throughput|DRAM Throughput|L1/TEX Cache Throughput|L2 Cache Throughput|Compute \(SM\)|Issue Slots Busy|No Eligible|Achieved Occupancy|Mem Busy|Max Bandwidth|L2 Hit Rate|tensor_op|stalled_(long|short|mio|math|wait|barrier|lg)" \
        "$OUT/ncu.txt" | head -${NCU_LINES:-120} | tee -a "$summary"
      ;;
    sass)
      cuobjdump -sass medcluster-gpu-check 2>&1 | awk '/Function : /{f = /awqGemvKernel/} f' >"$OUT/gemv-sass.txt" || true
      cuobjdump -sass medcluster-gpu-check 2>&1 | awk '/Function : /{f = /awqWgmmaKernel/} f' >"$OUT/wgmma-sass.txt" || true
      note "sass: $(grep -c HMMA "$OUT/gemv-sass.txt") HMMA lines; wgmma kernel: $(grep -c HGMMA "$OUT/wgmma-sass.txt") HGMMA, $(grep -c WARPSYNC "$OUT/wgmma-sass.txt") WARPSYNC lines"
      ;;
  esac
  echo "[$s: $(($(date +%s) - ts)) s]" | tee -a "$summary"
done
echo "total $(($(date +%s) - t0)) s" | tee -a "$summary"
