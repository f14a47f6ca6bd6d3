// What the scheduler needs from whatever runs the model: one step at a time, several
// in flight when the model is pipelined. Implementations: in-process (one shard holding
// the whole model) and the cluster's pipeline of remote stages.

import type { SeqStep, StepOutput } from '@medcluster/worker';

export interface StepExecutor {
  /** Columns of a logits row. */
  readonly vocabRows: number;
  /** Steps the executor can overlap (pipeline depth); 1 for a single stage. */
  readonly maxInFlight: number;
  /**
   * Whether a step may feed a sequence the token its previous step sampled before that token
   * reaches the host (SeqStep.sampledInput). The scheduler then sends a decoding sequence's next
   * step while the one before it still runs, so the device never waits for the host between
   * them.
   */
  readonly sampledInputs?: boolean;
  /**
   * Runs one step. Resolves with the tokens sampled for the sequences that asked (`sample`)
   * and the logit rows of those that return them (see SeqStep, StepOutput).
   */
  execute(seqs: SeqStep[]): Promise<StepOutput>;
  close(): Promise<void>;
}

/**
 * The executor lost part of its pipeline (a worker died or cannot be reached): the step did not
 * run, and the KV cache of every running sequence may be gone with the worker. Other failures of
 * a step are plain errors: they concern that step only.
 */
export class ExecutorUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ExecutorUnavailableError';
  }
}
