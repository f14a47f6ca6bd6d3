// The contract between whoever schedules steps (the coordinator, or the single-process
// generate command) and the code that runs one shard of the model.

/** Which part of the model a worker holds. Layers [layerStart, layerEnd). */
export interface ShardSpec {
  layerStart: number;
  layerEnd: number;
  tpRank: number;
  tpSize: number;
  /** First pipeline stage: embeds token ids. */
  embeds: boolean;
  /** Last pipeline stage: applies the final norm and lm_head. */
  computesLogits: boolean;
}

/** One sequence's part of a step. Positions startPos .. startPos+numTokens-1 are computed. */
export interface SeqStep {
  seqId: string;
  /** The request the sequence belongs to, for log lines (every stage and rank logs it). */
  requestId?: string;
  startPos: number;
  numTokens: number;
  /** Token ids of the new positions (needed by the first stage only). */
  tokens?: number[];
  /** KV cache block ids holding positions 0 .. startPos+numTokens-1, in order. */
  blockTable: number[];
  /**
   * How many of the step's last positions want logits: 0 (a chunk inside the prompt), 1 (the
   * last position: the next token), or numTokens (every position: prompt logprobs).
   */
  logitRows: number;
}

/** Tensor-parallel collective among the ranks of one pipeline stage. */
export interface Collective {
  readonly rank: number;
  readonly size: number;
  /** Element-wise fp32 sum across ranks, summed in rank order so every rank gets identical bits. */
  allReduceSum(data: Float32Array): Promise<Float32Array>;
  /** Every rank's buffer, indexed by rank. */
  allGather(data: Float32Array): Promise<Float32Array[]>;
}
