// The one sampler: the next token as a pure function of (a row of raw logits, the request's
// parameters, the tokens the sequence generated so far, a key). Nothing else goes in, so a
// seeded request gives the same tokens whatever it is batched with, preemption and recompute
// change nothing. Workers run it where the logits are, through Device.sample (device-sample.ts),
// which follows this order of operations on the device; this is its reference.
//
// Order of operations (as vLLM and transformers apply them):
//   1. penalties on the generated tokens: repetition (divide positive logits, multiply negative
//      ones), then frequency (per occurrence) and presence (once per distinct token);
//   2. until `minTokens` tokens exist, the stop token ids are masked out;
//   3. temperature 0 is greedy (argmax, first index on ties); otherwise logits / temperature,
//      top-k, then top-p on the renormalized top-k distribution, then one uniform draw from
//      the Philox stream at (seed; position, choice) by inverse CDF over the kept tokens.
// Logprobs are the log-softmax of the raw logits, before any of the above.

import { type SampleKey, uniformFor } from './philox.js';

export interface SamplingParams {
  /** 0 means greedy. */
  temperature: number;
  /** Keep the k most likely tokens; 0 keeps all. */
  topK: number;
  /** Keep the smallest set of most likely tokens whose probability reaches top_p; 1 keeps all. */
  topP: number;
  /** > 1 discourages tokens already generated (1 is off). */
  repetitionPenalty: number;
  /** Subtracted once from the logit of every token already generated. */
  presencePenalty: number;
  /** Subtracted from a token's logit once per time it was generated. */
  frequencyPenalty: number;
  /** Token ids that end generation when sampled (the eos id unless ignored, plus the request's). */
  stopTokenIds: readonly number[];
  /** The stop token ids are masked out until this many tokens were generated. */
  minTokens: number;
  /** Seed of the request's random stream (a non-negative safe integer). */
  seed: number;
  /** Logprobs to report: absent for none; N >= 0 for the chosen token's and the N most likely. */
  logprobs?: number;
}

/** The most alternatives a request may ask logprobs for (OpenAI's limit). */
export const MAX_LOGPROBS = 20;

/** Greedy decoding with nothing else switched on. */
export const GREEDY: SamplingParams = {
  temperature: 0,
  topK: 0,
  topP: 1,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  stopTokenIds: [],
  minTokens: 0,
  seed: 0,
};

/** What the penalties and min_tokens need of the tokens a sequence generated so far. */
export interface GeneratedHistory {
  /** How many tokens it generated. */
  count: number;
  /** Their ids in order; may be empty when no penalty is set (min_tokens needs the count only). */
  ids: readonly number[];
}

/** Whether `params` penalize generated tokens, so a sampler needs their ids, not only their count. */
export function penalizes(p: SamplingParams): boolean {
  return p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
}

export interface TokenLogprob {
  id: number;
  logprob: number;
}

export interface SampledToken {
  id: number;
  /** log-softmax of the raw logits at `id` (when logprobs were asked for). */
  logprob?: number;
  /** The most likely tokens by raw logits, most likely first (when logprobs were asked for). */
  topLogprobs?: TokenLogprob[];
}

