#!/usr/bin/env bash
# One GPU machine call that checks and measures main: the GPU parity tests, the served path at 64
# streams on 70B-shaped synthetic weights beside `bench decode` at batch 64 (the #9 targets), and
# the CUDA serve smoke test. Run from the repository root with .device/ carried
# (`node scripts/device-bundle.mjs` first); results go to $OUT, a summary is printed last.
#   bash test/gpu/device-session.sh
set -uo pipefail
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
source .device/setup.sh
export MEDCLUSTER="/tmp/node .device/medcluster.mjs"
nvidia-smi -L | tee "$out/gpu.txt"
step() { # name, command...
  local name=$1 t0=$SECONDS
  shift
  "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
}
step parity /tmp/node .device/gpu-parity.mjs
step serve env OUT="$out/serve" CONCURRENCY=64 bash test/gpu/http-serve-bench.sh
step smoke bash test/gpu/serve-smoke.sh
echo "--- parity"; grep -E "passed|failed|FAIL" "$out/parity.txt" | tail -3
echo "--- serve"; grep -E "ITL|TTFT|tok/s|decode|prefill|wall|streams" "$out/serve/report.txt" 2>/dev/null | tail -12
echo "--- smoke"; tail -5 "$out/smoke.txt"
cat "$out/summary.txt"
