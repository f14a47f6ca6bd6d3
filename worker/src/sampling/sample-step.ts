// The end of a step on the host, from its logits: the JS reference of finishOnDevice
// (device-sample.ts), with the sampler itself (sampler.ts). Executors that script a worker's
// answers (the scheduler's and the APIs' tests) end their steps with it; workers sample on their
// device.

import { returnsLogits, type SeqStep, type StepOutput } from '../engine/types.js';
import { sample } from './sampler.js';

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
