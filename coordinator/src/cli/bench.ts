// `medcluster bench`: benchmarks that print numbers (speed goals live here, not in tests).
//   bench kernels  AWQ linear effective GB/s next to this machine's memcpy GB/s (cpu), or at
//                  the 70B shapes next to fp16 cuBLAS and the copy bandwidth (cuda)
//   bench decode   decode tokens/s of a model in this process (the tiny model by default)
//   bench cluster  decode tokens/s and latency: 1 worker vs tp=2 vs pp=2 vs tp=2 x pp=2

import { writeFile } from 'node:fs/promises';
import type { DeviceKind } from '@medcluster/kernels';
import { openCheckpoint, presetConfig } from '@medcluster/worker';
import { blocksNeeded, type DecodeRow, formatDecodeTable, measureDecode } from '../bench/measure-decode.js';
import { startLocalCluster } from '../cluster/local-cluster.js';
import { ensureGeneratedModel } from '../model-cache.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import { LocalExecutor } from '../scheduler/local-executor.js';
import { intFlag, parseFlags, UsageError } from './args.js';

const USAGE = `usage: medcluster bench kernels [--device cpu|cuda] [--quick] [--json PATH]
       medcluster bench decode [--model DIR | --synthetic tiny|llama-2-70b [--layers N]] [--device cpu|cuda]
                               [--batch 1,4,16] [--prompt-tokens N] [--decode-tokens N] [--graphs on|off]
                               [--json PATH]
       medcluster bench cluster [--model DIR] [--batch 1,4] [--prompt-tokens N] [--decode-tokens N]
                                [--setups 1x1,2x1,1x2,2x2] [--json PATH]`;

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
  if (flags.device === 'cuda') {
    const { runGpuKernelBench } = await import('../bench/gpu-kernel-bench.js');
    await runGpuKernelBench({ json: flags.json, quick: flags.quick });
    return;
  }
  if (flags.device !== 'cpu') throw new UsageError(`--device must be cpu or cuda, got ${flags.device}`);
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
  const device = flags.device as DeviceKind;
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
