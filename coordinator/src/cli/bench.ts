// `medcluster bench`: benchmarks that print numbers (speed goals live here, not in tests).
//   bench kernels  AWQ linear effective GB/s next to this machine's memcpy GB/s (cpu), or at
//                  the 70B shapes next to fp16 cuBLAS and the copy bandwidth (cuda)
//   bench decode   decode tokens/s of a model in this process (the tiny model by default)
//   bench cluster  decode tokens/s and latency: 1 worker vs tp=2 vs pp=2 vs tp=2 x pp=2
//   bench serve    load on a running OpenAI-compatible server: TTFT, ITL, E2E percentiles, tok/s

import { writeFile } from 'node:fs/promises';
import { openCheckpoint, presetConfig } from '@medcluster/worker';
import { blocksNeeded, type DecodeRow, formatDecodeTable, measureDecode } from '../bench/measure-decode.js';
import { formatServeReport, type LengthRange, runServeLoad } from '../bench/serve-load.js';
import { startLocalCluster } from '../cluster/local-cluster.js';
import { ensureGeneratedModel } from '../model-cache.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import { LocalExecutor } from '../scheduler/local-executor.js';
import { deviceFlag, floatFlag, intFlag, parseFlags, UsageError } from './args.js';

const USAGE = `usage: medcluster bench kernels [--device cpu|cuda] [--quick] [--json PATH]
       medcluster bench decode [--model DIR | --synthetic tiny|llama-2-70b [--layers N]] [--device cpu|cuda]
                               [--batch 1,4,16] [--prompt-tokens N] [--decode-tokens N] [--graphs on|off]
                               [--json PATH]
       medcluster bench cluster [--model DIR] [--batch 1,4] [--prompt-tokens N] [--decode-tokens N]
                                [--setups 1x1,2x1,1x2,2x2] [--json PATH]
       medcluster bench serve [--url http://127.0.0.1:8080] [--model NAME] [--endpoint completions|chat]
                              [--requests 64] [--concurrency N] [--rate REQ_PER_S] [--prompt-tokens 512 | MIN-MAX]
                              [--output-tokens 128 | MIN-MAX] [--ignore-eos on|off] [--prompt ids|text]
                              [--temperature 0] [--seed 0] [--warmup N] [--timeout-s 600] [--json PATH]

       medcluster bench wire [--synthetic llama-2-70b] [--batch 1,64] [--context 640] [--tp 2] [--pp 2]

bench wire counts the bytes one decode step puts on gRPC (serialized messages, no model run).
bench serve streams requests to any OpenAI-compatible endpoint (this server's, vLLM's, ...): a fixed
--concurrency, or Poisson arrivals at --rate (optionally capped by --concurrency). Prompts are random
token ids of the given lengths (--prompt text sends medical words instead, as chat needs), and
--ignore-eos on (the default) makes every output exactly its length. Prints a progress line to
stderr, then TTFT, TPOT, inter-token and end-to-end latency percentiles and token throughput.`;

const BLOCK_SIZE = 16;

const SHAPE_FLAGS = {
  model: { type: 'string' },
  batch: { type: 'string', default: '1,4' },
  'prompt-tokens': { type: 'string' },
  'decode-tokens': { type: 'string' },
  json: { type: 'string' },
} as const;

export async function benchCommand(argv: string[]): Promise<void> {
  const [what, ...rest] = argv;
  if (what === 'kernels') return benchKernels(rest);
  if (what === 'decode') return benchDecode(rest);
  if (what === 'cluster') return benchCluster(rest);
  if (what === 'serve') return benchServe(rest);
  if (what === 'wire') return benchWire(rest);
  if (what === '--help' || what === undefined) {
    console.log(USAGE);
    return;
  }
  throw new UsageError(`unknown benchmark '${what}'\n\n${USAGE}`);
}

async function benchKernels(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    { json: { type: 'string' }, device: { type: 'string', default: 'cpu' }, quick: { type: 'boolean' } },
    USAGE,
  );
  if (deviceFlag(flags.device) === 'cuda') {
    const { runGpuKernelBench } = await import('../bench/gpu-kernel-bench.js');
    await runGpuKernelBench({ json: flags.json, quick: flags.quick });
    return;
  }
  if (flags.quick) throw new UsageError('--quick applies to --device cuda');
  const { runCpuKernelBench } = await import('@medcluster/kernels/bench');
  await runCpuKernelBench({ json: flags.json });
}

function shapes(flags: { batch?: string; 'prompt-tokens'?: string; 'decode-tokens'?: string }) {
  const promptTokens = intFlag(flags['prompt-tokens'], 'prompt-tokens', 128);
  const decodeTokens = intFlag(flags['decode-tokens'], 'decode-tokens', 32);
  return (flags.batch ?? '1')
    .split(',')
    .map((b) => ({ batch: intFlag(b, 'batch'), promptTokens, decodeTokens }));
}

