// `medcluster bench`: benchmarks that print numbers (speed goals live here, not in tests).
//   bench kernels  AWQ linear effective GB/s next to this machine's memcpy GB/s
//   bench decode   decode tokens/s of a model in this process (the tiny model by default)

import { writeFile } from 'node:fs/promises';
import type { DeviceKind } from '@medcluster/kernels';
import { openCheckpoint } from '@medcluster/worker';
import { ensureGeneratedModel } from '../model-cache.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import { LocalExecutor } from '../scheduler/local-executor.js';
import { intFlag, parseFlags, UsageError } from './args.js';

const USAGE = `usage: medcluster bench kernels [--device cpu|cuda] [--json PATH]
       medcluster bench decode [--model DIR] [--device cpu|cuda] [--batch N,...] [--prompt-tokens N]
                               [--decode-tokens N] [--json PATH]`;

export async function benchCommand(argv: string[]): Promise<void> {
  const [what, ...rest] = argv;
  if (what === 'kernels') return benchKernels(rest);
  if (what === 'decode') return benchDecode(rest);
  if (what === '--help' || what === undefined) {
    console.log(USAGE);
    return;
  }
  throw new UsageError(`unknown benchmark '${what}'\n\n${USAGE}`);
}

async function benchKernels(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    { device: { type: 'string', default: 'cpu' }, json: { type: 'string' } },
    USAGE,
  );
  if (flags.device !== 'cpu')
    throw new UsageError(
      'bench kernels --device cuda runs the GPU harness: npm run test:gpu -w @medcluster/kernels',
    );
  const { runCpuKernelBench } = await import('@medcluster/kernels/bench');
  await runCpuKernelBench({ json: flags.json });
}

interface DecodeRow {
  batch: number;
  promptTokens: number;
  decodeTokens: number;
  prefillTokensPerS: number;
  decodeTokensPerS: number;
  msPerStep: number;
}

async function benchDecode(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      model: { type: 'string' },
      device: { type: 'string', default: 'cpu' },
      batch: { type: 'string', default: '1,4,16' },
      'prompt-tokens': { type: 'string' },
      'decode-tokens': { type: 'string' },
      json: { type: 'string' },
    },
    USAGE,
  );
  const modelDir = flags.model ?? (await ensureGeneratedModel());
  const checkpoint = await openCheckpoint(modelDir);
  const promptTokens = intFlag(flags['prompt-tokens'], 'prompt-tokens', 128);
  const decodeTokens = intFlag(flags['decode-tokens'], 'decode-tokens', 32);
  const batches = (flags.batch ?? '1').split(',').map((b) => intFlag(b, 'batch'));
  const blockSize = 16;
  const perSeq = Math.ceil((promptTokens + decodeTokens) / blockSize);
  const blocks = new BlockAllocator(perSeq * Math.max(...batches), blockSize);
  const executor = await LocalExecutor.create({
    checkpoint,
    device: flags.device as DeviceKind,
    numBlocks: blocks.numBlocks,
    blockSize,
  });
  const rows: DecodeRow[] = [];
  try {
    const vocab = checkpoint.config.vocabRows;
    for (const batch of batches) {
      const tables = Array.from({ length: batch }, () => {
        const t: number[] = [];
        blocks.ensure(t, promptTokens + decodeTokens);
        return t;
      });
      // Deterministic, non-degenerate prompts: different token ids per sequence.
      const prompt = (s: number) =>
        Array.from({ length: promptTokens }, (_, i) => 1 + ((i * 7919 + s * 104729) % (vocab - 1)));
      let t0 = performance.now();
      for (let s = 0; s < batch; s++) {
        await executor.execute([
          {
            seqId: `b${s}`,
            startPos: 0,
            numTokens: promptTokens,
            tokens: prompt(s),
            blockTable: tables[s],
            wantLogits: true,
          },
        ]);
      }
      const prefillMs = performance.now() - t0;
      t0 = performance.now();
      for (let step = 0; step < decodeTokens; step++) {
        await executor.execute(
          tables.map((blockTable, s) => ({
            seqId: `b${s}`,
            startPos: promptTokens + step,
            numTokens: 1,
            tokens: [1 + ((step * 31 + s) % (vocab - 1))],
            blockTable,
            wantLogits: true,
          })),
        );
      }
      const decodeMs = performance.now() - t0;
      for (const t of tables) blocks.release(t);
      rows.push({
        batch,
        promptTokens,
        decodeTokens,
        prefillTokensPerS: (batch * promptTokens * 1000) / prefillMs,
        decodeTokensPerS: (batch * decodeTokens * 1000) / decodeMs,
        msPerStep: decodeMs / decodeTokens,
      });
    }
  } finally {
    await executor.close();
  }
  console.log(`decode benchmark: ${modelDir} on ${flags.device}`);
  console.log('batch  prompt  prefill tok/s  decode tok/s  ms/step');
  for (const r of rows) {
    console.log(
      `${String(r.batch).padStart(5)}  ${String(r.promptTokens).padStart(6)}  ${r.prefillTokensPerS.toFixed(0).padStart(13)}  ${r.decodeTokensPerS.toFixed(1).padStart(12)}  ${r.msPerStep.toFixed(2).padStart(7)}`,
    );
  }
  if (flags.json)
    await writeFile(
      flags.json,
      `${JSON.stringify({ model: modelDir, device: flags.device, rows }, null, 2)}\n`,
    );
}
