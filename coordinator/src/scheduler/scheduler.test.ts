// Batching policy, tested with no model: a scripted executor records every step it is
// given and answers with logits whose argmax is (last token + 1) % vocab.

import type { SeqStep } from '@medcluster/worker';
import { describe, expect, test } from 'vitest';
import { GREEDY } from '../generation/sampler.js';
import { BlockAllocator } from './block-allocator.js';
import type { StepExecutor } from './executor.js';
import { RequestFailedError, Scheduler } from './scheduler.js';

class ScriptedExecutor implements StepExecutor {
  readonly steps: SeqStep[][] = [];
  inFlight = 0;
  maxSeenInFlight = 0;
  failNext = false;
  constructor(
    readonly vocabRows = 100,
    readonly maxInFlight = 1,
  ) {}
  async execute(seqs: SeqStep[]): Promise<Float32Array> {
    this.steps.push(seqs.map((s) => ({ ...s, blockTable: [...s.blockTable] })));
    this.inFlight++;
    this.maxSeenInFlight = Math.max(this.maxSeenInFlight, this.inFlight);
    await new Promise((r) => setTimeout(r, 1));
    this.inFlight--;
    if (this.failNext) {
      this.failNext = false;
      throw new Error('worker died');
    }
    const rows = seqs.filter((s) => s.wantLogits);
    const out = new Float32Array(rows.length * this.vocabRows);
    rows.forEach((s, r) => {
      const last = (s.tokens as number[])[s.numTokens - 1];
      out[r * this.vocabRows + ((last + 1) % this.vocabRows)] = 1;
    });
    return out;
  }
  async close() {}
}

const limits = { maxBatchTokens: 8, maxRunning: 4, maxContext: 64 };
const req = (promptIds: number[], maxTokens: number) => ({
  promptIds,
  maxTokens,
  sampling: GREEDY,
  stopTokenIds: [2],
});

describe('Scheduler', () => {
  test('prefills in chunks within the token budget, then decodes one token per step', async () => {
    const ex = new ScriptedExecutor();
    const s = new Scheduler(ex, new BlockAllocator(16, 4), limits);
    const result = await s.submit(req([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], 3));
    expect(result.tokenIds).toEqual([20, 21, 22]);
    expect(result.finishReason).toBe('length');
    expect(ex.steps.map((st) => st.map((x) => [x.startPos, x.numTokens, x.wantLogits]))).toEqual([
      [[0, 8, false]],
      [[8, 2, true]],
      [[10, 1, true]],
      [[11, 1, true]],
    ]);
  });

  test('batches decodes of concurrent requests into one step and frees their blocks', async () => {
    const ex = new ScriptedExecutor();
    const blocks = new BlockAllocator(16, 4);
    const s = new Scheduler(ex, blocks, limits);
    const [a, b] = await Promise.all([s.submit(req([5], 4)), s.submit(req([40], 4))]);
    expect(a.tokenIds).toEqual([6, 7, 8, 9]);
    expect(b.tokenIds).toEqual([41, 42, 43, 44]);
    expect(ex.steps.some((st) => st.length === 2)).toBe(true);
    const blockSets = ex.steps.flatMap((st) => st.map((x) => x.blockTable));
    expect(new Set(blockSets.map((t) => t.join())).size).toBe(2); // distinct tables per sequence
    expect(blocks.freeBlocks).toBe(16);
  });

  test('stops at the eos token without returning it', async () => {
    const s = new Scheduler(new ScriptedExecutor(), new BlockAllocator(16, 4), limits);
    const r = await s.submit(req([0], 10)); // 0 -> 1 -> 2 (eos)
    expect(r.tokenIds).toEqual([1]);
    expect(r.finishReason).toBe('eos');
  });

  test('rejects bad requests with clear errors and keeps serving', async () => {
    const s = new Scheduler(new ScriptedExecutor(), new BlockAllocator(16, 4), limits);
    await expect(s.submit(req([], 4))).rejects.toThrow(/prompt is empty/);
    await expect(s.submit(req([100], 4))).rejects.toThrow(/outside the model's 100 embedding rows/);
    await expect(s.submit(req([1], 0))).rejects.toThrow(/max_tokens/);
    await expect(s.submit(req(new Array(60).fill(3), 10))).rejects.toThrow(/exceeds the context of 64/);
    await expect(s.submit(req([1], 2))).resolves.toMatchObject({ tokenIds: [], finishReason: 'eos' });
  });

  test('a failed step fails only its requests and frees their blocks', async () => {
    const ex = new ScriptedExecutor();
    const blocks = new BlockAllocator(16, 4);
    const s = new Scheduler(ex, blocks, limits);
    ex.failNext = true;
    await expect(s.submit(req([5], 3))).rejects.toBeInstanceOf(RequestFailedError);
    expect(blocks.freeBlocks).toBe(16);
    await expect(s.submit(req([5], 3))).resolves.toMatchObject({ tokenIds: [6, 7, 8] });
  });

  test('waits for KV blocks instead of failing when the cache is full', async () => {
    const ex = new ScriptedExecutor();
    const blocks = new BlockAllocator(2, 4); // one request of <= 8 tokens at a time
    const s = new Scheduler(ex, blocks, limits);
    const results = await Promise.all([s.submit(req([10], 7)), s.submit(req([50], 7))]);
    expect(results.map((r) => r.tokenIds.length)).toEqual([7, 7]);
    expect(ex.steps.every((st) => st.length === 1)).toBe(true);
  });

  test('keeps several steps in flight for a pipelined executor', async () => {
    const ex = new ScriptedExecutor(100, 2);
    const s = new Scheduler(ex, new BlockAllocator(16, 4), limits);
    await Promise.all([s.submit(req([5], 6)), s.submit(req([40], 6))]);
    expect(ex.maxSeenInFlight).toBe(2);
  });

  test('cancels a request when its signal aborts and frees its blocks', async () => {
    const ex = new ScriptedExecutor();
    const blocks = new BlockAllocator(16, 4);
    const s = new Scheduler(ex, blocks, limits);
    const controller = new AbortController();
    let seen = 0;
    const r = await s.submit({
      ...req([5], 50),
      signal: controller.signal,
      onToken: () => {
        if (++seen === 3) controller.abort();
        return false;
      },
    });
    expect(r.finishReason).toBe('cancelled');
    expect(r.tokenIds.length).toBeLessThan(50);
    expect(blocks.freeBlocks).toBe(16);
  });
});
