// The sampler against hand-computed cases and its random stream against known answers.

import { describe, expect, test } from 'vitest';
import { philox4x32, uniformFor } from './philox.js';
import {
  adjustedScores,
  argmax,
  type GeneratedHistory,
  GREEDY,
  type SamplingParams,
  sample,
  topIndices,
  validateSampling,
} from './sampler.js';

/** A history of generated ids (their count and the ids themselves). */
const generated = (...ids: number[]): GeneratedHistory => ({ count: ids.length, ids });
const NONE = generated();

describe('Philox4x32-10', () => {
  test("matches Random123's known-answer vectors", () => {
    const hex = (words: number[]) => words.map((w) => w.toString(16).padStart(8, '0')).join(' ');
    expect(hex(philox4x32([0, 0, 0, 0], [0, 0]))).toBe('6627e8d5 e169c58d bc57ac4c 9b00dbd8');
    const ones = 0xffffffff;
    expect(hex(philox4x32([ones, ones, ones, ones], [ones, ones]))).toBe(
      '408f276d 41c83b0e a20bc7c6 6d5451fd',
    );
    expect(hex(philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]))).toBe(
      'd16cfe09 94fdcceb 5001e420 24126ea1',
    );
  });

  test('uniforms are in [0, 1), a function of the key alone, and differ by choice and position', () => {
    const u = uniformFor({ seed: 42, choice: 0, position: 7 });
    expect(u).toBeGreaterThanOrEqual(0);
    expect(u).toBeLessThan(1);
    expect(uniformFor({ seed: 42, choice: 0, position: 7 })).toBe(u);
    expect(uniformFor({ seed: 42, choice: 1, position: 7 })).not.toBe(u);
    expect(uniformFor({ seed: 42, choice: 0, position: 8 })).not.toBe(u);
    expect(uniformFor({ seed: 2 ** 40 + 42, choice: 0, position: 7 })).not.toBe(u);
  });
});

const params = (extra: Partial<SamplingParams>): SamplingParams => ({ ...GREEDY, seed: 1, ...extra });