/** Throws a RangeError naming the request field that is out of range. */
export function validateSampling(p: SamplingParams): void {
  const finite = (v: number) => typeof v === 'number' && Number.isFinite(v);
  if (!finite(p.temperature) || p.temperature < 0)
    throw new RangeError(`temperature must be a finite number >= 0, got ${p.temperature}`);
  if (!Number.isInteger(p.topK) || p.topK < 0)
    throw new RangeError(`top_k must be an integer >= 0, got ${p.topK}`);
  if (!(p.topP > 0 && p.topP <= 1)) throw new RangeError(`top_p must be in (0, 1], got ${p.topP}`);
  if (!finite(p.repetitionPenalty) || p.repetitionPenalty <= 0)
    throw new RangeError(`repetition_penalty must be a finite number > 0, got ${p.repetitionPenalty}`);
  for (const [name, v] of [
    ['presence_penalty', p.presencePenalty],
    ['frequency_penalty', p.frequencyPenalty],
  ] as const) {
    if (!finite(v) || v < -2 || v > 2) throw new RangeError(`${name} must be in [-2, 2], got ${v}`);
  }
  if (!Number.isInteger(p.minTokens) || p.minTokens < 0)
    throw new RangeError(`min_tokens must be an integer >= 0, got ${p.minTokens}`);
  if (!Number.isSafeInteger(p.seed) || p.seed < 0)
    throw new RangeError(`seed must be an integer in [0, 2^53), got ${p.seed}`);
  if (
    p.logprobs !== undefined &&
    (!Number.isInteger(p.logprobs) || p.logprobs < 0 || p.logprobs > MAX_LOGPROBS)
  )
    throw new RangeError(`logprobs must be an integer in [0, ${MAX_LOGPROBS}], got ${p.logprobs}`);
  for (const id of p.stopTokenIds) {
    if (!Number.isInteger(id) || id < 0) throw new RangeError(`stop_token_ids must be token ids, got ${id}`);
  }
}

/** Index of the largest value, the first on ties. */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Picks the next token. See the header for what each parameter does and in which order. */
export function sample(
  logits: Float32Array,
  params: SamplingParams,
  generated: GeneratedHistory,
  key: SampleKey,
): SampledToken {
  return sampleWithUniform(logits, params, generated, params.temperature === 0 ? 0 : uniformFor(key));
}

/**
 * sample() given its draw `u` in [0, 1) instead of the key it is made from (unused at temperature
 * 0). Device.sample takes the draw the same way, so a device can be checked against this at any
 * draw, the edges 0 and 1 - 2^-53 included (sampler-parity.ts).
 */
export function sampleWithUniform(
  logits: Float32Array,
  params: SamplingParams,
  generated: GeneratedHistory,
  u: number,
): SampledToken {
  const scores = adjustedScores(logits, params, generated);
  const id = params.temperature === 0 ? argmax(scores) : draw(scores, params, u);
  return params.logprobs === undefined ? { id } : { id, ...logprobsOf(logits, id, params.logprobs) };
}

type Scores = Float32Array | Float64Array;

/** The logits after penalties and the min_tokens mask (steps 1 and 2); the row itself when neither applies. */
export function adjustedScores(logits: Float32Array, p: SamplingParams, generated: GeneratedHistory): Scores {
  const penalize = generated.count > 0 && penalizes(p);
  const mask = generated.count < p.minTokens && p.stopTokenIds.length > 0;
  if (!penalize && !mask) return logits;
  if (penalize && generated.ids.length !== generated.count) {
    throw new RangeError(
      `penalties need every generated id: ${generated.ids.length} given for ${generated.count}`,
    );
  }
  const scores = Float64Array.from(logits);
  if (penalize) {
    const counts = new Map<number, number>();
    for (const id of generated.ids) counts.set(id, (counts.get(id) ?? 0) + 1);
    for (const [id, count] of counts) {
      if (id >= scores.length) continue;
      let s = scores[id];
      s = s > 0 ? s / p.repetitionPenalty : s * p.repetitionPenalty;
      scores[id] = s - p.frequencyPenalty * count - p.presencePenalty;
    }
  }
  if (mask) for (const id of p.stopTokenIds) if (id < scores.length) scores[id] = Number.NEGATIVE_INFINITY;
  return scores;
}

/** Ids of the k largest values, largest first, lower id first on ties. */
export function topIndices(values: ArrayLike<number>, k: number): number[] {
  const n = Math.min(k, values.length);
  if (n <= 0) return [];
  if (n > 64) {
    const ids = Array.from({ length: values.length }, (_, i) => i);
    ids.sort((a, b) => values[b] - values[a] || a - b);
    return ids.slice(0, n);
  }
  // Insertion into a short sorted list: most values fail the comparison with its last entry.
  const ids: number[] = [];
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (ids.length === n && !(v > values[ids[n - 1]])) continue;
    let at = ids.length === n ? n - 1 : ids.length;
    while (at > 0 && v > values[ids[at - 1]]) at--;
    if (ids.length === n) ids.pop();
    ids.splice(at, 0, i);
  }
  return ids;
}

