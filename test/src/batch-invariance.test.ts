// The whole model on the CPU backend is batch-invariant: a token's logits are bit-identical
// whether its sequence runs alone or beside others, wherever the prefill chunks end, and
// whether its position was computed in a prefill or a decode step. Serving relies on this:
// a request gets the same tokens however the scheduler batches it.

import { BlockAllocator, LocalExecutor } from '@medcluster/coordinator';
import { GREEDY, openCheckpoint, type SeqStep } from '@medcluster/worker';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { serveThrough } from './follow-on.js';
import { testModel } from './models.js';

const PROMPT = Array.from({ length: 40 }, (_, i) => 1 + ((i * 7919) % 32000));
const OTHER = Array.from({ length: 23 }, (_, i) => 1 + ((i * 104729 + 5) % 32000));

describe('batch invariance of the full model (CPU)', () => {
  let executor: LocalExecutor;
  const blocks = new BlockAllocator(64, 16);

  beforeAll(async () => {
    const dir = await testModel();
    executor = await LocalExecutor.create({
      checkpoint: await openCheckpoint(dir),
      device: 'cpu',
      kvCache: { numBlocks: 64, blockSize: 16 },
    });
  });
  afterAll(async () => executor?.close());

  /** Runs `chunks` (token counts) of PROMPT for one sequence; returns the last step's logits. */
  async function prefillInChunks(chunks: number[], others: SeqStep[] = []): Promise<Float32Array> {
    const table: number[] = [];
    blocks.ensure(table, PROMPT.length);
    try {
      let start = 0;
      let logits: Float32Array = new Float32Array();
      for (const [i, n] of chunks.entries()) {
        const last = i === chunks.length - 1;
        const step: SeqStep = {
          seqId: 'x',
          startPos: start,
          numTokens: n,
          tokens: PROMPT.slice(start, start + n),
          blockTable: table,
          logitRows: last ? 1 : 0,
        };
        const { logits: out } = await executor.execute(last ? [...others, step] : [step]);
        logits = out.subarray(out.length - executor.vocabRows);
        start += n;
      }
      return logits;
    } finally {
      blocks.release(table);
    }
  }

  test('one prefill, uneven prefill chunks, and token-by-token decode give identical logits', async () => {
    const whole = await prefillInChunks([PROMPT.length]);
    expect(await prefillInChunks([7, 16, 17])).toEqual(whole);
    expect(await prefillInChunks(PROMPT.map(() => 1))).toEqual(whole);
  });

  test('a sequence batched beside another gives the logits it gets alone', async () => {
    const alone = await prefillInChunks([PROMPT.length]);
    const table: number[] = [];
    blocks.ensure(table, OTHER.length);
    try {
      const other: SeqStep = {
        seqId: 'y',
        startPos: 0,
        numTokens: OTHER.length,
        tokens: OTHER,
        blockTable: table,
        logitRows: 1,
      };
      expect(await prefillInChunks([PROMPT.length], [other])).toEqual(alone);
    } finally {
      blocks.release(table);
    }
  });

  test('follow-on steps, fed the sampled tokens on the device, give the tokens of steps fed from the host', async () => {
    const limits = { maxBatchTokens: 32, maxRunning: 8, maxWaiting: 16, maxContext: 256, eosTokenId: 2 };
    const requests = (stop: number[]) => {
      const seeded = (seed: number) => ({
        ...GREEDY,
        temperature: 0.9,
        topP: 0.95,
        seed,
        stopTokenIds: stop,
      });
      return [
        {
          requestId: 'a',
          promptIds: PROMPT,
          maxTokens: 12,
          n: 1,
          sampling: { ...GREEDY, stopTokenIds: stop },
        },
        { requestId: 'b', promptIds: OTHER, maxTokens: 9, n: 2, sampling: seeded(7) },
        { requestId: 'c', promptIds: PROMPT.slice(5), maxTokens: 10, n: 1, sampling: seeded(8) },
      ];
    };
    const cache = { numBlocks: 64, blockSize: 16 };
    const first = await serveThrough(executor, false, requests([2]), limits, cache);
    // A stop token that request a hits at its fourth token, while its follow-on step is out.
    const stop = [2, Number(first.choices[0][0].split(',')[4])];
    const hostFed = await serveThrough(executor, false, requests(stop), limits, cache);
    expect(hostFed.choices[0][0].split(',')[0]).toBe('stop');
    expect(hostFed.sampledInputs).toBe(0);
    const deviceFed = await serveThrough(executor, true, requests(stop), limits, cache);
    expect(deviceFed.choices).toEqual(hostFed.choices);
    expect(deviceFed.sampledInputs).toBeGreaterThan(25);
  });

  test("every position's logits (prompt logprobs) equal each prefix's last-position logits", async () => {
    const table: number[] = [];
    blocks.ensure(table, PROMPT.length);
    try {
      const { logits: all } = await executor.execute([
        {
          seqId: 'z',
          startPos: 0,
          numTokens: PROMPT.length,
          tokens: PROMPT,
          blockTable: table,
          logitRows: PROMPT.length,
        },
      ]);
      const V = executor.vocabRows;
      expect(all.length).toBe(PROMPT.length * V);
      for (const n of [1, 17, PROMPT.length]) {
        const { logits: prefix } = await executor.execute([
          {
            seqId: 'p',
            startPos: 0,
            numTokens: n,
            tokens: PROMPT.slice(0, n),
            blockTable: table,
            logitRows: 1,
          },
        ]);
        expect(all.subarray((n - 1) * V, n * V), `position ${n - 1}`).toEqual(prefix);
      }
    } finally {
      blocks.release(table);
    }
  });
});