/** How often each id is drawn over `n` positions. */
function histogram(logits: Float32Array, p: SamplingParams, n = 4000): Map<number, number> {
  const counts = new Map<number, number>();
  for (let position = 0; position < n; position++) {
    const { id } = sample(logits, p, NONE, { seed: p.seed, choice: 0, position });
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

describe('sample', () => {
  test('temperature 0 is greedy, first index on ties', () => {
    expect(
      sample(Float32Array.from([0.1, 3, 2.9, -1]), GREEDY, NONE, { seed: 0, choice: 0, position: 0 }).id,
    ).toBe(1);
    expect(argmax(Float32Array.from([1, 2, 2]))).toBe(1);
  });

  test('top-k keeps exactly the k best, the lower id first on ties', () => {
    const logits = Float32Array.from([1, 3, 2, 3, 0]);
    expect(topIndices(logits, 2)).toEqual([1, 3]);
    expect(topIndices(logits, 1)).toEqual([1]);
    expect(topIndices(logits, 3)).toEqual([1, 3, 2]);
    expect([...histogram(logits, params({ temperature: 1, topK: 2 })).keys()].sort()).toEqual([1, 3]);
    expect([...histogram(logits, params({ temperature: 1, topK: 3 })).keys()].sort()).toEqual([1, 2, 3]);
    // Large k goes through the full sort with the same order.
    const wide = Float32Array.from({ length: 300 }, (_, i) => (i * 37) % 101);
    expect(topIndices(wide, 100)).toEqual(
      Array.from({ length: 300 }, (_, i) => i)
        .sort((a, b) => wide[b] - wide[a] || a - b)
        .slice(0, 100),
    );
  });

  test('top-p keeps the smallest set of most likely tokens reaching top_p, and draws in proportion', () => {
    // Probabilities 0.5, 0.3, 0.2 (and a token that cannot be drawn).
    const logits = Float32Array.from([Math.log(0.3), Math.log(0.5), -Infinity, Math.log(0.2)]);
    const kept = (topP: number) => [...histogram(logits, params({ temperature: 1, topP })).keys()].sort();
    // Just either side of each boundary (the logits are float32: 1e-5 is well past their rounding).
    expect(kept(0.5 - 1e-5)).toEqual([1]);
    expect(kept(0.5 + 1e-5)).toEqual([0, 1]);
    expect(kept(0.8 - 1e-5)).toEqual([0, 1]);
    expect(kept(0.8 + 1e-5)).toEqual([0, 1, 3]);
    expect(kept(1)).toEqual([0, 1, 3]);
    // Renormalized over {1, 0}: 5/8 and 3/8.
    const counts = histogram(logits, params({ temperature: 1, topP: 0.79 }), 8000);
    expect((counts.get(1) ?? 0) / 8000).toBeCloseTo(5 / 8, 1);
    // top-k first, then top-p on what top-k kept: {1, 0} renormalized, top_p 0.6 keeps only 1.
    expect([...histogram(logits, params({ temperature: 1, topK: 2, topP: 0.6 })).keys()]).toEqual([1]);
  });

  test('top-p over a large vocabulary matches a full sort (the bucketed path)', () => {
    let x = 12345;
    const logits = Float32Array.from({ length: 32000 }, () => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      return (x / 2 ** 32) * 12;
    });
    const p = params({ temperature: 0.7, topP: 0.9 });
    const order = Array.from({ length: logits.length }, (_, i) => i).sort(
      (a, b) => logits[b] - logits[a] || a - b,
    );
    const w = order.map((i) => Math.exp((logits[i] - logits[order[0]]) / 0.7));
    const total = w.reduce((a, b) => a + b, 0);
    let mass = 0;
    let keep = 0;
    while (mass < 0.9 * total) mass += w[keep++];
    const allowed = new Set(order.slice(0, keep));
    for (const id of histogram(logits, p, 100).keys()) expect(allowed.has(id)).toBe(true);
    expect(keep).toBeGreaterThan(50);
  });

  test('temperature sharpens and flattens the distribution', () => {
    const logits = Float32Array.from([0, 1]);
    const share = (temperature: number) =>
      (histogram(logits, params({ temperature }), 6000).get(1) ?? 0) / 6000;
    expect(share(1)).toBeCloseTo(Math.E / (1 + Math.E), 1);
    expect(share(0.25)).toBeCloseTo(Math.exp(4) / (1 + Math.exp(4)), 1);
  });

  test('penalties against a hand-computed case', () => {
    const logits = Float32Array.from([2, -1, 0.5, 3]);
    const history = generated(0, 0, 1);
    // repetition 2: 2 -> 1, -1 -> -2; frequency 0.5 per use: 1 - 1 = 0, -2 - 0.5 = -2.5;
    // presence 0.25 once: -0.25, -2.75. Tokens 2 and 3 were never generated.
    const all = params({ repetitionPenalty: 2, frequencyPenalty: 0.5, presencePenalty: 0.25 });
    expect([...adjustedScores(logits, all, history)]).toEqual([-0.25, -2.75, 0.5, 3]);
    expect([...adjustedScores(logits, params({ repetitionPenalty: 2 }), history)]).toEqual([1, -2, 0.5, 3]);
    expect([...adjustedScores(logits, params({ frequencyPenalty: 0.5 }), history)]).toEqual([
      1, -1.5, 0.5, 3,
    ]);
    expect([...adjustedScores(logits, params({ presencePenalty: 0.25 }), history)]).toEqual([
      1.75, -1.25, 0.5, 3,
    ]);
    // Negative penalties encourage: frequency -1 makes token 1 (once) -1 + 1 = 0.
    expect(adjustedScores(logits, params({ frequencyPenalty: -1 }), history)[1]).toBe(0);
    // Nothing to penalize: the row itself, untouched.
    expect(adjustedScores(logits, all, NONE)).toBe(logits);
  });

  test('each penalty changes the greedy choice exactly where the hand computation says', () => {
    const pick = (logits: number[], ids: number[], extra: Partial<SamplingParams>) =>
      sample(Float32Array.from(logits), params(extra), generated(...ids), { seed: 0, choice: 0, position: 0 })
        .id;
    expect(pick([3, 2.5, 0], [0], { repetitionPenalty: 1.1 })).toBe(0); // 2.73 > 2.5
    expect(pick([3, 2.5, 0], [0], { repetitionPenalty: 1.25 })).toBe(1); // 2.4 < 2.5
    expect(pick([-1, -1.4], [0], { repetitionPenalty: 1.3 })).toBe(0); // -1.3 > -1.4
    expect(pick([-1, -1.4], [0], { repetitionPenalty: 1.5 })).toBe(1); // -1.5 < -1.4
    expect(pick([3, 2.5, 0], [0], { presencePenalty: 0.4 })).toBe(0); // 2.6
    expect(pick([3, 2.5, 0], [0], { presencePenalty: 0.6 })).toBe(1); // 2.4
    expect(pick([3, 2.5, 0], [0, 0], { frequencyPenalty: 0.2 })).toBe(0); // 2.6
    expect(pick([3, 2.5, 0], [0, 0], { frequencyPenalty: 0.3 })).toBe(1); // 2.4
  });

  test('min_tokens masks the stop token ids until that many tokens exist', () => {
    const logits = Float32Array.from([0, 1, 5]);
    const p = params({ stopTokenIds: [2], minTokens: 2 });
    const key = { seed: 0, choice: 0, position: 0 };
    expect(sample(logits, p, NONE, key).id).toBe(1);
    expect(sample(logits, p, { count: 1, ids: [] }, key).id).toBe(1); // the count alone
    expect(sample(logits, p, { count: 2, ids: [] }, key).id).toBe(2);
  });

  test('logprobs are the log-softmax of the raw logits, before temperature and penalties', () => {
    const logits = Float32Array.from([1, 2, 3]);
    const logZ = Math.log(Math.E + Math.E ** 2 + Math.E ** 3);
    const r = sample(logits, params({ logprobs: 2, repetitionPenalty: 5 }), generated(2), {
      seed: 0,
      choice: 0,
      position: 0,
    });
    expect(r.id).toBe(1); // the penalty moved the choice (3 / 5 < 2)...
    expect(r.logprob).toBeCloseTo(2 - logZ, 6); // ...but not the reported logprobs
    expect(r.topLogprobs?.map((t) => t.id)).toEqual([2, 1]);
    expect(r.topLogprobs?.[0].logprob).toBeCloseTo(3 - logZ, 6);
    expect(sample(logits, params({ logprobs: 0 }), NONE, { seed: 0, choice: 0, position: 0 })).toMatchObject({
      id: 2,
      topLogprobs: [],
    });
    expect(sample(logits, GREEDY, NONE, { seed: 0, choice: 0, position: 0 })).toEqual({ id: 2 });
  });

  test('the same key gives the same token; other choices give other draws', () => {
    const logits = Float32Array.from({ length: 50 }, (_, i) => Math.sin(i));
    const p = params({ temperature: 1.5, seed: 77 });
    const run = (choice: number) =>
      Array.from({ length: 30 }, (_, position) => sample(logits, p, NONE, { seed: 77, choice, position }).id);
    expect(run(0)).toEqual(run(0));
    expect(run(1)).not.toEqual(run(0));
  });

  test('penalties refuse a history without its ids', () => {
    const p = params({ repetitionPenalty: 1.2 });
    expect(() =>
      sample(Float32Array.from([1, 2]), p, { count: 2, ids: [] }, { seed: 0, choice: 0, position: 0 }),
    ).toThrow(/penalties need every generated id/);
  });

  test('rejects out-of-range parameters naming the field', () => {
    const bad = (extra: Partial<SamplingParams>) => () => validateSampling(params(extra));
    expect(bad({ temperature: -1 })).toThrow(/^temperature/);
    expect(bad({ temperature: Number.NaN })).toThrow(/^temperature/);
    expect(bad({ topP: 0 })).toThrow(/^top_p/);
    expect(bad({ topP: 1.01 })).toThrow(/^top_p/);
    expect(bad({ topK: 1.5 })).toThrow(/^top_k/);
    expect(bad({ repetitionPenalty: 0 })).toThrow(/^repetition_penalty/);
    expect(bad({ presencePenalty: 3 })).toThrow(/^presence_penalty/);
    expect(bad({ frequencyPenalty: -2.5 })).toThrow(/^frequency_penalty/);
    expect(bad({ minTokens: -1 })).toThrow(/^min_tokens/);
    expect(bad({ logprobs: 21 })).toThrow(/^logprobs/);
    expect(bad({ seed: -1 })).toThrow(/^seed/);
    expect(bad({ stopTokenIds: [1.5] })).toThrow(/^stop_token_ids/);
    expect(bad({})).not.toThrow();
  });
});
