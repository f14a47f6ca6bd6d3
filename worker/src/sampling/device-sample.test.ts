// Device.sample on the CPU backend against sampler.ts (the parity table), finishOnDevice's
// assembly of a step's output, its argument errors, and how much faster it is than the JS sampler.

import { createDevice, KernelError } from '@medcluster/kernels';
import { rng } from '@medcluster/kernels/testing';
import { afterAll, describe, expect, test } from 'vitest';
import type { SampleSpec, SeqStep } from '../engine/types.js';
import { finishOnDevice, readSampled, sampleRowOf } from './device-sample.js';
import { type GeneratedHistory, GREEDY, type SampledToken, type SamplingParams, sample } from './sampler.js';
import { compareDeviceSampler } from './sampler-parity.js';

const device = createDevice({ kind: 'cpu' });
afterAll(() => device.close());

const NONE: GeneratedHistory = { count: 0, ids: [] };

const spec = (p: Partial<SamplingParams>, position: number, generated = NONE): SampleSpec => ({
  params: { ...GREEDY, seed: 11, ...p },
  key: { seed: 11, choice: 0, position },
  generated,
});

const step = (seqId: string, logitRows: number, sampleSpec?: SampleSpec): SeqStep => ({
  seqId,
  startPos: 0,
  numTokens: Math.max(1, logitRows),
  blockTable: [0],
  logitRows,
  sample: sampleSpec,
});

/** f32 logits like a language model's: a broad normal body and a few ids far above it. */
function llmLogits(rand: () => number, rows: number, vocab: number): Float32Array {
  const out = new Float32Array(rows * vocab);
  for (let i = 0; i < out.length; i++) {
    out[i] = 2.5 * Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand()) - 1;
  }
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < 6; j++) out[r * vocab + Math.floor(rand() * vocab)] = 9 + 7 * rand();
  return out;
}

/** The device's token against sampler.ts's: the same ids, logprobs within f32. */
function expectSameToken(dev: SampledToken, ref: SampledToken): void {
  expect(dev.id).toBe(ref.id);
  expect(dev.topLogprobs?.map((t) => t.id)).toEqual(ref.topLogprobs?.map((t) => t.id));
  if (ref.logprob === undefined) expect(dev.logprob).toBeUndefined();
  else
    expect(Math.abs((dev.logprob ?? Number.NaN) - ref.logprob)).toBeLessThanOrEqual(
      1e-6 + 1e-6 * Math.abs(ref.logprob),
    );
}

describe('Device.sample (cpu)', () => {
  test("gives sampler.ts's tokens and logprobs in every parity case", async () => {
    for (const seed of [1, 2]) {
      const results = await compareDeviceSampler(device, seed);
      const failed = results.filter((r) => !r.ok);
      for (const f of failed) console.error(`seed ${seed}: ${f.name}: ${f.detail}`);
      expect(failed.map((f) => f.name)).toEqual([]);
      // The table itself: a shrunken one would pass without testing much.
      expect(results.length).toBeGreaterThanOrEqual(50);
      expect(new Set(results.map((r) => r.name)).size).toBe(results.length);
    }
  });

  test('a 64 x 32000 top-p 0.9 step: timing against sampler.ts (printed, not asserted)', async () => {
    const V = 32000;
    const R = 64;
    const flat = llmLogits(rng(3), R, V);
    const specs = Array.from({ length: R }, (_, r) => spec({ temperature: 0.7, topP: 0.9 }, r));
    const rows = specs.map((s, r) => sampleRowOf(s, r));
    const logits = device.fromArray(flat, [R, V], 'f32');
    const run = async () => {
      const out = device.sample(logits, rows);
      try {
        return await readSampled(out, rows);
      } finally {
        out.ids.dispose();
        out.logprobs.dispose();
      }
    };
    await run(); // warm-up: thread pool and allocations
    const native: number[] = [];
    let tokens: SampledToken[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      tokens = await run();
      native.push(performance.now() - t0);
    }
    logits.dispose();
    const t0 = performance.now();
    const ref = specs.map((s, r) => sample(flat.subarray(r * V, (r + 1) * V), s.params, s.generated, s.key));
    const js = performance.now() - t0;
    const best = Math.min(...native);
    console.log(
      `Device.sample on ${device.name}: ${best.toFixed(2)} ms for ${R} rows x ${V} (best of 5), ` +
        `${(best / R).toFixed(3)} ms/row; sampler.ts: ${js.toFixed(1)} ms, ${(js / R).toFixed(3)} ms/row; ` +
        `${(js / best).toFixed(1)}x`,
    );
    expect(tokens.map((t) => t.id)).toEqual(ref.map((t) => t.id));
  });
});

