// Device.sample against the sampler it implements (sampler.ts), on whatever device it is given:
// the CPU backend in the tests, a GPU in the GPU suite or on a machine being brought up. Every
// case runs its rows through the path the worker uses (sampleRowOf, Device.sample, readSampled)
// and through the JS sample() on the same logits, parameters and draw; ids must be equal, and
// logprobs equal within what the device's f32 output can hold.
//
// How the cases stay exact without false failures: the device's exp may differ from V8's
// Math.exp in the last bit, which moves the sums the draw and the top-p cut compare by about an
// ulp. A token can then differ only where a decision falls within rounding of a boundary. The
// random cases draw their uniforms from Philox (a boundary within 1e-15 of a draw is not going
// to happen); the hand-made boundaries sit 1e-9 (relative) either side of the cut, far above
// rounding and far below any real difference of semantics; and the cases about exact equality
// (the top-p mass reaching exactly top_p, a draw landing exactly on a cumulative weight) use
// weights of exactly 1 and 0, which every exp computes exactly. A wrong order, tie rule,
// comparison or fallback moves a pick by a whole token weight, so it still shows. Each
// hand-made case also states the id the JS sampler must pick, and that is checked first, so a
// case that stopped being the boundary or tie it means to be fails instead of passing vacuously.

import type { Device, SampleRow, Tensor } from '@medcluster/kernels';
import { rng } from '@medcluster/kernels/testing';
import type { SampleSpec } from '../engine/types.js';
import { readSampled, sampleRowOf } from './device-sample.js';
import type { SampleKey } from './philox.js';
import {
  adjustedScores,
  argmax,
  type GeneratedHistory,
  GREEDY,
  type SampledToken,
  type SamplingParams,
  sample,
  sampleWithUniform,
  topIndices,
} from './sampler.js';

export interface ParityResult {
  name: string;
  ok: boolean;
  /** What was compared when ok; the first differences otherwise. */
  detail: string;
}

/** One row of a case's Device.sample call. */
interface CaseRow {
  /** The logits row it samples. */
  row: number;
  spec: SampleSpec;
  /** The draw itself, instead of the one its key gives (edges and hand-placed boundaries). */
  uniform?: number;
  /** The id the JS sampler must pick: the case's premise (a real boundary, a tie rule). */
  expect?: number;
}

interface ParityCase {
  name: string;
  vocab: number;
  /** The call's logits rows, vocab values each. */
  logits: Float32Array[];
  rows: CaseRow[];
}

/** The largest double below 1: the highest draw Philox's 53 bits can give. */
const LAST_UNIFORM = 1 - 2 ** -53;
/** Relative distance of a hand-placed top_p or draw from the boundary it straddles. */
const MARGIN = 1e-9;
const VOCAB = 32000;

/** Greedy with nothing else on: each case changes what it is about. */
const BASE: SamplingParams = GREEDY;

const NONE: GeneratedHistory = { count: 0, ids: [] };

/** A history whose ids are `ids` (penalties need them all). */
const history = (...ids: number[]): GeneratedHistory => ({ count: ids.length, ids });

/**
 * Runs every case through `device.sample` and through sampler.ts; one result per case. Inputs
 * (logits, histories) come from a PRNG seeded by `seed`, so a failure reproduces with its seed.
 */
export async function compareDeviceSampler(device: Device, seed: number): Promise<ParityResult[]> {
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw new RangeError(`seed must be an integer >= 0, got ${seed}`);
  const results: ParityResult[] = [];
  for (const c of buildCases(seed)) results.push(await runCase(device, c));
  return results;
}

