// The contract between whoever schedules steps (the coordinator, or the single-process
// generate command) and the code that runs one shard of the model.

import type { DeviceCollective, Tensor } from '@medcluster/kernels';
import type { SampleKey } from '../sampling/philox.js';
import type { GeneratedHistory, SampledToken, SamplingParams } from '../sampling/sampler.js';

/** Which part of the model a worker holds: defined once, with the assignment that carries it. */
export type { ShardSpec } from '@medcluster/proto';

/** One sequence's part of a step. Positions startPos .. startPos+numTokens-1 are computed. */
export interface SeqStep {
  seqId: string;
  /** The request the sequence belongs to, for log lines (every stage and rank logs it). */
  requestId?: string;
  startPos: number;
  numTokens: number;
  /** Token ids of the new positions (needed by the first stage only). */
  tokens?: number[];
  /**
   * The one new position's token (numTokens 1, no `tokens`) is the one this sequence's previous
   * step sampled, which the runner still holds on the device: the scheduler sends the step
   * before that token reaches the host. Only on a runner that embeds and samples (one stage),
   * in the step right after the one that sampled the token. Where that step failed, the
   * position runs on token 0: the failure failed the sequence's request, so no one reads it.
   */
  sampledInput?: boolean;
  /** KV cache block ids holding positions 0 .. startPos+numTokens-1, in order. */
  blockTable: number[];
  /**
   * How many of the step's last positions the last stage computes logits for: 0 (a chunk inside
   * the prompt), 1 (the last position: the next token), or numTokens (every position: prompt
   * logprobs).
   */
  logitRows: number;
  /**
   * Sample the next token on the last stage from the last position's logits (needs logitRows
   * >= 1). The step then returns the token instead of its logit row; logit rows still come back
   * when more than that one row was asked for.
   */
  sample?: SampleSpec;
}

/** How the last stage samples a sequence's next token: the serving core's sampler, keyed. */
export interface SampleSpec {
  params: SamplingParams;
  key: SampleKey;
  generated: GeneratedHistory;
}

/** What a step gives back to whoever scheduled it. */
export interface StepOutput {
  /**
   * Logit rows (vocabRows floats each) of the sequences that return logits (no `sample`, or
   * logitRows > 1), their logitRows rows each, sequence after sequence in step order.
   */
  logits: Float32Array;
  /** The token sampled for each sequence with `sample`, in step order. */
  sampled: SampledToken[];
}

/** The previous stage's hidden states [T, hidden] f32: host floats, or the leading T rows of a
 * device tensor (another process's shared buffer, mapped). */
export type StageInput = Float32Array | { tensor: Tensor; rows: number };

/** Whether a sequence's logit rows come back from the step (see SeqStep.sample). */
export function returnsLogits(s: SeqStep): boolean {
  return s.logitRows > 0 && (!s.sample || s.logitRows > 1);
}

/** How a stage's tensor-parallel ranks exchange tensors: through the hosts over gRPC, CUDA IPC
 * (ranks of one host, also ranks sharing one GPU), or NCCL (ranks of several hosts). */
export type CollectiveTransport = 'grpc' | 'ipc' | 'nccl';

/**
 * Tensor-parallel collective among the ranks of one pipeline stage, on device tensors. Every
 * rank must make the same calls in the same order with the same shapes. Sums are taken in rank
 * order 0..n-1, rounding to fp32 after each addition, so every rank gets identical bits, and
 * every transport the same bits.
 *
 * The device transports (ipc, nccl) queue the op on the tensor's device stream and resolve at
 * once; a failure (a peer that does not arrive, ranks that disagree) rejects the device's next
 * read or sync, naming the peer. Their `device` group's calls are synchronous, so a CUDA graph
 * can capture them. The host transport (grpc) reads the tensor, exchanges it over gRPC and
 * writes the result back before it resolves.
 */
export interface Collective {
  readonly rank: number;
  readonly size: number;
  readonly transport: CollectiveTransport;
  /** In place: x f32 [R, C] becomes the element-wise sum over the ranks' x. */
  allReduceSum(x: Tensor): Promise<void>;
  /** x f32 [R, widths[rank]] -> f32 [R, sum widths] on x's device, rank q's columns after those
   * of ranks < q. `widths` (one per rank, the same on every rank) may be uneven. */
  allGatherCols(x: Tensor, widths: readonly number[]): Promise<Tensor>;
  /** The device group behind a device transport (absent for grpc). */
  readonly device?: DeviceCollective;
  /** float32 payload bytes this rank has sent through gRPC for collective calls since the group
   * opened, the group's set-up exchange not counted: zero on the device transports. */
  readonly grpcBytes: number;
  /** Leaves the group; pending and later calls on any rank fail. */
  close(): Promise<void>;
}
