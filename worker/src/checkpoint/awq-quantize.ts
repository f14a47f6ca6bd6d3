// AutoAWQ's zero-point quantization (awq/quantize/quantizer.py, pseudo_quantize_tensor), per group of
// G input rows per output column, with the scale rounded to fp16 first so that dequantizing what is
// stored reproduces exactly what was quantized against.

import { f16BitsToF32, f32ToF16Bits, packAwqInt4 } from '@medcluster/kernels';

export interface AwqTensors {
  qweight: Int32Array; // [K, N/8]
  qzeros: Int32Array; // [K/G, N/8]
  scales: Uint16Array; // f16 bits [K/G, N]
}

const MAX_INT = 15;

/** torch.round: halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 ? 2 * Math.round(x / 2) : r;
}

/** Quantizes w [K, N] (input-major, the transpose of nn.Linear.weight). */
export function quantizeAwq(w: Float32Array, k: number, n: number, groupSize: number): AwqTensors {
  if (w.length !== k * n) throw new RangeError(`quantizeAwq: ${w.length} values for [${k}, ${n}]`);
  if (k % groupSize !== 0)
    throw new RangeError(`quantizeAwq: K ${k} is not a multiple of the group size ${groupSize}`);
  const groups = k / groupSize;
  const q = new Uint8Array(k * n);
  const z = new Uint8Array(groups * n);
  const scales = new Uint16Array(groups * n);
  for (let g = 0; g < groups; g++) {
    const row0 = g * groupSize;
    for (let col = 0; col < n; col++) {
      let max = Number.NEGATIVE_INFINITY;
      let min = Number.POSITIVE_INFINITY;
      for (let r = row0; r < row0 + groupSize; r++) {
        const v = w[r * n + col];
        if (v > max) max = v;
        if (v < min) min = v;
      }
      const scaleBits = f32ToF16Bits(Math.max(max - min, 1e-5) / MAX_INT);
      const scale = f16BitsToF32(scaleBits);
      const zero = Math.min(Math.max(-roundHalfEven(min / scale), 0), MAX_INT);
      scales[g * n + col] = scaleBits;
      z[g * n + col] = zero;
      for (let r = row0; r < row0 + groupSize; r++) {
        q[r * n + col] = Math.min(Math.max(roundHalfEven(w[r * n + col] / scale) + zero, 0), MAX_INT);
      }
    }
  }
  return { qweight: packAwqInt4(q, k, n), qzeros: packAwqInt4(z, groups, n), scales };
}
