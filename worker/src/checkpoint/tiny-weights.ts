// Real (random, seeded) fp16 weights quantized with AutoAWQ's rounding: a small model whose outputs
// are meaningful enough to compare engines token by token.

import { f16BitsToF32, f32ToF16Bits } from '@medcluster/kernels';
import { type AwqTensors, quantizeAwq } from './awq-quantize.js';
import type { ExpectedTensor } from './layout.js';
import { Xoshiro128 } from './prng.js';
import { linearOf, type TensorSource } from './tensor-source.js';

/**
 * lm_head rows get std LM_HEAD_LOGIT_STD / sqrt(hidden): the final RMSNorm leaves hidden states at
 * RMS ~1, so logits come out with std ~6. A wide logit spread makes the top-2 margin of most greedy
 * steps large compared with fp16 rounding differences between engines, so greedy outputs of two
 * correct implementations agree until a genuine near-tie.
 */
export const LM_HEAD_LOGIT_STD = 6;
/** Norm weights are 1 + N(0, NORM_NOISE): close to identity, yet a wrong norm weight shows up. */
export const NORM_NOISE = 0.05;

/**
 * The fp16 values (as float32) of a generated tensor, before quantization:
 * - a quantized linear, named by its prefix (`model.layers.0.mlp.up_proj`), shape [K, N] input-major,
 *   std 1/sqrt(K) so activations keep their scale through each projection;
 * - `model.embed_tokens.weight`: N(0, 1);
 * - norms: 1 + N(0, NORM_NOISE);
 * - `lm_head.weight`: N(0, LM_HEAD_LOGIT_STD / sqrt(hidden)).
 * Same (seed, name, shape) => same values; tests regenerate tensors with this to check the stored ones.
 */
export function generateFp16Weight(seed: number, name: string, shape: readonly number[]): Float32Array {
  const bits = generateFp16Bits(seed, name, shape);
  const out = new Float32Array(bits.length);
  const table = f16Table();
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
  return out;
}

/** The same tensor as generateFp16Weight, as the fp16 bits that are stored. */
export function generateFp16Bits(seed: number, name: string, shape: readonly number[]): Uint16Array {
  const count = shape.reduce((a, b) => a * b, 1);
  const rng = new Xoshiro128(seed, name);
  let mean = 0;
  let std: number;
  if (name.endsWith('_proj')) {
    std = 1 / Math.sqrt(shape[0]);
  } else if (name === 'model.embed_tokens.weight') {
    std = 1;
  } else if (name === 'lm_head.weight') {
    std = LM_HEAD_LOGIT_STD / Math.sqrt(shape[1]);
  } else if (name.endsWith('norm.weight')) {
    mean = 1;
    std = NORM_NOISE;
  } else {
    throw new RangeError(`generateFp16Weight: no generation rule for tensor ${name}`);
  }
  const out = new Uint16Array(count);
  for (let i = 0; i < count; i++) out[i] = f32ToF16Bits(mean + std * rng.nextNormal());
  return out;
}

let table: Float32Array | undefined;
/** Every fp16 bit pattern's value: decoding by lookup keeps generating the embeddings fast. */
function f16Table(): Float32Array {
  if (!table) {
    table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) table[i] = f16BitsToF32(i);
  }
  return table;
}

function bytesOf(array: Int32Array | Uint16Array): Uint8Array {
  return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
}

/** Source for the tiny preset: quantizes each linear once and serves its three tensors from it. */
export class TinyWeightSource implements TensorSource {
  private cached: { prefix: string; tensors: AwqTensors } | undefined;

  constructor(
    private readonly seed: number,
    private readonly groupSize: number,
  ) {}

  *chunks(tensor: ExpectedTensor): Iterable<Uint8Array> {
    const linear = linearOf(tensor.name);
    if (!linear) {
      yield bytesOf(generateFp16Bits(this.seed, tensor.name, tensor.shape));
      return;
    }
    if (this.cached?.prefix !== linear.prefix) {
      // scales are [K/G, N]: recover K and N from whichever of the three tensors comes first.
      const { k, n } = linearDims(tensor, this.groupSize);
      const w = generateFp16Weight(this.seed, linear.prefix, [k, n]);
      this.cached = { prefix: linear.prefix, tensors: quantizeAwq(w, k, n, this.groupSize) };
    }
    yield bytesOf(this.cached.tensors[linear.part]);
  }
}

function linearDims(tensor: ExpectedTensor, groupSize: number): { k: number; n: number } {
  const [rows, cols] = tensor.shape;
  if (tensor.name.endsWith('.qweight')) return { k: rows, n: cols * 8 };
  if (tensor.name.endsWith('.qzeros')) return { k: rows * groupSize, n: cols * 8 };
  return { k: rows * groupSize, n: cols };
}
