// Prefill and decode throughput of a StepExecutor on synthetic prompts. Sequences are split
// into as many groups as the executor overlaps steps (pipeline depth), and the groups decode
// concurrently, as the scheduler would run them. Every step samples each sequence's next token
// greedily where the logits are and feeds it back, as serving does: only the token ids come
// back to the host, not the logit rows (at 64 sequences and a 32,000-token vocabulary those are
// 8 MB a step). Where the executor takes sampled inputs, each decode step goes out before the
// one before it has answered, fed that step's tokens on the device, as the scheduler's
// follow-on steps are.

import { GREEDY, type SeqStep } from '@medcluster/worker';
import type { BlockAllocator } from '../scheduler/block-allocator.js';
import type { StepExecutor } from '../scheduler/executor.js';

export interface DecodeShape {
  batch: number;
  promptTokens: number;
  decodeTokens: number;
}

export interface DecodeRow extends DecodeShape {
  prefillTokensPerS: number;
  decodeTokensPerS: number;
  /** Mean time between two tokens of one sequence. */
  msPerToken: number;
}

export function blocksNeeded(shape: DecodeShape, blockSize: number): number {
  return shape.batch * Math.ceil((shape.promptTokens + shape.decodeTokens) / blockSize);
}

/**
 * Measures one shape after an untimed warm-up run of the same shape with 2 decode steps:
 * first calls pay one-time costs (workspace growth, cuBLAS's first use of a shape, the CUDA
 * graph capture of each batch bucket) that a serving process pays once at start.
 */
export async function measureDecode(
  executor: StepExecutor,
  blocks: BlockAllocator,
  shape: DecodeShape,
): Promise<DecodeRow> {
  await runDecode(executor, blocks, { ...shape, decodeTokens: Math.min(2, shape.decodeTokens) });
  return runDecode(executor, blocks, shape);
}

async function runDecode(
  executor: StepExecutor,
  blocks: BlockAllocator,
  shape: DecodeShape,
): Promise<DecodeRow> {
  const { batch, promptTokens, decodeTokens } = shape;
  const vocab = executor.vocabRows;
  const tables = Array.from({ length: batch }, () => {
    const t: number[] = [];
    blocks.ensure(t, promptTokens + decodeTokens);
    return t;
  });
  // Deterministic, non-degenerate prompts: different token ids per sequence.
  const prompt = (s: number) =>
    Array.from({ length: promptTokens }, (_, i) => 1 + ((i * 7919 + s * 104729) % (vocab - 1)));
  const groups = Array.from({ length: Math.min(executor.maxInFlight, batch) }, (_, g) =>
    tables.map((_, s) => s).filter((s) => s % Math.min(executor.maxInFlight, batch) === g),
  );
  // Sequence s's next input: the token its last step sampled.
  const next: number[] = new Array(batch).fill(0);
  // Sequence s's step of `tokens` at `startPos` (or of the one token its previous step sampled)
  // that samples the token after them (generated: how many it sampled before; greedy needs no
  // history).
  const stepOf = (s: number, startPos: number, tokens: number[] | 'sampled', generated: number): SeqStep => ({
    seqId: `b${s}`,
    startPos,
    ...(tokens === 'sampled' ? { numTokens: 1, sampledInput: true } : { numTokens: tokens.length, tokens }),
    blockTable: tables[s],
    logitRows: 1,
    sample: {
      params: GREEDY,
      key: { seed: s, choice: 0, position: startPos + (tokens === 'sampled' ? 1 : tokens.length) },
      generated: { count: generated, ids: [] },
    },
  });
  const run = async (group: number[], seqs: SeqStep[]) => {
    const { sampled } = await executor.execute(seqs);
    group.forEach((s, i) => {
      next[s] = sampled[i].id;
    });
  };
  try {
    let t0 = performance.now();
    await Promise.all(
      groups.map(async (group) => {
        for (const s of group) await run([s], [stepOf(s, 0, prompt(s), 0)]);
      }),
    );
    const prefillMs = performance.now() - t0;
    const followOn = executor.sampledInputs === true;
    t0 = performance.now();
    await Promise.all(
      groups.map(async (group) => {
        let answering: Promise<void> | undefined;
        for (let step = 0; step < decodeTokens; step++) {
          const input = (s: number) => (followOn && step > 0 ? 'sampled' : [next[s]]);
          const current = run(
            group,
            group.map((s) => stepOf(s, promptTokens + step, input(s), step + 1)),
          );
          if (!followOn) await current;
          else {
            current.catch(() => undefined); // awaited in the next round
            await answering;
            answering = current;
          }
        }
        await answering;
      }),
    );
    const decodeMs = performance.now() - t0;
    return {
      ...shape,
      prefillTokensPerS: (batch * promptTokens * 1000) / prefillMs,
      decodeTokensPerS: (batch * decodeTokens * 1000) / decodeMs,
      msPerToken: decodeMs / decodeTokens,
    };
  } finally {
    for (const t of tables) blocks.release(t);
  }
}

export function formatDecodeTable(rows: (DecodeRow & { label: string })[]): string {
  const lines = ['setup                 batch  prompt  prefill tok/s  decode tok/s  ms/token'];
  for (const r of rows) {
    lines.push(
      `${r.label.padEnd(20)}  ${String(r.batch).padStart(5)}  ${String(r.promptTokens).padStart(6)}  ` +
        `${r.prefillTokensPerS.toFixed(0).padStart(13)}  ${r.decodeTokensPerS.toFixed(1).padStart(12)}  ${r.msPerToken.toFixed(2).padStart(8)}`,
    );
  }
  return lines.join('\n');
}