/** Sorts ids by value, largest first, lower id first on ties. */
function sortByValue(ids: number[], values: Scores): number[] {
  return ids.sort((a, b) => values[b] - values[a] || a - b);
}

/**
 * Ids holding at least `needed` of the weight, most likely first: the top-p nucleus. Sorting
 * the whole vocabulary for every draw costs milliseconds, so tokens are first bucketed by
 * powers of two below the most likely one, and only the buckets that reach `needed` (plus one
 * for rounding) are sorted; should their sorted prefix still fall short, everything is sorted.
 */
function nucleusOfAll(
  scores: Scores,
  weights: Float64Array,
  max: number,
  temperature: number,
  needed: number,
) {
  const octave = (i: number) => Math.floor(((max - scores[i]) / temperature) * Math.LOG2E);
  const buckets = new Float64Array(64);
  for (let i = 0; i < scores.length; i++) if (weights[i] > 0) buckets[Math.min(63, octave(i))] += weights[i];
  let last = 0;
  for (let mass = buckets[0]; mass < needed && last < 63; ) mass += buckets[++last];
  const candidates: number[] = [];
  for (let i = 0; i < scores.length; i++) if (octave(i) <= last + 1) candidates.push(i);
  return (
    nucleus(sortByValue(candidates, scores), weights, needed) ??
    nucleus(
      sortByValue(
        Array.from({ length: scores.length }, (_, i) => i),
        scores,
      ),
      weights,
      needed,
    )
  );
}

/** The shortest prefix of `ids` (most likely first) whose weight reaches `needed`. */
function nucleus(ids: number[], weights: Float64Array, needed: number): number[] | undefined {
  let mass = 0;
  for (let i = 0; i < ids.length; i++) {
    mass += weights[ids[i]];
    if (mass >= needed) return ids.slice(0, i + 1);
  }
  return undefined;
}

/** One draw (uniform `u`) from softmax(scores / temperature) after top-k and top-p. */
function draw(scores: Scores, p: SamplingParams, u: number): number {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < scores.length; i++) if (scores[i] > max) max = scores[i];
  const weights = new Float64Array(scores.length);
  for (let i = 0; i < scores.length; i++) weights[i] = Math.exp((scores[i] - max) / p.temperature);
  // The candidates in the order the draw walks them: every id in id order when nothing is cut,
  // else the kept ids, most likely first.
  let ids = p.topK > 0 && p.topK < scores.length ? topIndices(scores, p.topK) : undefined;
  if (p.topP < 1) {
    let total = 0;
    if (ids) for (const id of ids) total += weights[id];
    else for (let i = 0; i < scores.length; i++) total += weights[i];
    const needed = p.topP * total;
    ids = (ids
      ? nucleus(ids, weights, needed)
      : nucleusOfAll(scores, weights, max, p.temperature, needed)) ?? [argmax(scores)];
  }
  let total = 0;
  const count = ids ? ids.length : scores.length;
  for (let j = 0; j < count; j++) total += weights[ids ? ids[j] : j];
  let target = u * total;
  for (let j = 0; j < count; j++) {
    const id = ids ? ids[j] : j;
    target -= weights[id];
    if (target < 0) return id;
  }
  return ids ? ids[ids.length - 1] : argmax(scores);
}

/** log of the softmax's normalizer: logprob(id) = logits[id] - logPartition(logits). */
function logPartition(logits: Float32Array): number {
  const max = logits[argmax(logits)];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

/** The log-softmax of the raw logits at `id`: how likely the model found a given token. */
export function tokenLogprob(logits: Float32Array, id: number): number {
  return logits[id] - logPartition(logits);
}

/** The chosen token's log-softmax and the `top` most likely, from the raw logits. */
function logprobsOf(logits: Float32Array, id: number, top: number): Required<Omit<SampledToken, 'id'>> {
  const logZ = logPartition(logits);
  return {
    logprob: logits[id] - logZ,
    topLogprobs: topIndices(logits, top).map((t) => ({ id: t, logprob: logits[t] - logZ })),
  };
}
