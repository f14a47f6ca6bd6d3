// The end of a step where its logits are (the last stage's device, or the process that runs the
// whole model): every sampled sequence's row goes through Device.sample, which applies the
// sampler's order of operations (sampler.ts) on the device, or on the CPU backend's threads;
// only the token ids, the logprobs asked for and the logit rows a sequence returns are read.

import type { Device, SampledRows, SampleRow, Tensor } from '@medcluster/kernels';
import { returnsLogits, type SampleSpec, type SeqStep, type StepOutput } from '../engine/types.js';
import { uniformFor } from './philox.js';
import { penalizes, type SampledToken } from './sampler.js';

/** The Device.sample row for a sequence's sample spec, reading logits row `row`. */
export function sampleRowOf(spec: SampleSpec, row: number): SampleRow {
  const { params: p, generated, key } = spec;
  const counts = new Map<number, number>();
  if (generated.count > 0 && penalizes(p)) {
    if (generated.ids.length !== generated.count) {
      throw new RangeError(
        `penalties need every generated id: ${generated.ids.length} given for ${generated.count}`,
      );
    }
    for (const id of generated.ids) counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return {
    row,
    temperature: p.temperature,
    topK: p.topK,
    topP: p.topP,
    repetitionPenalty: p.repetitionPenalty,
    presencePenalty: p.presencePenalty,
    frequencyPenalty: p.frequencyPenalty,
    penalizedIds: [...counts.keys()],
    penalizedCounts: [...counts.values()],
    maskedIds: generated.count < p.minTokens ? p.stopTokenIds : [],
    uniform: p.temperature === 0 ? 0 : uniformFor(key),
    logprobs: p.logprobs,
  };
}

/** Reads what Device.sample queued for `rows` back as the sampler's tokens. */
export async function readSampled(out: SampledRows, rows: readonly SampleRow[]): Promise<SampledToken[]> {
  const [ids, logprobs] = (await Promise.all([out.ids.read(), out.logprobs.read()])) as [
    Int32Array,
    Float32Array,
  ];
  const width = out.ids.shape[1];
  return rows.map((r, i) => {
    const at = i * width;
    if (r.logprobs === undefined) return { id: ids[at] };
    return {
      id: ids[at],
      logprob: logprobs[at],
      // A vocabulary smaller than the count asked for ends the list early (id -1).
      topLogprobs: Array.from({ length: r.logprobs }, (_, j) => ({
        id: ids[at + 1 + j],
        logprob: logprobs[at + 1 + j],
      })).filter((t) => t.id >= 0),
    };
  });
}

/** The token ids a step sampled, left on the device: row i of `ids` belongs to seqIds[i]. */
export interface DeviceSampled {
  ids: Tensor;
  seqIds: string[];
}

/**
 * The step's output from its logits f32 [R, vocab] on the device: each sequence's logitRows
 * rows, sequence after sequence (the runner's output), then any padding rows (a graph bucket's);
 * `undefined` where the step computed no logits. Disposes nothing it was given. `keep`, if given,
 * is called once the sampling and the reads are queued, with the sampled ids (undefined where
 * the step sampled nothing), which it then owns.
 */
export async function finishOnDevice(
  device: Device,
  logits: Tensor | undefined,
  seqs: readonly SeqStep[],
  keep?: (sampled: DeviceSampled | undefined) => void,
): Promise<StepOutput> {
  const rows: SampleRow[] = [];
  const kept: number[] = [];
  let row = 0;
  for (const s of seqs) {
    if (returnsLogits(s)) for (let j = 0; j < s.logitRows; j++) kept.push(row + j);
    if (s.sample) {
      if (s.logitRows < 1)
        throw new RangeError(`sequence ${s.seqId}: sampling needs its last position's logits`);
      rows.push(sampleRowOf(s.sample, row + s.logitRows - 1));
    }
    row += s.logitRows;
  }
  const computed = logits?.shape[0] ?? 0;
  if (row > computed) {
    throw new RangeError(`the step computed ${computed} logit rows, its sequences asked for ${row}`);
  }
  if (!logits) {
    keep?.(undefined);
    return { logits: new Float32Array(0), sampled: [] };
  }
  const owned: Tensor[] = [];
  try {
    const sampled = rows.length > 0 ? device.sample(logits, rows) : undefined;
    if (sampled) owned.push(sampled.logprobs);
    if (sampled && !keep) owned.push(sampled.ids);
    let keptRows: Tensor | undefined;
    if (kept.length === computed) keptRows = logits;
    else if (kept.length > 0) {
      const index = device.fromArray(Int32Array.from(kept), [kept.length], 'i32');
      owned.push(index);
      keptRows = device.gatherRows(logits, index);
      owned.push(keptRows);
    }
    const reads = Promise.all([
      sampled ? readSampled(sampled, rows) : [],
      keptRows ? (keptRows.read() as Promise<Float32Array>) : new Float32Array(0),
    ]);
    keep?.(sampled && { ids: sampled.ids, seqIds: seqs.filter((s) => s.sample).map((s) => s.seqId) });
    const [tokens, out] = await reads;
    return { logits: out, sampled: tokens };
  } finally {
    for (const t of owned) t.dispose();
  }
}
