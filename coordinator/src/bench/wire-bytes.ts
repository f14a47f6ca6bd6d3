// Bytes one decode step puts on gRPC, counted by serializing the messages the cluster sends: the
// step to stage 0, the hidden states between stages, what the last stage sends back, and the
// tensor-parallel all-reduces on the host transport. "Before" is what the last stage returned
// until sampling moved there (a float32 logit row per sequence).

import { loadWorkerProto, type workerV1 } from '@medcluster/proto';
import { encodeSampled, encodeSeqStep, GREEDY, type LlamaConfig, type SeqStep } from '@medcluster/worker';

export interface WireRow {
  batch: number;
  /** Coordinator to every tp rank of stage 0: the step descriptor. */
  stepBytes: number;
  /** Stage s to stage s+1, per boundary and rank: descriptor plus hidden states as bytes. */
  handOffBytes: number;
  /** The same on the device (a shared buffer's handle instead of the hidden states). */
  sharedHandOffBytes: number;
  /** Last stage's rank 0 back up the chain: sampled token ids now. */
  resultBytes: number;
  /** The same answer as a float32 logit row per sequence (before sampling moved to the last stage). */
  resultBytesBefore: number;
  /** One rank's tensor-parallel all-reduces through gRPC per step (2 per layer, sent and received). */
  hostCollectiveBytesPerRank: number;
}

export function wireBytes(
  config: LlamaConfig,
  batch: number,
  contextTokens: number,
  layersPerStage: number,
  tp: number,
): WireRow {
  const { Stage } = loadWorkerProto().medcluster.worker.v1.Worker.service;
  const blocks = Math.ceil(contextTokens / 16);
  const seqs: SeqStep[] = Array.from({ length: batch }, (_, i) => ({
    seqId: `s${i}`,
    requestId: `cmpl-${i.toString(16).padStart(24, '0')}`,
    startPos: contextTokens - 1,
    numTokens: 1,
    tokens: [1000 + i],
    blockTable: Array.from({ length: blocks }, (_, b) => i * blocks + b),
    logitRows: 1,
    sample: {
      params: { ...GREEDY, stopTokenIds: [config.eosTokenId] },
      key: { seed: 1234567 + i, choice: 0, position: contextTokens },
      generated: { count: 100, ids: [] },
    },
  }));
  const step: workerV1.StageMessage = { step: { stepId: 123456, seqs: seqs.map(encodeSeqStep) } };
  const hidden = Buffer.alloc(batch * config.hiddenSize * 4);
  const handOff: workerV1.StageMessage = {
    ...step,
    activation: { dtype: 'DTYPE_FLOAT32', shape: [batch, config.hiddenSize], data: hidden },
  };
  const shared: workerV1.StageMessage = {
    ...step,
    // A CUDA IPC handle with its header (kernels/native/cuda/cuda_backend.cu SharedHandle): 88 bytes.
    sharedActivation: {
      handle: Buffer.alloc(88),
      dtype: 'DTYPE_FLOAT32',
      shape: [64, config.hiddenSize],
      rows: batch,
    },
  };
  const now: workerV1.StageResult = {
    stepId: 123456,
    output: { seqs: seqs.map((s, i) => ({ seqId: s.seqId, sampled: encodeSampled({ id: 29000 + i }) })) },
    computeMs: 12.5,
  };
  const before: workerV1.StageResult = {
    stepId: 123456,
    output: { seqs: seqs.map((s) => ({ seqId: s.seqId, logits: Buffer.alloc(config.vocabRows * 4) })) },
    computeMs: 12.5,
  };
  const size = (b: Buffer) => b.length + 5; // + gRPC's length-prefixed frame header
  return {
    batch,
    stepBytes: size(Stage.requestSerialize(step)),
    handOffBytes: size(Stage.requestSerialize(handOff)),
    sharedHandOffBytes: size(Stage.requestSerialize(shared)),
    resultBytes: size(Stage.responseSerialize(now)),
    resultBytesBefore: size(Stage.responseSerialize(before)),
    hostCollectiveBytesPerRank: tp > 1 ? layersPerStage * 2 * 2 * batch * config.hiddenSize * 4 : 0,
  };
}
