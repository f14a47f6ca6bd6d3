// SeqStep.sampledInput on a real runner (CPU, small synthetic weights): the position takes the
// token the sequence's previous step sampled; where that step failed it runs on token 0, as the
// contract says; a sequence the previous step did not sample, or a stage that does not sample,
// is refused.

import { createDevice } from '@medcluster/kernels';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { presetConfig } from '../checkpoint/presets.js';
import { GREEDY } from '../sampling/sampler.js';
import { ShardRunner } from './shard-runner.js';
import type { SeqStep } from './types.js';

const config = presetConfig('tiny', {
  layers: 2,
  hidden: 256,
  heads: 4,
  kvHeads: 2,
  intermediate: 512,
  vocabRows: 1001,
});

describe('sampled inputs on a runner', () => {
  const device = createDevice({ kind: 'cpu', threads: 1 });
  let runner: ShardRunner;
  beforeAll(async () => {
    runner = await ShardRunner.load({
      synthetic: { config, seed: 3 },
      device,
      spec: { layerStart: 0, layerEnd: 2, tpRank: 0, tpSize: 1, embeds: true, computesLogits: true },
      kvCache: { numBlocks: 16, blockSize: 16 },
    });
  });
  afterAll(async () => {
    runner?.dispose();
    await device.close();
  });

  const sample = (position: number) => ({
    params: GREEDY,
    key: { seed: 0, choice: 0, position },
    generated: { count: 0, ids: [] },
  });
  const step = (seqId: string, startPos: number, input: number[] | 'sampled', table: number[]): SeqStep => ({
    seqId,
    startPos,
    ...(input === 'sampled'
      ? { numTokens: 1, sampledInput: true }
      : { numTokens: input.length, tokens: input }),
    blockTable: table,
    logitRows: 1,
    sample: sample(startPos + (input === 'sampled' ? 1 : input.length)),
  });
  const tokenOf = async (s: SeqStep) => (await runner.step([s])).output?.sampled[0].id;

  test('takes the token the previous step sampled, sent before that step resolved', async () => {
    const prompt = [5, 17, 300, 42];
    const first = runner.step([step('a', 0, prompt, [0])]);
    const second = runner.step([step('a', 4, 'sampled', [0])]);
    const [a, b] = await Promise.all([first, second]);
    const fed = a.output?.sampled[0].id as number;
    // The same position fed from the host, in another sequence's blocks.
    await tokenOf(step('h', 0, prompt, [1]));
    expect(await tokenOf(step('h', 4, [fed], [1]))).toBe(b.output?.sampled[0].id);
  });

  test('after a failed step the position runs on token 0; unknown sequences and bad shapes are refused', async () => {
    await tokenOf(step('c', 0, [9, 8, 7], [2]));
    await expect(runner.step([step('c', 3, [1], [99])])).rejects.toThrow(/outside the cache/);
    const onZero = await tokenOf(step('c', 3, 'sampled', [2]));
    await tokenOf(step('z', 0, [9, 8, 7], [3]));
    expect(await tokenOf(step('z', 3, [0], [3]))).toBe(onZero);
    await expect(runner.step([step('q', 0, 'sampled', [4])])).rejects.toThrow(/sampled no token for it/);
    const both = { ...step('c', 4, 'sampled', [2]), tokens: [1] };
    await expect(runner.step([both])).rejects.toThrow(/a sampled input is one position with no token ids/);
  });
});
