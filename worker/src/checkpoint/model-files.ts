// The JSON files next to the weights, as a Meditron-70B-AWQ export has them. Key order is fixed and
// nothing time-dependent is written, so the same spec always gives the same bytes.

import type { ModelSpec } from './presets.js';

export const QUANT_CONFIG = { zero_point: true, q_group_size: 128, w_bit: 4, version: 'GEMM' } as const;

export function configJson(spec: ModelSpec): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    attention_bias: false,
    bos_token_id: spec.bosTokenId,
    eos_token_id: spec.eosTokenId,
    hidden_act: 'silu',
    hidden_size: spec.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: spec.intermediateSize,
    max_position_embeddings: spec.maxPositions,
    num_attention_heads: spec.numHeads,
    num_hidden_layers: spec.numLayers,
    num_key_value_heads: spec.numKvHeads,
    pretraining_tp: 1,
    rms_norm_eps: spec.rmsNormEps,
    rope_scaling: null,
    rope_theta: spec.ropeTheta,
    tie_word_embeddings: false,
    torch_dtype: 'float16',
    use_cache: true,
    // The tokenizer has more ids than this (32019); ids at or past the embedding rows are refused.
    vocab_size: spec.vocabRows,
    quantization_config: {
      quant_method: 'awq',
      bits: 4,
      group_size: spec.quant.groupSize,
      zero_point: true,
      version: 'gemm',
    },
  };
}

export function quantConfigJson(spec: ModelSpec): Record<string, unknown> {
  return { ...QUANT_CONFIG, q_group_size: spec.quant.groupSize };
}

export function generationConfigJson(spec: ModelSpec): Record<string, unknown> {
  return { bos_token_id: spec.bosTokenId, eos_token_id: spec.eosTokenId };
}

export function jsonText(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}
