// Runs steps on the cluster: each step goes to every tensor-parallel rank of the first stage
// over its Stage stream; stages pass hidden states down and results come back up the same
// path. Rank 0's result carries the sampled tokens and logits; every rank's result is checked
// for errors. A broken stream, an unreachable stage, or a step past its deadline (a stage that
// hangs) is an ExecutorUnavailableError. Up to `pp` steps are in flight at once, so every stage
// has work; with one stage, a follow-on step (SeqStep.sampledInput) may be sent beside the one
// it follows. Each step names the collective group the cluster placed each stage in, so that a rank
// of a stage that re-formed refuses a step sent before it did.

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

export interface PipelineExecutorOptions {
  /** A step without its result this long after it was sent fails as unavailable (default 60 s). */
  stepTimeoutMs?: number;
  /** Each stage's collective group (index = stage), sent with every step; see setStageGroups. */
  stageGroups?: readonly string[];
  /** The internal mutual TLS (default plaintext). */
  credentials?: grpc.ChannelCredentials;
}

/** Default step deadline: far above any step's compute, so only a stage that hangs reaches it. */
export const DEFAULT_STEP_TIMEOUT_MS = 60_000;

export class PipelineExecutor implements StepExecutor {
  private nextStepId = 1;
  private stageGroups: string[];
  readonly stepTimeoutMs: number;
  /** One stage embeds and samples: its ranks feed a step the tokens the step before sampled. */
  readonly sampledInputs: boolean;

  private constructor(
    private readonly links: StageLink[],
    readonly vocabRows: number,
    readonly maxInFlight: number,
    options: PipelineExecutorOptions,
  ) {
    this.stepTimeoutMs = options.stepTimeoutMs ?? DEFAULT_STEP_TIMEOUT_MS;
    this.sampledInputs = maxInFlight === 1;
    this.stageGroups = [...(options.stageGroups ?? [])];
  }

  /** Connects to the first stage's ranks (addresses by tp rank). */
  static async connect(
    firstStage: readonly string[],
    vocabRows: number,
    pipelineDepth: number,
    options: PipelineExecutorOptions = {},
  ): Promise<PipelineExecutor> {
    const links = await Promise.all(
      firstStage.map((address) => StageLink.connect(address, undefined, options.credentials)),
    );
    return new PipelineExecutor(links, vocabRows, Math.max(1, pipelineDepth), options);
  }

  /** The groups the stages were re-formed in: later steps carry them. */
  setStageGroups(groups: readonly string[]): void {
    this.stageGroups = [...groups];
  }

  async execute(seqs: SeqStep[]): Promise<StepOutput> {
    const stepId = this.nextStepId++;
    const message: workerV1.StageMessage = {
      step: { stepId, seqs: seqs.map(encodeSeqStep), stageGroups: this.stageGroups },
    };
    const unavailable = (code: string) => code === STEP_ERROR.unreachable || code === STEP_ERROR.stale;
    const why = (rank: number, error: workerV1.StepError__Output) =>
      `step ${stepId} failed on the pipeline of rank ${rank}: ${error.message}`;
    let results: workerV1.StageResult__Output[];
    try {
      // A rank whose pipeline broke fails the step at once, without waiting for the other
      // ranks (one of them may be the rank that hangs).
      results = await Promise.all(
        this.links.map(async (link, rank) => {
          const result = await link.send(message, this.stepTimeoutMs);
          if (result.error && unavailable(result.error.code))
            throw new ExecutorUnavailableError(why(rank, result.error));
          return result;
        }),
      );
    } catch (err) {
      if (err instanceof ExecutorUnavailableError) throw err;
      throw new ExecutorUnavailableError(`step ${stepId}: ${(err as Error).message}`, { cause: err });
    }
    for (const [rank, result] of results.entries()) {
      if (result.error) throw new StepFailedError(why(rank, result.error));
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
