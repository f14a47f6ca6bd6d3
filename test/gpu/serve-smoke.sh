#!/usr/bin/env bash
# The CUDA worker path end to end on a GPU machine: the tiny model generated here, greedy
# generation in one process on CUDA and on CPU, then `medcluster up --device cuda --pp 2`
# (two worker processes on the GPU, KV caches sized from memory, decode as graph replays)
# queried over gRPC. The cluster's 24 greedy tokens must equal the one-process CUDA run's
# (same kernels, so the same bits); CPU and CUDA must agree on the first 8 (the tiny random
# model's first near-tie for this prompt is at token 10, see gpu-parity.ts).
#   MEDCLUSTER="node coordinator/bin/medcluster.js" bash test/gpu/serve-smoke.sh
# LAYOUT="--tp 2" serves tp = 2 instead (its ranks sum in another order, so it must equal one
# process only up to the prompt's first near-tie: COMPARE=8 tokens).
set -euo pipefail
layout=${LAYOUT:---pp 2}
compare=${COMPARE:-24}
cli=${MEDCLUSTER:-"node coordinator/bin/medcluster.js"}
work=$(mktemp -d)
port=${SMOKE_PORT:-50077}
trap 'kill $up_pid 2>/dev/null || true; rm -rf "$work"' EXIT
prompt="The patient presented with"

$cli make-model --out "$work/tiny" --preset tiny >/dev/null
$cli generate --model "$work/tiny" --device cuda --prompt "$prompt" --max-tokens 24 >"$work/cuda.txt"
$cli generate --model "$work/tiny" --device cuda --prompt "$prompt" --max-tokens 8 >"$work/cuda8.txt"
$cli generate --model "$work/tiny" --device cpu --prompt "$prompt" --max-tokens 8 >"$work/cpu8.txt"

$cli up --model "$work/tiny" --device cuda $layout --grpc-port "$port" --http-port 0 2>"$work/up.log" &
up_pid=$!
for _ in $(seq 1 120); do
  grep -q "medcluster: serving" "$work/up.log" && break
  kill -0 $up_pid 2>/dev/null || { cat "$work/up.log"; exit 1; }
  sleep 0.5
done
grep "KV cache" "$work/up.log" || true
$cli generate --server "127.0.0.1:$port" --prompt "$prompt" --max-tokens 24 >"$work/server.txt"

echo "cuda, 24:   $(cat "$work/cuda.txt")"
echo "server, 24: $(cat "$work/server.txt")"
echo "cuda, 8:    $(cat "$work/cuda8.txt")"
echo "cpu, 8:     $(cat "$work/cpu8.txt")"
$cli generate --server "127.0.0.1:$port" --prompt "$prompt" --max-tokens 8 >"$work/server8.txt"
if [ "$compare" = 24 ]; then same_server=$(cmp -s "$work/cuda.txt" "$work/server.txt" && echo yes || true)
else same_server=$(cmp -s "$work/cuda8.txt" "$work/server8.txt" && echo yes || true); fi
if [ "$same_server" = yes ] && cmp -s "$work/cuda8.txt" "$work/cpu8.txt"; then
  echo "serve smoke: passed (up --device cuda $layout = one process on CUDA for $compare tokens; CUDA = CPU for 8 tokens)"
else
  echo "serve smoke: FAILED, the continuations differ"
  exit 1
fi