async function runCase(device: Device, c: ParityCase): Promise<ParityResult> {
  const problems: string[] = [];
  // The reference first: a case whose premise does not hold is a broken case, whatever the device.
  const refs = c.rows.map((r) => reference(c.logits[r.row], r));
  for (const [i, r] of c.rows.entries()) {
    if (r.expect !== undefined && refs[i].id !== r.expect) {
      problems.push(`row ${i}: sampler.ts picks ${refs[i].id} where the case is built for ${r.expect}`);
    }
  }
  const rows: SampleRow[] = c.rows.map((r) => {
    const row = sampleRowOf(r.spec, r.row);
    return r.uniform === undefined ? row : { ...row, uniform: r.uniform };
  });
  const flat = new Float32Array(c.logits.length * c.vocab);
  for (const [i, l] of c.logits.entries()) flat.set(l, i * c.vocab);
  const owned: Tensor[] = [];
  try {
    const logits = device.fromArray(flat, [c.logits.length, c.vocab], 'f32');
    owned.push(logits);
    const out = device.sample(logits, rows);
    owned.push(out.ids, out.logprobs);
    const [tokens, ids, logprobs] = await Promise.all([
      readSampled(out, rows),
      out.ids.read() as Promise<Int32Array>,
      out.logprobs.read() as Promise<Float32Array>,
    ]);
    const width = out.ids.shape[1];
    for (const [i, ref] of refs.entries()) {
      problems.push(...compareToken(i, tokens[i], ref, rows[i].logprobs));
      problems.push(...checkPadding(i, ids, logprobs, width, ref));
    }
  } catch (err) {
    problems.push(`Device.sample failed: ${err instanceof Error ? err.message : String(err)}`);
  } finally {
    for (const t of owned) t.dispose();
  }
  const picked = refs.map((r) => r.id);
  const shown = picked.length > 8 ? `${picked.slice(0, 8).join(', ')}, ...` : picked.join(', ');
  return {
    name: c.name,
    ok: problems.length === 0,
    detail:
      problems.length === 0
        ? `${c.rows.length} row(s) of vocab ${c.vocab} agree: ids ${shown}`
        : problems.slice(0, 6).join('; ') + (problems.length > 6 ? `; and ${problems.length - 6} more` : ''),
  };
}

/** sampler.ts on one row, with the case's draw when it sets one. */
function reference(logits: Float32Array, r: CaseRow): SampledToken {
  const { params, generated, key } = r.spec;
  return r.uniform === undefined
    ? sample(logits, params, generated, key)
    : sampleWithUniform(logits, params, generated, r.uniform);
}

/** Whether a device's f32 logprob stands for the reference's float64 one. */
function closeLogprob(device: number, ref: number): boolean {
  // Object.is: equal infinities (a -inf logit's logprob) and NaN (an infinite logit's) agree.
  return Object.is(device, ref) || Math.abs(device - ref) <= 1e-6 + 1e-6 * Math.abs(ref);
}

function compareToken(i: number, dev: SampledToken, ref: SampledToken, asked: number | undefined): string[] {
  const out: string[] = [];
  if (dev.id !== ref.id) out.push(`row ${i}: id ${dev.id}, sampler.ts ${ref.id}`);
  if (ref.logprob === undefined) {
    if (dev.logprob !== undefined || dev.topLogprobs !== undefined)
      out.push(`row ${i}: logprobs nobody asked for`);
    return out;
  }
  if (dev.logprob === undefined || !closeLogprob(dev.logprob, ref.logprob)) {
    out.push(`row ${i}: logprob ${dev.logprob}, sampler.ts ${ref.logprob}`);
  }
  const devTop = dev.topLogprobs ?? [];
  const refTop = ref.topLogprobs ?? [];
  // Both list min(N, vocab) alternatives (readSampled drops Device.sample's -1 padding, which
  // checkPadding checks in the raw output).
  if (devTop.length !== refTop.length) {
    out.push(`row ${i}: ${devTop.length} top logprobs of ${asked} asked, sampler.ts ${refTop.length}`);
  }
  for (const [j, d] of devTop.entries()) {
    const r = refTop[j];
    if (r === undefined || d.id !== r.id || !closeLogprob(d.logprob, r.logprob)) {
      out.push(`row ${i}: top ${j} is ${d.id} (${d.logprob}), sampler.ts ${r?.id} (${r?.logprob})`);
    }
  }
  return out;
}

/** Device.sample's layout past what a row reports: id -1 and logprob 0, and logprob 0 without logprobs. */
function checkPadding(i: number, ids: Int32Array, logprobs: Float32Array, width: number, ref: SampledToken) {
  const out: string[] = [];
  const used = 1 + (ref.topLogprobs?.length ?? 0);
  if (ref.logprob === undefined && logprobs[i * width] !== 0) {
    out.push(`row ${i}: logprob column 0 is ${logprobs[i * width]} without logprobs, not 0`);
  }
  for (let j = used; j < width; j++) {
    if (ids[i * width + j] !== -1 || logprobs[i * width + j] !== 0) {
      out.push(`row ${i}: column ${j} is (${ids[i * width + j]}, ${logprobs[i * width + j]}), not padding`);
      break;
    }
  }
  return out;
}

