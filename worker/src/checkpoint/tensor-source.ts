import type { ExpectedTensor } from './layout.js';

/** Produces one tensor's bytes (little-endian, row-major) in order, possibly in several chunks. */
export interface TensorSource {
  chunks(tensor: ExpectedTensor): Iterable<Uint8Array>;
}

/** The quantized linear a qweight/qzeros/scales tensor belongs to, or undefined for fp16 tensors. */
export function linearOf(
  name: string,
): { prefix: string; part: 'qweight' | 'qzeros' | 'scales' } | undefined {
  const match = /^(.*_proj)\.(qweight|qzeros|scales)$/.exec(name);
  return match ? { prefix: match[1], part: match[2] as 'qweight' | 'qzeros' | 'scales' } : undefined;
}