async function report(
  title: string,
  rows: (DecodeRow & { label: string })[],
  json: string | undefined,
  extra: object,
) {
  console.log(title);
  console.log(formatDecodeTable(rows));
  if (json) await writeFile(json, `${JSON.stringify({ ...extra, rows }, null, 2)}\n`);
}

async function benchDecode(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      ...SHAPE_FLAGS,
      device: { type: 'string', default: 'cpu' },
      synthetic: { type: 'string' },
      layers: { type: 'string' },
      graphs: { type: 'string', default: 'on' },
    },
    USAGE,
  );
  const device = deviceFlag(flags.device);
  if (flags.graphs !== 'on' && flags.graphs !== 'off')
    throw new UsageError(`--graphs must be on or off, got ${flags.graphs}`);
  if (flags.synthetic && flags.model) throw new UsageError('give either --model or --synthetic, not both');
  // Synthetic weights: random values of a preset's exact shapes, generated on the device (no file).
  const source = flags.synthetic
    ? {
        synthetic: {
          config: presetConfig(flags.synthetic, {
            layers: flags.layers ? intFlag(flags.layers, 'layers') : undefined,
          }),
          seed: 1,
        },
      }
    : { checkpoint: await openCheckpoint(flags.model ?? (await ensureGeneratedModel())) };
  const modelDir = flags.synthetic
    ? `synthetic ${flags.synthetic}`
    : (source as { checkpoint: { dir: string } }).checkpoint.dir;
  const list = shapes(flags);
  const blocks = new BlockAllocator(Math.max(...list.map((s) => blocksNeeded(s, BLOCK_SIZE))), BLOCK_SIZE);
  const executor = await LocalExecutor.create({
    ...source,
    device,
    kvCache: { numBlocks: blocks.numBlocks, blockSize: BLOCK_SIZE },
    decodeGraphs: flags.graphs !== 'off',
  });
  const rows: (DecodeRow & { label: string })[] = [];
  try {
    for (const shape of list)
      rows.push({
        label: `1 process, ${device}${device === 'cuda' && flags.graphs === 'off' ? ', no graphs' : ''}`,
        ...(await measureDecode(executor, blocks, shape)),
      });
  } finally {
    await executor.close();
  }
  await report(`decode benchmark: ${modelDir}`, rows, flags.json, { model: modelDir, device });
}

async function benchCluster(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    { ...SHAPE_FLAGS, setups: { type: 'string', default: '1x1,2x1,1x2,2x2' } },
    USAGE,
  );
  const modelDir = flags.model ?? (await ensureGeneratedModel());
  const { config } = await openCheckpoint(modelDir);
  const list = shapes(flags);
  const numBlocks = Math.max(...list.map((s) => blocksNeeded(s, BLOCK_SIZE)));
  const rows: (DecodeRow & { label: string })[] = [];
  for (const setup of (flags.setups ?? '1x1').split(',')) {
    const [tp, pp] = setup.split('x').map((n) => intFlag(n, 'setups'));
    const cluster = await startLocalCluster({
      modelDir,
      config,
      tp,
      pp,
      device: 'cpu',
      kvCache: { numBlocks, blockSize: BLOCK_SIZE },
      threadsPerWorker: 1,
    });
    try {
      const blocks = new BlockAllocator(numBlocks, BLOCK_SIZE);
      for (const shape of list) {
        rows.push({
          label: `tp=${tp} x pp=${pp} (${tp * pp} proc)`,
          ...(await measureDecode(cluster.executor, blocks, shape)),
        });
      }
    } finally {
      await cluster.stop();
    }
  }
  await report(`cluster benchmark (CPU workers, 1 kernel thread each): ${modelDir}`, rows, flags.json, {
    model: modelDir,
  });
}

/** `N` or `MIN-MAX` (uniform), in tokens. */
function lengthRange(value: string | undefined, name: string, fallback: number): LengthRange {
  if (value === undefined) return { min: fallback, max: fallback };
  const [lo, hi] = value.split('-');
  const min = intFlag(lo, name);
  const max = hi === undefined ? min : intFlag(hi, name);
  if (min < 1 || max < min)
    throw new UsageError(`--${name} must be N or MIN-MAX with 1 <= MIN <= MAX, got ${value}`);
  return { min, max };
}