// ---- inputs ------------------------------------------------------------------------------

/** A standard normal deviate (Box-Muller). */
function normal(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

/**
 * A logits row shaped like a language model's: a broad normal body and, when `peaked`, a few
 * ids far above it that hold most of the probability (a flat row makes top-p keep thousands).
 */
function llmRow(rand: () => number, vocab: number, peaked: boolean): Float32Array {
  const row = new Float32Array(vocab);
  for (let i = 0; i < vocab; i++) row[i] = peaked ? 2.5 * normal(rand) - 1 : 1.2 * normal(rand);
  if (peaked) {
    const spikes = 1 + Math.floor(rand() * 12);
    for (let j = 0; j < spikes; j++) row[Math.floor(rand() * vocab)] = 9 + 7 * rand();
  }
  return row;
}

/** A row where only `ids` are possible, each with the same logit: every weight is exactly 1 or 0. */
function exactRow(vocab: number, ids: readonly number[]): Float32Array {
  const row = new Float32Array(vocab).fill(Number.NEGATIVE_INFINITY);
  for (const id of ids) row[id] = 1.5;
  return row;
}

/** What sampler.ts's draw sees for a row: its weights, and every id in its sort order. */
function drawView(logits: Float32Array, p: SamplingParams, generated: GeneratedHistory) {
  const scores = adjustedScores(logits, p, generated);
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < scores.length; i++) if (scores[i] > max) max = scores[i];
  const weights = Float64Array.from(scores, (s) => Math.exp((s - max) / p.temperature));
  return { weights, order: topIndices(scores, scores.length) };
}

/** Sequential sum of weights over ids[0..end], the order the sampler sums them in. */
function prefixMass(ids: ArrayLike<number>, weights: Float64Array, end: number): number {
  let mass = 0;
  for (let j = 0; j <= end; j++) mass += weights[ids[j]];
  return mass;
}

/** The first position where the prefix reaches `fraction` of `total`. */
function positionOf(ids: ArrayLike<number>, weights: Float64Array, total: number, fraction: number): number {
  let mass = 0;
  for (let j = 0; j < ids.length; j++) {
    mass += weights[ids[j]];
    if (mass >= fraction * total) return j;
  }
  return ids.length - 1;
}

const identity = (n: number) => Array.from({ length: n }, (_, i) => i);

