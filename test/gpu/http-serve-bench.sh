#!/usr/bin/env bash
# The served path on one GPU with the 70B shapes: `medcluster up --synthetic llama-2-70b --device
# cuda` measured over HTTP by `bench serve` at 1, 16 and 64 concurrent streams (512-token prompts,
# 128 generated, ignore_eos; as many requests as streams, after a warm-up wave that captures the
# decode graphs), then `bench decode` at the same batch sizes in the same run, once `up` has given
# the GPU back. Reports (text and JSON) go to $OUT. TEMPERATURES="0 0.7" serves each level greedy and
# then sampled; SKIP_DECODE=1 leaves out `bench decode`; MAX_BATCH_TOKENS sets `up`'s prefill chunk (2048);
# TP and PP its layout (1 x 1; `up` spreads the workers over the machine's GPUs).
#   MEDCLUSTER="node coordinator/bin/medcluster.js" OUT=/tmp/serve-bench bash test/gpu/http-serve-bench.sh
# A dry run on CPU: PRESET=tiny DEVICE=cpu CONCURRENCY="1 2" PROMPT_TOKENS=32 OUTPUT_TOKENS=8
set -euo pipefail
cli=${MEDCLUSTER:-"node coordinator/bin/medcluster.js"}
out=${OUT:-$(mktemp -d)}
preset=${PRESET:-llama-2-70b}
device=${DEVICE:-cuda}
levels=${CONCURRENCY:-"1 16 64"}
prompt_tokens=${PROMPT_TOKENS:-512}
output_tokens=${OUTPUT_TOKENS:-128}
port=${BENCH_PORT:-8080}
max_batch_tokens=${MAX_BATCH_TOKENS:-2048}
tp=${TP:-1}
pp=${PP:-1}
mkdir -p "$out"

$cli up --synthetic "$preset" --device "$device" --tp "$tp" --pp "$pp" --max-batch-tokens "$max_batch_tokens" \
  --http-port "$port" --grpc-port 0 \
  2>"$out/up.log" &
up_pid=$!
trap 'kill $up_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 1200); do
  grep -q "medcluster: serving" "$out/up.log" && break
  kill -0 $up_pid 2>/dev/null || { cat "$out/up.log"; exit 1; }
  sleep 0.5
done
grep -E "KV cache|serving" "$out/up.log"

for t in ${TEMPERATURES:-0}; do
  for c in $levels; do
    # One request per stream; a single stream gets 4 in a row.
    n=$((c == 1 ? 4 : c))
    suffix=$([ "$t" = 0 ] && echo "" || echo "-t$t")
    $cli bench serve --url "http://127.0.0.1:$port" --requests "$n" --concurrency "$c" \
      --prompt-tokens "$prompt_tokens" --output-tokens "$output_tokens" --ignore-eos on --warmup "$c" \
      --temperature "$t" --json "$out/serve-c$c$suffix.json" | tee -a "$out/report.txt"
  done
done
curl -s "http://127.0.0.1:$port/cluster" >"$out/cluster.json" || true

kill $up_pid
wait $up_pid || true
[ -n "${SKIP_DECODE:-}" ] && exit 0
batches=$(echo "$levels" | tr ' ' ',')
$cli bench decode --synthetic "$preset" --device "$device" --batch "$batches" \
  --prompt-tokens "$prompt_tokens" --decode-tokens "$output_tokens" --json "$out/decode.json" | tee -a "$out/report.txt"
