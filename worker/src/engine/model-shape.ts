// The model fields that decide how tensor parallelism splits the block linears (a subset of
// the checkpoint's LlamaConfig, so the placement planner can use them without a checkpoint).
export interface TpModelConfig {
  numLayers: number;
  hiddenSize: number;
  intermediateSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Rows of embed_tokens / lm_head. */
  vocabRows: number;
  quant: { groupSize: number };
}

/** AWQ packs 8 int4 values into each int32. */
export const PACK_FACTOR = 8;

/** The seven quantized linears of a decoder block. */
export type ProjName = 'q_proj' | 'k_proj' | 'v_proj' | 'o_proj' | 'gate_proj' | 'up_proj' | 'down_proj';

export const PROJ_NAMES: readonly ProjName[] = [
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
];

/** Column-parallel linears split their output dim; row-parallel ones their input dim. */
export type SplitKind = 'column' | 'row';

export interface ProjShape {
  /** K: input features. */
  inFeatures: number;
  /** N: output features. */
  outFeatures: number;
  split: SplitKind;
}

/** Full (unsplit) shape of a block linear and how tensor parallelism splits it. */
export function projShape(config: TpModelConfig, proj: ProjName): ProjShape {
  const h = config.hiddenSize;
  const q = config.numHeads * config.headDim;
  const kv = config.numKvHeads * config.headDim;
  const i = config.intermediateSize;
  switch (proj) {
    case 'q_proj':
      return { inFeatures: h, outFeatures: q, split: 'column' };
    case 'k_proj':
    case 'v_proj':
      return { inFeatures: h, outFeatures: kv, split: 'column' };
    case 'o_proj':
      return { inFeatures: q, outFeatures: h, split: 'row' };
    case 'gate_proj':
    case 'up_proj':
      return { inFeatures: h, outFeatures: i, split: 'column' };
    case 'down_proj':
      return { inFeatures: i, outFeatures: h, split: 'row' };
  }
}