function buildCases(seed: number): ParityCase[] {
  const rand = rng(seed);
  let position = 0;
  const key = (): SampleKey => ({ seed, choice: 0, position: position++ });
  const spec = (p: Partial<SamplingParams>, generated: GeneratedHistory = NONE): SampleSpec => ({
    params: { ...BASE, seed, ...p },
    key: key(),
    generated,
  });
  const pick = (n: number) => Math.floor(rand() * n);
  const cases: ParityCase[] = [];
  const add = (name: string, logits: Float32Array[], rows: CaseRow[]) =>
    cases.push({ name, vocab: logits[0].length, logits, rows });
  /** `perRow` rows per logits row with the same parameters, each its own key. */
  const keyed = (logits: Float32Array[], p: Partial<SamplingParams>, perRow = 2): CaseRow[] =>
    logits.flatMap((_, row) => Array.from({ length: perRow }, () => ({ row, spec: spec(p) })));

  const big = () => [llmRow(rand, VOCAB, true), llmRow(rand, VOCAB, false), llmRow(rand, VOCAB, true)];
  const small = (vocab: number) => [llmRow(rand, vocab, true), llmRow(rand, vocab, false)];

  const addKeyed = (name: string, logits: Float32Array[], p: Partial<SamplingParams>, perRow = 2) =>
    add(name, logits, keyed(logits, p, perRow));

  // Greedy, and plain temperatures (nothing cut: the draw walks every id in id order).
  {
    const logits = big();
    add('greedy, vocab 32000', logits, [...keyed(logits, {}, 1), ...keyed(logits, { logprobs: 3 }, 1)]);
  }
  for (const vocab of [5, 100]) addKeyed(`greedy, vocab ${vocab}`, small(vocab), {}, 1);
  for (const temperature of [0.3, 0.7, 1, 1.5])
    addKeyed(`temperature ${temperature}`, big(), { temperature });
  for (const vocab of [5, 100])
    addKeyed(`temperature 1, vocab ${vocab}`, small(vocab), { temperature: 1 }, 4);

  // Top-k: 64 and 65 straddle sampler.ts's switch from insertion to a full sort.
  for (const [label, topK] of [
    ['1', 1],
    ['2', 2],
    ['50', 50],
    ['V-1', VOCAB - 1],
    ['V', VOCAB],
    ['> V', VOCAB + 7],
  ] as const) {
    addKeyed(`top-k ${label}`, big(), { temperature: 1, topK });
  }
  for (const topK of [1, 64, 65, 99, 100, 101]) {
    addKeyed(`top-k ${topK}, vocab 100`, small(100), { temperature: 1, topK }, 3);
  }

  // Top-p over the whole vocabulary (sampler.ts's bucketed nucleus), and with top-k.
  for (const topP of [0.1, 0.5, 0.9, 0.95, 1]) {
    const logits = big();
    add(`top-p ${topP}`, logits, [
      ...keyed(logits, { temperature: 0.7, topP }, 1),
      ...keyed(logits, { temperature: 1, topP }, 1),
    ]);
  }
  addKeyed('top-p 0.9, vocab 100', small(100), { temperature: 1, topP: 0.9 }, 3);
  addKeyed('top-p 0.5, vocab 5', small(5), { temperature: 1, topP: 0.5 }, 3);
  {
    const logits = big();
    add('top-k and top-p together', logits, [
      ...keyed(logits, { temperature: 1, topK: 50, topP: 0.9 }, 1),
      ...keyed(logits, { temperature: 0.7, topK: 1000, topP: 0.95 }, 1),
      ...keyed(logits, { temperature: 1.5, topK: 5, topP: 0.5 }, 1),
      ...keyed(logits, { temperature: 1, topK: VOCAB - 1, topP: 0.9 }, 1),
    ]);
  }

  // Top-p boundaries: top_p just below, then just above, the weight of the first k+1 ids. The
  // kept set is then exactly one id longer in the second row, which the draw at LAST_UNIFORM
  // shows: it picks the last kept id (order[k], then order[k+1]).
  const topPBoundary = (name: string, logits: Float32Array, p: Partial<SamplingParams>, fraction: number) => {
    const params = { ...BASE, seed, ...p };
    const { weights, order } = drawView(logits, params, NONE);
    const kept = params.topK > 0 && params.topK < logits.length ? order.slice(0, params.topK) : order;
    // The total the sampler divides by: over the top-k ids in their order, else over every id in id order.
    const total =
      kept === order
        ? prefixMass(identity(logits.length), weights, logits.length - 1)
        : prefixMass(kept, weights, kept.length - 1);
    const k = positionOf(kept, weights, total, fraction);
    const share = prefixMass(kept, weights, k) / total;
    add(
      name,
      [logits],
      [
        { row: 0, spec: spec({ ...p, topP: share * (1 - MARGIN) }), uniform: LAST_UNIFORM, expect: kept[k] },
        {
          row: 0,
          spec: spec({ ...p, topP: share * (1 + MARGIN) }),
          uniform: LAST_UNIFORM,
          expect: kept[k + 1] ?? -1, // -1: no id after the cut, so no boundary (a broken case)
        },
      ],
    );
  };
  topPBoundary('top-p boundary, flat vocab 32000', llmRow(rand, VOCAB, false), { temperature: 1 }, 0.5);
  topPBoundary('top-p boundary, peaked vocab 32000', llmRow(rand, VOCAB, true), { temperature: 0.7 }, 0.9);
  topPBoundary('top-p boundary, vocab 100', llmRow(rand, 100, false), { temperature: 1 }, 0.6);
  topPBoundary(
    'top-p boundary after top-k 200',
    llmRow(rand, VOCAB, false),
    { temperature: 1, topK: 200 },
    0.5,
  );

  // Draw boundaries: the uniform just below, then just above, the cumulative weight of a
  // candidate, walked most likely first (a cut) or in id order (nothing cut).
  {
    const logits = llmRow(rand, 100, false);
    const { weights } = drawView(logits, { ...BASE, temperature: 1 }, NONE);
    const ids = identity(100);
    const total = prefixMass(ids, weights, 99);
    const share = prefixMass(ids, weights, 40) / total;
    add(
      'draw boundary, nothing cut (id order)',
      [logits],
      [
        { row: 0, spec: spec({ temperature: 1 }), uniform: share * (1 - MARGIN), expect: 40 },
        { row: 0, spec: spec({ temperature: 1 }), uniform: share * (1 + MARGIN), expect: 41 },
      ],
    );
  }
  {
    const logits = llmRow(rand, VOCAB, true);
    const { weights, order } = drawView(logits, { ...BASE, temperature: 1 }, NONE);
    const top = order.slice(0, 10);
    const share = prefixMass(top, weights, 4) / prefixMass(top, weights, 9);
    add(
      'draw boundary, top-k 10 (most likely first)',
      [logits],
      [
        { row: 0, spec: spec({ temperature: 1, topK: 10 }), uniform: share * (1 - MARGIN), expect: top[4] },
        { row: 0, spec: spec({ temperature: 1, topK: 10 }), uniform: share * (1 + MARGIN), expect: top[5] },
      ],
    );
  }
  // Exact equalities, decided by the comparison itself: weights 1, 1, 1, 1, the rest 0.
  add(
    'top-p mass reaches top_p exactly (>=)',
    [exactRow(100, [10, 20, 30, 40])],
    [
      // needed = 0.5 * 4 = 2: the prefix [10, 20] reaches it exactly, so the nucleus stops there.
      { row: 0, spec: spec({ temperature: 1, topP: 0.5 }), uniform: LAST_UNIFORM, expect: 20 },
      // needed = 0.6 * 4 = 2.4, inside the tie: the lower ids are kept.
      { row: 0, spec: spec({ temperature: 1, topP: 0.6 }), uniform: LAST_UNIFORM, expect: 30 },
    ],
  );
  add(
    'draw lands exactly on a cumulative weight (<)',
    [exactRow(100, [10, 20, 30, 40])],
    [
      // target 2 - 1 - 1 = 0 is not < 0: the third id.
      { row: 0, spec: spec({ temperature: 1 }), uniform: 0.5, expect: 30 },
      { row: 0, spec: spec({ temperature: 1, topK: 4 }), uniform: 0.5, expect: 30 },
      { row: 0, spec: spec({ temperature: 1 }), uniform: LAST_UNIFORM, expect: 40 },
    ],
  );

  // Ties: the argmax keeps the first index (-0 and +0 are equal); top-k keeps lower ids first.
  {
    const logits = Float32Array.from({ length: 100 }, () => -1 - rand());
    logits[17] = 3;
    logits[42] = 3;
    const zeros = Float32Array.from({ length: 100 }, () => -1 - rand());
    zeros[3] = -0;
    zeros[7] = 0;
    add(
      'greedy ties: first index, -0 equals +0',
      [logits, zeros],
      [
        { row: 0, spec: spec({}), expect: 17 },
        { row: 1, spec: spec({}), expect: 3 },
        { row: 1, spec: spec({ temperature: 1, topK: 1 }), expect: 3 },
      ],
    );
  }
  {
    const logits = Float32Array.from({ length: 100 }, () => -3 * rand());
    logits[50] = 4;
    for (const id of [7, 30, 90]) logits[id] = 2;
    add(
      'top-k cut inside a tie (insertion)',
      [logits],
      [
        { row: 0, spec: spec({ temperature: 1, topK: 3 }), uniform: LAST_UNIFORM, expect: 30 },
        { row: 0, spec: spec({ temperature: 1, topK: 2 }), uniform: LAST_UNIFORM, expect: 7 },
        { row: 0, spec: spec({ temperature: 1, topK: 3, topP: 0.999999 }), uniform: LAST_UNIFORM },
      ],
    );
  }
  {
    const logits = Float32Array.from({ length: 1000 }, () => -5 * rand());
    const high = identity(1000)
      .filter((i) => i % 13 === 5)
      .slice(0, 70);
    for (const id of high) logits[id] = 3 + rand();
    const tied = [998, 3, 401, 250, 777];
    for (const id of tied) logits[id] = 1;
    add(
      'top-k cut inside a tie (sort, k > 64)',
      [logits],
      [
        // 70 above the tie, then the tie in id order: 3, 250, ...
        { row: 0, spec: spec({ temperature: 1, topK: 72 }), uniform: LAST_UNIFORM, expect: 250 },
        { row: 0, spec: spec({ temperature: 1, topK: 71 }), uniform: LAST_UNIFORM, expect: 3 },
      ],
    );
  }

  // The uniform's edges. 0 picks the first candidate with weight: id 0 in id order (id 1 when id
  // 0 is masked), the most likely after a cut. LAST_UNIFORM picks the last candidate; with
  // nothing cut that is only well defined when rounding cannot decide it (exact weights), or
  // when the last id is also the argmax the fallback would take.
  {
    const logits = big();
    const top = argmax(logits[0]);
    const last = llmRow(rand, VOCAB, true);
    last[VOCAB - 1] = 30;
    add('uniform 0', logits, [
      { row: 0, spec: spec({ temperature: 1 }), uniform: 0, expect: 0 },
      { row: 0, spec: spec({ temperature: 1, stopTokenIds: [0], minTokens: 1 }), uniform: 0, expect: 1 },
      { row: 0, spec: spec({ temperature: 0.7, topP: 0.9 }), uniform: 0, expect: top },
      { row: 0, spec: spec({ temperature: 1, topK: 50 }), uniform: 0, expect: top },
      { row: 1, spec: spec({ temperature: 1.5, topK: 1000, topP: 0.95 }), uniform: 0 },
    ]);
    const order = topIndices(logits[0], 50);
    add(
      'uniform 1 - 2^-53',
      [logits[0], last, exactRow(VOCAB, [5, 9000, 31000])],
      [
        { row: 0, spec: spec({ temperature: 1, topK: 50 }), uniform: LAST_UNIFORM, expect: order[49] },
        { row: 0, spec: spec({ temperature: 0.7, topP: 0.9 }), uniform: LAST_UNIFORM },
        { row: 1, spec: spec({ temperature: 1 }), uniform: LAST_UNIFORM, expect: VOCAB - 1 },
        { row: 2, spec: spec({ temperature: 1 }), uniform: LAST_UNIFORM, expect: 31000 },
        { row: 2, spec: spec({ temperature: 1, topP: 0.5 }), uniform: LAST_UNIFORM, expect: 9000 },
      ],
    );
  }

  // Penalties, each built so that a wrong rule picks another id.
  {
    const positive = Float32Array.from({ length: 100 }, () => -2 * rand());
    positive[12] = 10; // divided by 1.3: 7.69, under id 60
    positive[60] = 8;
    const negative = Float32Array.from({ length: 100 }, () => -2 - rand());
    negative[12] = -1; // multiplied by 1.3: -1.3, under id 60 (divided it would stay on top)
    negative[60] = -1.2;
    add(
      'repetition penalty, positive and negative logits',
      [positive, negative],
      [
        { row: 0, spec: spec({ repetitionPenalty: 1.3 }, history(12, 5)), expect: 60 },
        { row: 1, spec: spec({ repetitionPenalty: 1.3 }, history(12, 5)), expect: 60 },
        { row: 0, spec: spec({ repetitionPenalty: 1.3, temperature: 1, logprobs: 3 }, history(12, 5, 60)) },
        { row: 1, spec: spec({ repetitionPenalty: 0.8, temperature: 0.5 }, history(12, 60, 60)) },
      ],
    );
  }
  {
    const logits = Float32Array.from({ length: 100 }, () => -2 * rand());
    logits[12] = 5;
    logits[60] = 4;
    add(
      'frequency and presence penalties, ids past the vocabulary',
      [logits],
      [
        // 5 - 0.5 * 3 - 0.3 = 3.2 < 4: each occurrence counts (once would leave 4.2).
        {
          row: 0,
          spec: spec({ frequencyPenalty: 0.5, presencePenalty: 0.3 }, history(12, 12, 140, 12, 140)),
          expect: 60,
        },
        // presence alone, once per distinct id: 5 - 1.2 = 3.8 < 4; and 5 - 0.4 = 4.6 > 4 (once
        // per occurrence would be 3.8).
        { row: 0, spec: spec({ presencePenalty: 1.2 }, history(12, 12, 12, 100)), expect: 60 },
        { row: 0, spec: spec({ presencePenalty: 0.4 }, history(12, 12, 12)), expect: 12 },
        // negative penalties encourage: id 60 gets 4 + 1.5 * 2 + 0.5 = 7.5.
        {
          row: 0,
          spec: spec({ frequencyPenalty: -1.5, presencePenalty: -0.5 }, history(60, 60, 99999)),
          expect: 60,
        },
        {
          row: 0,
          spec: spec(
            {
              temperature: 1,
              frequencyPenalty: 0.7,
              presencePenalty: 0.4,
              repetitionPenalty: 1.1,
              logprobs: 5,
            },
            history(12, 60, 12, 100, 3),
          ),
        },
      ],
    );
  }
  {
    const logits = big();
    const rows: CaseRow[] = logits.flatMap((row, i) => {
      const tops = topIndices(row, 20);
      const ids = Array.from({ length: 40 }, () =>
        rand() < 0.1 ? VOCAB + pick(100) : rand() < 0.5 ? tops[pick(20)] : pick(VOCAB),
      );
      return [
        {
          row: i,
          spec: spec(
            {
              temperature: 0.8,
              topP: 0.95,
              repetitionPenalty: 1.2,
              frequencyPenalty: 0.3,
              presencePenalty: 0.2,
              logprobs: 5,
            },
            history(...ids),
          ),
        },
        { row: i, spec: spec({ repetitionPenalty: 1.5, frequencyPenalty: 0.5 }, history(...ids)) },
      ];
    });
    add('penalties while sampling, vocab 32000', logits, rows);
  }

  // min_tokens: the stop ids are masked until then.
  {
    const logits = big();
    const top = topIndices(logits[0], 2);
    const gen = (count: number): GeneratedHistory => ({ count, ids: [] });
    add('min_tokens masks the most likely id', logits, [
      { row: 0, spec: spec({ stopTokenIds: [top[0], VOCAB + 3], minTokens: 3 }, gen(1)), expect: top[1] },
      { row: 0, spec: spec({ stopTokenIds: [top[0]], minTokens: 3 }, gen(3)), expect: top[0] },
      {
        row: 0,
        spec: spec(
          { temperature: 1, topP: 0.9, stopTokenIds: [top[0], top[1]], minTokens: 3, logprobs: 2 },
          gen(2),
        ),
      },
      { row: 1, spec: spec({ temperature: 0.7, stopTokenIds: [argmax(logits[1])], minTokens: 1 }, gen(0)) },
    ]);
    const five = llmRow(rand, 5, true);
    add(
      'min_tokens masks every id but one',
      [five],
      [
        {
          row: 0,
          spec: spec({ temperature: 1, stopTokenIds: [0, 1, 3, 4], minTokens: 2 }, gen(1)),
          expect: 2,
        },
        {
          row: 0,
          spec: spec({ temperature: 1, topP: 0.3, stopTokenIds: [0, 1, 3, 4], minTokens: 2 }, gen(1)),
          expect: 2,
        },
        { row: 0, spec: spec({ stopTokenIds: [4, 0, 1, 3], minTokens: 2 }, gen(1)), expect: 2 },
      ],
    );
    // Nothing is possible: every weight is NaN, and each path takes its fallback.
    const all = { stopTokenIds: [0, 1, 2, 3, 4, 7], minTokens: 2 };
    add(
      'min_tokens masks every id',
      [five],
      [
        { row: 0, spec: spec(all, gen(0)), expect: 0 },
        { row: 0, spec: spec({ ...all, temperature: 1 }, gen(0)), expect: 0 },
        { row: 0, spec: spec({ ...all, temperature: 1, topP: 0.9 }, gen(0)), expect: 0 },
        { row: 0, spec: spec({ ...all, temperature: 1, topK: 2 }, gen(0)), expect: 1 },
        { row: 0, spec: spec({ ...all, temperature: 1, logprobs: 5 }, gen(1)) },
      ],
    );
  }

  // Infinite logits.
  {
    const logits = big();
    for (const row of logits)
      for (let i = 0; i < VOCAB; i++) if (rand() < 0.3) row[i] = Number.NEGATIVE_INFINITY;
    add('-Infinity logits', logits, [
      ...keyed(logits, { temperature: 0.7, topP: 0.9 }, 1),
      ...keyed(logits, { temperature: 1, topK: 50, logprobs: 5 }, 1),
      ...keyed(logits, { temperature: 1.5 }, 1),
      ...keyed(logits, { logprobs: 20 }, 1),
    ]);
    const one = new Float32Array(100).fill(Number.NEGATIVE_INFINITY);
    one[63] = -4;
    add(
      'a single finite logit',
      [one],
      [
        { row: 0, spec: spec({ temperature: 1, topP: 0.5, logprobs: 3 }), expect: 63 },
        { row: 0, spec: spec({ temperature: 1, topK: 10 }), expect: 63 },
        { row: 0, spec: spec({ temperature: 0.3 }), uniform: LAST_UNIFORM, expect: 63 },
      ],
    );
    const inf = Float32Array.from({ length: 100 }, () => normal(rand));
    inf[21] = Number.POSITIVE_INFINITY;
    add(
      '+Infinity logit',
      [inf],
      [
        { row: 0, spec: spec({}), expect: 21 },
        { row: 0, spec: spec({ temperature: 1 }), expect: 21 },
        { row: 0, spec: spec({ temperature: 1, topP: 0.9 }), expect: 21 },
        { row: 0, spec: spec({ temperature: 1, topK: 5 }) },
      ],
    );
  }

  // Logprobs: of the raw logits, alternatives largest first, lower id first on ties (logits on a
  // coarse grid, so ties are everywhere).
  {
    const logits = big().map((row) => row.map((v) => Math.round(v * 2) / 2));
    add(
      'logprobs 0, 1, 5, 20 with ties',
      logits,
      [0, 1, 5, 20].flatMap((n) => [
        { row: n % 3, spec: spec({ logprobs: n }) },
        { row: (n + 1) % 3, spec: spec({ temperature: 1, topP: 0.9, logprobs: n }) },
      ]),
    );
    const hundred = llmRow(rand, 100, false).map((v) => Math.round(v));
    add(
      'logprobs with ties, vocab 100',
      [hundred],
      [
        { row: 0, spec: spec({ logprobs: 20 }) },
        { row: 0, spec: spec({ temperature: 1, logprobs: 5 }) },
        {
          row: 0,
          spec: spec({ temperature: 1, repetitionPenalty: 2, logprobs: 1 }, history(argmax(hundred))),
        },
        { row: 0, spec: spec({ temperature: 1 }) },
      ],
    );
    const five = llmRow(rand, 5, false);
    five[1] = five[3];
    add(
      'logprobs past the vocabulary (vocab 5)',
      [five],
      [
        { row: 0, spec: spec({ logprobs: 5 }) },
        { row: 0, spec: spec({ temperature: 1, logprobs: 20 }) },
        { row: 0, spec: spec({}) },
      ],
    );
  }

  // Many rows in one call, of mixed parameters, reading the logits rows out of order (two of
  // them twice).
  {
    const logits = Array.from({ length: 80 }, (_, i) => llmRow(rand, VOCAB, i % 3 !== 0));
    const order = identity(80);
    for (let i = order.length - 1; i > 0; i--) {
      const j = pick(i + 1);
      [order[i], order[j]] = [order[j], order[i]];
    }
    const chosen = [...order.slice(0, 62), order[5], order[40]];
    const rows = chosen.map((row, j): CaseRow => {
      const tops = topIndices(logits[row], 8);
      const generated = history(
        ...Array.from({ length: 12 }, () => (rand() < 0.5 ? tops[pick(8)] : pick(VOCAB + 50))),
      );
      const mixes: [Partial<SamplingParams>, GeneratedHistory][] = [
        [{}, NONE],
        [{ temperature: 0.7, topP: 0.9 }, NONE],
        [{ temperature: 1, topK: 50 }, NONE],
        [{ temperature: 1.5, topK: 1000, topP: 0.95, logprobs: 20 }, NONE],
        [{ temperature: 0.3, logprobs: 5 }, NONE],
        [{ logprobs: 0 }, NONE],
        [{ temperature: 1, repetitionPenalty: 1.2, presencePenalty: 0.5, frequencyPenalty: 0.3 }, generated],
        [{ temperature: 0.8, minTokens: 20, stopTokenIds: [tops[0], 2] }, generated],
        [{ temperature: 1, topP: 0.5, logprobs: 1 }, NONE],
        [{ temperature: 1 }, NONE],
      ];
      const [p, g] = mixes[j % mixes.length];
      return { row, spec: spec(p, g) };
    });
    add('64 rows of mixed parameters, out of order', logits, rows);
  }
  return cases;
}
