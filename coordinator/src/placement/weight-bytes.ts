// Bytes of weights each tensor-parallel rank holds, from tensor shapes (AWQ GEMM int4 layout).
import { type CheckpointShape, PROJ_NAMES, projShape, vocabShard } from '@medcluster/worker';

const FP16_BYTES = 2;

/** qweight (K x N int4) + qzeros (K/G x N int4) + scales (K/G x N fp16) of a K x N linear. */
export function awqLinearBytes(inFeatures: number, outFeatures: number, groupSize: number): number {
  const groups = inFeatures / groupSize;
  return (inFeatures * outFeatures) / 2 + (groups * outFeatures) / 2 + groups * outFeatures * FP16_BYTES;
}

/** One decoder block's weights on one of tp ranks: its share of the 7 linears plus both RMSNorms. */
export function layerBytesPerRank(config: CheckpointShape, tp: number): number {
  let bytes = 2 * config.hiddenSize * FP16_BYTES; // input_layernorm, post_attention_layernorm: replicated
  for (const proj of PROJ_NAMES) {
    const { inFeatures, outFeatures, split } = projShape(config, proj);
    bytes +=
      split === 'column'
        ? awqLinearBytes(inFeatures, outFeatures / tp, config.quant.groupSize)
        : awqLinearBytes(inFeatures / tp, outFeatures, config.quant.groupSize);
  }
  return bytes;
}

/** fp16 embed_tokens rows of rank (first stage). */
export function embedBytesForRank(config: CheckpointShape, tp: number, rank: number): number {
  const { start, end } = vocabShard(config.vocabRows, tp, rank);
  return (end - start) * config.hiddenSize * FP16_BYTES;
}

/** fp16 lm_head rows of rank plus the final norm (last stage). */
export function lmHeadBytesForRank(config: CheckpointShape, tp: number, rank: number): number {
  const { start, end } = vocabShard(config.vocabRows, tp, rank);
  return (end - start) * config.hiddenSize * FP16_BYTES + config.hiddenSize * FP16_BYTES;
}
