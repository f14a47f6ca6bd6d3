// What the rest of the system knows about a checkpoint: the model config and where
// each tensor's bytes live. Produced by openCheckpoint() after validating every header.

/** Llama architecture fields, read from config.json (and the AWQ config). */
export interface LlamaConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Rows of model.embed_tokens.weight (the usable vocabulary), never config's vocab_size. */
  vocabRows: number;
  ropeTheta: number;
  rmsNormEps: number;
  maxPositions: number;
  bosTokenId: number;
  eosTokenId: number;
  quant: AwqConfig;
}

export interface AwqConfig {
  bits: 4;
  groupSize: number;
  zeroPoint: boolean;
  version: 'gemm';
}

export type SafetensorsDType = 'F16' | 'F32' | 'I32' | 'BF16';

/** One tensor: its file and absolute byte range there (header already validated). */
export interface TensorEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Absolute path of the safetensors file. */
  file: string;
  /** Absolute byte offset of the first element in the file. */
  offset: number;
  byteLength: number;
}

export interface Checkpoint {
  dir: string;
  config: LlamaConfig;
  tensors: ReadonlyMap<string, TensorEntry>;
  /** The entry for name; throws CheckpointError naming the tensor and the checkpoint if missing. */
  tensor(name: string): TensorEntry;
}