describe('finishOnDevice', () => {
  test('samples each sampling sequence on its last row and returns the rows of those that return logits', async () => {
    const V = 1000;
    const seqs = [
      step('sampled', 1, spec({ temperature: 0.8, topP: 0.9, logprobs: 2 }, 5)),
      step('prompt logprobs', 3, spec({}, 9)), // 3 rows returned, the last also sampled
      step('scoring', 2), // 2 rows returned, nothing sampled
      step('prompt chunk', 0), // no rows at all
      step(
        'penalized',
        1,
        spec({ temperature: 1, topK: 20, repetitionPenalty: 1.3 }, 2, { count: 2, ids: [4, 1200] }),
      ),
    ];
    const flat = llmLogits(rng(9), 7, V);
    const row = (r: number) => flat.subarray(r * V, (r + 1) * V);
    const logits = device.fromArray(flat, [7, V], 'f32');
    const out = await finishOnDevice(device, logits, seqs);
    // Rows 1-3 (prompt logprobs) and 4-5 (scoring), in step order.
    expect(out.logits).toEqual(flat.slice(1 * V, 6 * V));
    const on = (s: SeqStep, r: number) => {
      const p = s.sample as SampleSpec;
      return sample(row(r), p.params, p.generated, p.key);
    };
    const refs = [on(seqs[0], 0), on(seqs[1], 3), on(seqs[4], 6)];
    expect(out.sampled).toHaveLength(3);
    for (const [i, ref] of refs.entries()) expectSameToken(out.sampled[i], ref);
    expect(out.sampled[0].topLogprobs).toHaveLength(2);
    // The tensor it was given is still usable.
    expect(await logits.read()).toEqual(flat);
    logits.dispose();
  });

  test('a step that returns every row reads them as they are; one that samples only returns no rows', async () => {
    const V = 50;
    const flat = llmLogits(rng(4), 3, V);
    const logits = device.fromArray(flat, [3, V], 'f32');
    const all = await finishOnDevice(device, logits, [step('a', 2), step('b', 1)]);
    expect(all.logits).toEqual(flat);
    expect(all.sampled).toEqual([]);
    const specs = [1, 2, 3].map((position) => spec({ temperature: 1 }, position));
    const only = await finishOnDevice(
      device,
      logits,
      specs.map((s, i) => step(`s${i}`, 1, s)),
    );
    expect(only.logits).toHaveLength(0);
    expect(only.sampled.map((t) => t.id)).toEqual(
      specs.map((s, i) => sample(flat.subarray(i * V, (i + 1) * V), s.params, s.generated, s.key).id),
    );
    await expect(finishOnDevice(device, logits, [step('a', 2), step('b', 2)])).rejects.toThrow(
      'the step computed 3 logit rows, its sequences asked for 4',
    );
    await expect(finishOnDevice(device, logits, [step('a', 3), step('b', 0, spec({}, 1))])).rejects.toThrow(
      /sequence b: sampling needs/,
    );
    logits.dispose();
  });

  test('a bad row throws a KernelError naming the row and the field', async () => {
    const logits = device.fromArray(new Float32Array(2 * 8), [2, 8], 'f32');
    const rejects = async (seqs: SeqStep[]) => {
      const err = await finishOnDevice(device, logits, seqs).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(KernelError);
      return (err as Error).message;
    };
    expect(
      await rejects([step('a', 1, spec({}, 0)), step('b', 1, spec({ temperature: 1, topP: 0 }, 0))]),
    ).toBe('sample: rows[1].topP must be in (0, 1], got 0');
    expect(await rejects([step('a', 1, spec({ temperature: Number.NaN }, 0)), step('b', 1)])).toBe(
      'sample: rows[0].temperature must be a finite number, got NaN',
    );
    const row = sampleRowOf(spec({}, 0), 0);
    let err: unknown;
    try {
      device.sample(logits, [row, { ...row, row: 2 }]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KernelError);
    expect((err as Error).message).toBe('sample: rows[1].row 2 is not a row of the 2 logit rows');
    logits.dispose();
  });
});
