// Runs steps on the cluster: each step goes to every tensor-parallel rank of the first stage
// over its Stage stream; stages pass hidden states down and results come back up the same
// path. Rank 0's result carries the sampled tokens and logits; every rank's result is checked
// for errors. A broken stream or an unreachable stage is an ExecutorUnavailableError.
// Up to `pp` steps are in flight at once, so every stage has work.

import type * as grpc from '@grpc/grpc-js';
import type { workerV1 } from '@medcluster/proto';
import {
  decodeLogits,
  decodeSampled,
  encodeSeqStep,
  returnsLogits,
  type SeqStep,
  STEP_ERROR,
  StageLink,
  type StepOutput,
} from '@medcluster/worker';
import { ExecutorUnavailableError, type StepExecutor } from '../scheduler/executor.js';

export class StepFailedError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StepFailedError';
  }
}

export class PipelineExecutor implements StepExecutor {
  private nextStepId = 1;

  private constructor(
    private readonly links: StageLink[],
    readonly vocabRows: number,
    readonly maxInFlight: number,
  ) {}

  /** Connects to the first stage's ranks (addresses by tp rank); `credentials`: the internal
   * mutual TLS (default plaintext). */
  static async connect(
    firstStage: readonly string[],
    vocabRows: number,
    pipelineDepth: number,
    credentials?: grpc.ChannelCredentials,
  ): Promise<PipelineExecutor> {
    const links = await Promise.all(
      firstStage.map((address) => StageLink.connect(address, undefined, credentials)),
    );
    return new PipelineExecutor(links, vocabRows, Math.max(1, pipelineDepth));
  }

  async execute(seqs: SeqStep[]): Promise<StepOutput> {
    const stepId = this.nextStepId++;
    const message: workerV1.StageMessage = { step: { stepId, seqs: seqs.map(encodeSeqStep) } };
    let results: workerV1.StageResult__Output[];
    try {
      results = await Promise.all(this.links.map((link) => link.send(message)));
    } catch (err) {
      throw new ExecutorUnavailableError(`step ${stepId}: ${(err as Error).message}`, { cause: err });
    }
    for (const [rank, result] of results.entries()) {
      if (!result.error) continue;
      const why = `step ${stepId} failed on the pipeline of rank ${rank}: ${result.error.message}`;
      if (result.error.code === STEP_ERROR.unreachable) throw new ExecutorUnavailableError(why);
      throw new StepFailedError(why);
    }
    const wanted = seqs.filter((s) => s.logitRows > 0);
    const outputs = results[0].output?.seqs ?? [];
    if (outputs.length !== wanted.length) {
      throw new StepFailedError(
        `step ${stepId}: outputs of ${outputs.length} sequences for ${wanted.length}`,
      );
    }
    const logits = new Float32Array(
      seqs.filter(returnsLogits).reduce((n, s) => n + s.logitRows, 0) * this.vocabRows,
    );
    const sampled: StepOutput['sampled'] = [];
    let offset = 0;
    outputs.forEach((out, i) => {
      const seq = wanted[i];
      if (out.seqId !== seq.seqId)
        throw new StepFailedError(`step ${stepId}: output for ${out.seqId}, expected ${seq.seqId}`);
      if (returnsLogits(seq)) {
        const rows = decodeLogits(out.logits);
        if (rows.length !== seq.logitRows * this.vocabRows) {
          throw new StepFailedError(
            `step ${stepId}: ${rows.length} logits for ${seq.seqId}, expected ${seq.logitRows} x ${this.vocabRows}`,
          );
        }
        logits.set(rows, offset);
        offset += rows.length;
      }
      if (seq.sample) {
        if (!out.sampled) throw new StepFailedError(`step ${stepId}: no sampled token for ${seq.seqId}`);
        sampled.push(decodeSampled(out.sampled));
      }
    });
    return { logits, sampled };
  }

  async close(): Promise<void> {
    for (const link of this.links) link.close();
  }
}
