// The end of a step on whatever holds its logits (the last stage's rank 0, or the process that
// runs the whole model): samples the sequences that asked for it and keeps the logit rows of
// those that return them.

import { returnsLogits, type SeqStep, type StepOutput } from '../engine/types.js';
import { isPlainArgmax, sample } from './sampler.js';

/** `logits`: every sequence's logitRows rows, sequence after sequence (the runner's output). */
export function finishStep(seqs: readonly SeqStep[], logits: Float32Array, vocab: number): StepOutput {
  const kept = seqs.filter(returnsLogits).reduce((n, s) => n + s.logitRows, 0);
  const out = new Float32Array(kept * vocab);
  const sampled: StepOutput['sampled'] = [];
  let row = 0;
  let at = 0;
  for (const s of seqs) {
    const rows = logits.subarray(row * vocab, (row + s.logitRows) * vocab);
    row += s.logitRows;
    if (returnsLogits(s)) {
      out.set(rows, at);
      at += rows.length;
    }
    if (s.sample) {
      if (s.logitRows < 1)
        throw new RangeError(`sequence ${s.seqId}: sampling needs its last position's logits`);
      const last = rows.subarray((s.logitRows - 1) * vocab);
      sampled.push(sample(last, s.sample.params, s.sample.generated, s.sample.key));
    }
  }
  if (row * vocab !== logits.length) {
    throw new RangeError(
      `the step computed ${logits.length / vocab} logit rows, its sequences asked for ${row}`,
    );
  }
  return { logits: out, sampled };
}

/**
 * Whether every row of the step that needs logits is a plain argmax sample (see isPlainArgmax):
 * the runner then reduces the logits on the device and hands back one id per row.
 */
export function onlyArgmax(seqs: readonly SeqStep[]): boolean {
  let rows = 0;
  for (const s of seqs) {
    if (s.logitRows === 0) continue;
    if (s.logitRows !== 1 || !s.sample || !isPlainArgmax(s.sample.params, s.sample.generated)) return false;
    rows++;
  }
  return rows > 0;
}

/** The end of a step whose rows were all argmax samples: `ids` holds one id per logit row. */
export function finishArgmaxStep(seqs: readonly SeqStep[], ids: Int32Array): StepOutput {
  const sampled: StepOutput['sampled'] = [];
  for (const s of seqs) if (s.sample) sampled.push({ id: ids[sampled.length] });
  if (sampled.length !== ids.length) {
    throw new RangeError(
      `the step reduced ${ids.length} logit rows, its sequences sampled ${sampled.length}`,
    );
  }
  return { logits: new Float32Array(0), sampled };
}

/** The end of a step from what the runner gave: argmax ids, or logit rows. */
export function finishRunnerStep(
  seqs: readonly SeqStep[],
  result: { logits?: Float32Array; argmax?: Int32Array },
  vocab: number,
): StepOutput {
  if (result.argmax) return finishArgmaxStep(seqs, result.argmax);
  return finishStep(seqs, result.logits ?? new Float32Array(0), vocab);
}
