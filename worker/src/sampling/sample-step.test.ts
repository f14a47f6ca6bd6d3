import { describe, expect, test } from 'vitest';
import type { SeqStep } from '../engine/types.js';
import { finishArgmaxStep, finishStep, onlyArgmax } from './sample-step.js';
import { GREEDY, type SamplingParams } from './sampler.js';

const row = (
  params: Partial<SamplingParams>,
  generated = { count: 0, ids: [] as number[] },
  logitRows = 1,
): SeqStep => ({
  seqId: 's',
  startPos: 0,
  numTokens: 3,
  blockTable: [0],
  logitRows,
  sample: { params: { ...GREEDY, ...params }, key: { seed: 0, choice: 0, position: 3 }, generated },
});

describe('argmax on the device', () => {
  test('only where sampling is the plain argmax of the raw logits', () => {
    expect(onlyArgmax([row({})])).toBe(true);
    expect(onlyArgmax([row({}), { ...row({}), logitRows: 0, sample: undefined }])).toBe(true);
    expect(onlyArgmax([{ ...row({}), logitRows: 0, sample: undefined }])).toBe(false); // nothing to reduce
    expect(onlyArgmax([row({ temperature: 0.7 })])).toBe(false);
    expect(onlyArgmax([row({ logprobs: 0 })])).toBe(false);
    expect(onlyArgmax([row({ repetitionPenalty: 1.1 }, { count: 1, ids: [4] })])).toBe(false);
    expect(onlyArgmax([row({ presencePenalty: 0.5 })])).toBe(false);
    // min_tokens masks the stop ids until enough tokens exist, then argmax is plain again.
    expect(onlyArgmax([row({ minTokens: 2, stopTokenIds: [2] }, { count: 1, ids: [] })])).toBe(false);
    expect(onlyArgmax([row({ minTokens: 2, stopTokenIds: [2] }, { count: 2, ids: [] })])).toBe(true);
    expect(onlyArgmax([row({}, undefined, 3)])).toBe(false); // prompt logprobs need the rows
    expect(onlyArgmax([{ ...row({}), sample: undefined }])).toBe(false); // the caller wants the logits
  });

  test('gives the tokens the sampler picks from the same logits', () => {
    const logits = Float32Array.from([0.5, 3, -1, 3, 2, 9, 1, 0]);
    const seqs = [row({}), row({})];
    const fromLogits = finishStep(seqs, logits, 4).sampled.map((t) => t.id);
    expect(fromLogits).toEqual([1, 1]);
    expect(finishArgmaxStep(seqs, Int32Array.from([1, 1]))).toEqual({
      logits: new Float32Array(0),
      sampled: [{ id: 1 }, { id: 1 }],
    });
    expect(() => finishArgmaxStep(seqs, Int32Array.from([1]))).toThrow(
      /reduced 1 logit rows, its sequences sampled 2/,
    );
  });
});
