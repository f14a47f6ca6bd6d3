// The tensors a Llama AWQ-GEMM checkpoint must hold, computed from its shape alone (MODEL.md).
// The reader validates against this list and the generator writes exactly this list: one source of truth.

import type { SafetensorsDType } from './types.js';

/**
 * The dimensions that decide every tensor's shape. A LlamaConfig is one, so the reader, the
 * generator, tensor parallelism and the placement planner all size tensors from this.
 */
export interface CheckpointShape {
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

export interface ExpectedTensor {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
}

/** One quantized linear layer: K input features, N output features. */
export interface LinearSpec {
  /** e.g. `model.layers.0.self_attn.q_proj` */
  prefix: string;
  k: number;
  n: number;
}

export const DTYPE_BYTES: Readonly<Record<SafetensorsDType, number>> = { F16: 2, BF16: 2, F32: 4, I32: 4 };

/** AWQ packs 8 int4 values into each int32. */
export const PACK_FACTOR = 8;

export const ATTENTION_PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const;
export const MLP_PROJECTIONS = ['gate_proj', 'up_proj', 'down_proj'] as const;

/** The seven quantized linears of a decoder block. */
export type ProjName = (typeof ATTENTION_PROJECTIONS)[number] | (typeof MLP_PROJECTIONS)[number];
export const PROJ_NAMES: readonly ProjName[] = [...ATTENTION_PROJECTIONS, ...MLP_PROJECTIONS];

/** K (input features) and N (output features) of a block linear. */
export function projFeatures(shape: CheckpointShape, proj: ProjName): { k: number; n: number } {
  const h = shape.hiddenSize;
  const q = shape.numHeads * shape.headDim;
  const kv = shape.numKvHeads * shape.headDim;
  const i = shape.intermediateSize;
  switch (proj) {
    case 'q_proj':
      return { k: h, n: q };
    case 'k_proj':
    case 'v_proj':
      return { k: h, n: kv };
    case 'o_proj':
      return { k: q, n: h };
    case 'gate_proj':
    case 'up_proj':
      return { k: h, n: i };
    case 'down_proj':
      return { k: i, n: h };
  }
}

/** The seven quantized linears of block i with their K (in) and N (out) features. */
export function blockLinears(shape: CheckpointShape, layer: number): LinearSpec[] {
  const attn = `model.layers.${layer}.self_attn`;
  const mlp = `model.layers.${layer}.mlp`;
  return [
    ...ATTENTION_PROJECTIONS.map((p) => ({ prefix: `${attn}.${p}`, ...projFeatures(shape, p) })),
    ...MLP_PROJECTIONS.map((p) => ({ prefix: `${mlp}.${p}`, ...projFeatures(shape, p) })),
  ];
}

/** qweight I32 [K, N/8], qzeros I32 [K/G, N/8], scales F16 [K/G, N]. */
export function linearTensors(linear: LinearSpec, groupSize: number): ExpectedTensor[] {
  const { prefix, k, n } = linear;
  return [
    { name: `${prefix}.qweight`, dtype: 'I32', shape: [k, n / PACK_FACTOR] },
    { name: `${prefix}.qzeros`, dtype: 'I32', shape: [k / groupSize, n / PACK_FACTOR] },
    { name: `${prefix}.scales`, dtype: 'F16', shape: [k / groupSize, n] },
  ];
}

/**
 * Every tensor in storage order: embeddings, then each block (norms and 7 linears), then the final
 * norm and lm_head. layers * 23 + 3 tensors.
 */
export function expectedTensors(shape: CheckpointShape): ExpectedTensor[] {
  const h = shape.hiddenSize;
  const out: ExpectedTensor[] = [
    { name: 'model.embed_tokens.weight', dtype: 'F16', shape: [shape.vocabRows, h] },
  ];
  for (let i = 0; i < shape.numLayers; i++) {
    out.push({ name: `model.layers.${i}.input_layernorm.weight`, dtype: 'F16', shape: [h] });
    out.push({ name: `model.layers.${i}.post_attention_layernorm.weight`, dtype: 'F16', shape: [h] });
    for (const linear of blockLinears(shape, i)) out.push(...linearTensors(linear, shape.quant.groupSize));
  }
  out.push({ name: 'model.norm.weight', dtype: 'F16', shape: [h] });
  out.push({ name: 'lm_head.weight', dtype: 'F16', shape: [shape.vocabRows, h] });
  return out;
}

export function tensorByteLength(dtype: SafetensorsDType, shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, DTYPE_BYTES[dtype]);
}

/** Total weight bytes of a checkpoint of this shape (headers excluded). */
export function totalTensorBytes(shape: CheckpointShape): number {
  let total = 0;
  for (const t of expectedTensors(shape)) total += tensorByteLength(t.dtype, t.shape);
  return total;
}

/** Shape errors a config can have before any tensor is looked at; empty when the shape is usable. */
export function shapeProblems(shape: CheckpointShape): string[] {
  const problems: string[] = [];
  const g = shape.quant.groupSize;
  const positive: [string, number][] = [
    ['numLayers', shape.numLayers],
    ['hiddenSize', shape.hiddenSize],
    ['intermediateSize', shape.intermediateSize],
    ['numHeads', shape.numHeads],
    ['numKvHeads', shape.numKvHeads],
    ['headDim', shape.headDim],
    ['vocabRows', shape.vocabRows],
    ['groupSize', g],
  ];
  for (const [key, value] of positive) {
    if (!Number.isSafeInteger(value) || value <= 0)
      problems.push(`${key} must be a positive integer, got ${value}`);
  }
  if (problems.length > 0) return problems;
  if (shape.numHeads % shape.numKvHeads !== 0) {
    problems.push(`heads (${shape.numHeads}) must be a multiple of KV heads (${shape.numKvHeads})`);
  }
  const ks: [string, number][] = [
    ['hidden size', shape.hiddenSize],
    ['intermediate size', shape.intermediateSize],
    ['heads x head_dim', shape.numHeads * shape.headDim],
  ];
  for (const [what, k] of ks) {
    if (k % g !== 0)
      problems.push(`${what} (${k}) is an input dimension and must be a multiple of the group size ${g}`);
  }
  const ns: [string, number][] = [
    ['hidden size', shape.hiddenSize],
    ['intermediate size', shape.intermediateSize],
    ['heads x head_dim', shape.numHeads * shape.headDim],
    ['KV heads x head_dim', shape.numKvHeads * shape.headDim],
  ];
  for (const [what, n] of ns) {
    if (n % 8 !== 0)
      problems.push(`${what} (${n}) is an output dimension and must be a multiple of 8 (int4 packing)`);
  }
  return problems;
}