async function benchServe(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      url: { type: 'string', default: 'http://127.0.0.1:8080' },
      model: { type: 'string' },
      endpoint: { type: 'string', default: 'completions' },
      requests: { type: 'string', default: '64' },
      concurrency: { type: 'string' },
      rate: { type: 'string' },
      'prompt-tokens': { type: 'string', default: '512' },
      'output-tokens': { type: 'string', default: '128' },
      'ignore-eos': { type: 'string', default: 'on' },
      prompt: { type: 'string', default: 'ids' },
      temperature: { type: 'string', default: '0' },
      seed: { type: 'string', default: '0' },
      warmup: { type: 'string', default: '0' },
      'timeout-s': { type: 'string', default: '600' },
      json: { type: 'string' },
      help: { type: 'boolean' },
    },
    USAGE,
  );
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  const endpoint = flags.endpoint;
  if (endpoint !== 'completions' && endpoint !== 'chat')
    throw new UsageError(`--endpoint must be completions or chat, got ${endpoint}`);
  const prompt = flags.prompt;
  if (prompt !== 'ids' && prompt !== 'text')
    throw new UsageError(`--prompt must be ids or text, got ${prompt}`);
  if (flags['ignore-eos'] !== 'on' && flags['ignore-eos'] !== 'off')
    throw new UsageError(`--ignore-eos must be on or off, got ${flags['ignore-eos']}`);
  const requests = intFlag(flags.requests, 'requests');
  if (requests < 1) throw new UsageError('--requests must be at least 1');
  const concurrency = flags.concurrency === undefined ? undefined : intFlag(flags.concurrency, 'concurrency');
  if (concurrency !== undefined && concurrency < 1) throw new UsageError('--concurrency must be at least 1');
  const rate = flags.rate === undefined ? undefined : floatFlag(flags.rate, 'rate', 1);
  if (rate !== undefined && !(rate > 0)) throw new UsageError('--rate must be > 0 requests per second');
  const tty = process.stderr.isTTY;
  let lastLine = 0;
  const report = await runServeLoad({
    url: flags.url ?? 'http://127.0.0.1:8080',
    model: flags.model,
    endpoint,
    requests,
    concurrency,
    rate,
    promptTokens: lengthRange(flags['prompt-tokens'], 'prompt-tokens', 512),
    outputTokens: lengthRange(flags['output-tokens'], 'output-tokens', 128),
    ignoreEos: flags['ignore-eos'] === 'on',
    prompt,
    temperature: floatFlag(flags.temperature, 'temperature', 0),
    seed: intFlag(flags.seed, 'seed'),
    warmup: intFlag(flags.warmup, 'warmup'),
    timeoutMs: intFlag(flags['timeout-s'], 'timeout-s') * 1000,
    onProgress: (p) => {
      const line = `bench serve: ${p.done}/${p.total} done, ${p.failed} failed, ${p.inFlight} in flight, ${p.outputTokens} tokens out, ${p.elapsedS.toFixed(1)} s`;
      if (tty) process.stderr.write(`\r${line}\x1b[K`);
      else if (p.elapsedS - lastLine >= 5 || p.done + p.failed === p.total) {
        lastLine = p.elapsedS;
        process.stderr.write(`${line}\n`);
      }
    },
  });
  if (tty) process.stderr.write('\n');
  console.log(formatServeReport(report));
  if (flags.json) await writeFile(flags.json, `${JSON.stringify(report, null, 2)}\n`);
  if (report.completed === 0) throw new Error(`no request succeeded: ${report.errors.join(' | ')}`);
}

async function benchWire(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      synthetic: { type: 'string', default: 'llama-2-70b' },
      batch: { type: 'string', default: '1,64' },
      context: { type: 'string', default: '640' },
      tp: { type: 'string', default: '2' },
      pp: { type: 'string', default: '2' },
      help: { type: 'boolean' },
    },
    USAGE,
  );
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  const { wireBytes } = await import('../bench/wire-bytes.js');
  const config = presetConfig(flags.synthetic as string);
  const tp = intFlag(flags.tp, 'tp');
  const pp = intFlag(flags.pp, 'pp');
  const context = intFlag(flags.context, 'context');
  const kb = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
  console.log(
    `bytes on gRPC per decode step: ${flags.synthetic}, tp=${tp} x pp=${pp}, ${context}-token contexts, greedy`,
  );
  console.log(
    'batch  step (x tp)  hand-off as bytes (x tp, per boundary)  on the device  result now  result before  host all-reduces per rank',
  );
  for (const b of (flags.batch as string).split(',').map((x) => intFlag(x, 'batch'))) {
    const r = wireBytes(config, b, context, Math.ceil(config.numLayers / pp), tp);
    console.log(
      `${String(b).padStart(5)}  ${kb(r.stepBytes).padStart(11)}  ${kb(r.handOffBytes).padStart(38)}  ${kb(r.sharedHandOffBytes).padStart(13)}  ${kb(r.resultBytes).padStart(10)}  ${kb(r.resultBytesBefore).padStart(13)}  ${kb(r.hostCollectiveBytesPerRank).padStart(25)}`,
    );
  }
}
