// The tensors a Llama AWQ-GEMM checkpoint must hold, computed from its shape alone (MODEL.md).
// The reader validates against this list and the generator writes exactly this list: one source of truth.

import type { SafetensorsDType } from './types.js';

/** The dimensions that decide every tensor's shape. */
export interface CheckpointShape {
  numLayers: number;
  hiddenSize: number;
  intermediateSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabRows: number;
  groupSize: number;
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

export const ATTENTION_PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const;
export const MLP_PROJECTIONS = ['gate_proj', 'up_proj', 'down_proj'] as const;

/** The seven quantized linears of block i with their K (in) and N (out) features. */
export function blockLinears(shape: CheckpointShape, layer: number): LinearSpec[] {
  const h = shape.hiddenSize;
  const qOut = shape.numHeads * shape.headDim;
  const kvOut = shape.numKvHeads * shape.headDim;
  const inter = shape.intermediateSize;
  const attn = `model.layers.${layer}.self_attn`;
  const mlp = `model.layers.${layer}.mlp`;
  return [
    { prefix: `${attn}.q_proj`, k: h, n: qOut },
    { prefix: `${attn}.k_proj`, k: h, n: kvOut },
    { prefix: `${attn}.v_proj`, k: h, n: kvOut },
    { prefix: `${attn}.o_proj`, k: qOut, n: h },
    { prefix: `${mlp}.gate_proj`, k: h, n: inter },
    { prefix: `${mlp}.up_proj`, k: h, n: inter },
    { prefix: `${mlp}.down_proj`, k: inter, n: h },
  ];
}

/** qweight I32 [K, N/8], qzeros I32 [K/G, N/8], scales F16 [K/G, N]. */
export function linearTensors(linear: LinearSpec, groupSize: number): ExpectedTensor[] {
  const { prefix, k, n } = linear;
  return [
    { name: `${prefix}.qweight`, dtype: 'I32', shape: [k, n / 8] },
    { name: `${prefix}.qzeros`, dtype: 'I32', shape: [k / groupSize, n / 8] },
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
    for (const linear of blockLinears(shape, i)) out.push(...linearTensors(linear, shape.groupSize));
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
  const positive: (keyof CheckpointShape)[] = [
    'numLayers',
    'hiddenSize',
    'intermediateSize',
    'numHeads',
    'numKvHeads',
    'headDim',
    'vocabRows',
    'groupSize',
  ];
  for (const key of positive) {
    if (!Number.isSafeInteger(shape[key]) || shape[key] <= 0)
      problems.push(`${key} must be a positive integer, got ${shape[key]}`);
  }
  if (problems.length > 0) return problems;
  const g = shape.groupSize;
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
