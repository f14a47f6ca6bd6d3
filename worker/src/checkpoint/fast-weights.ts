// Synthetic weights at disk speed for the full-size preset: random nibbles for qweight/qzeros and
// random fp16 values with a fixed exponent (so every value is finite and in a chosen range) for
// scales, norms and embeddings. Nothing is quantized; the values only need plausible magnitudes.

import type { ExpectedTensor } from './layout.js';
import { KeystreamBytes } from './prng.js';
import { linearOf, type TensorSource } from './tensor-source.js';

/** Big enough to write at disk speed, small enough that memory stays flat. */
export const CHUNK_BYTES = 16 * 1024 * 1024;

/** With q and z uniform on 0..15, (q - z) has std sqrt(2 * 255 / 12) ~ 6.5. */
const NIBBLE_DIFF_STD = Math.sqrt((2 * 255) / 12);

/**
 * fp16 exponent field whose values [2^e, 2^(e+1)) average about `target` (mean 1.5 * 2^e), clamped to
 * normal numbers.
 */
function exponentField(target: number): number {
  return Math.min(30, Math.max(1, Math.round(Math.log2(target / 1.5)) + 15));
}

/** (keep mask, set bits) applied to each pair of fp16 values through a 32-bit view. */
interface Fp16Pattern {
  keep: number;
  set: number;
}

function pattern(keepSign: boolean, mantissaMask: number, exponent: number): Fp16Pattern {
  const keepHalf = (keepSign ? 0x8000 : 0) | mantissaMask;
  const setHalf = exponent << 10;
  return { keep: ((keepHalf << 16) | keepHalf) >>> 0, set: ((setHalf << 16) | setHalf) >>> 0 };
}

export function fastPattern(tensor: ExpectedTensor, groupSize: number): Fp16Pattern | undefined {
  const linear = linearOf(tensor.name);
  if (linear) {
    if (linear.part !== 'scales') return undefined; // any int32 is a valid set of 8 nibbles
    // Aim for dequantized weights of std ~1/sqrt(K), as a trained projection has.
    const k = tensor.shape[0] * groupSize;
    return pattern(false, 0x3ff, exponentField(1 / (NIBBLE_DIFF_STD * Math.sqrt(k))));
  }
  const hidden = tensor.shape[tensor.shape.length - 1];
  if (tensor.name === 'model.embed_tokens.weight') return pattern(true, 0x3ff, exponentField(0.75));
  if (tensor.name === 'lm_head.weight') return pattern(true, 0x3ff, exponentField(4 / Math.sqrt(hidden)));
  if (tensor.name.endsWith('norm.weight')) return pattern(false, 0x3f, 15); // [1, 1.0625)
  throw new RangeError(`fast weights: no generation rule for tensor ${tensor.name}`);
}

export class FastWeightSource implements TensorSource {
  constructor(
    private readonly seed: number,
    private readonly groupSize: number,
    private readonly chunkBytes = CHUNK_BYTES,
  ) {}

  *chunks(tensor: ExpectedTensor): Iterable<Uint8Array> {
    const total = tensor.shape.reduce((a, b) => a * b, tensor.dtype === 'F16' ? 2 : 4);
    const bytes = new KeystreamBytes(this.seed, tensor.name);
    const fp16 = tensor.dtype === 'F16' ? fastPattern(tensor, this.groupSize) : undefined;
    for (let done = 0; done < total; ) {
      const length = Math.min(this.chunkBytes, total - done);
      const chunk = bytes.next(length);
      if (fp16) applyPattern(chunk, fp16);
      done += length;
      yield chunk;
    }
  }
}

function applyPattern(chunk: Buffer, { keep, set }: Fp16Pattern): void {
  const words = Math.floor(chunk.length / 4);
  // Large buffers own their ArrayBuffer at offset 0; fall back to bytes if one ever is not aligned.
  if (chunk.byteOffset % 4 === 0) {
    const view = new Uint32Array(chunk.buffer, chunk.byteOffset, words);
    for (let i = 0; i < words; i++) view[i] = (view[i] & keep) | set;
  } else {
    for (let i = 0; i < words * 4; i += 4)
      chunk.writeUInt32LE(((chunk.readUInt32LE(i) & keep) | set) >>> 0, i);
  }
  if (chunk.length % 4 === 2) {
    const i = chunk.length - 2;
    chunk.writeUInt16LE((chunk.readUInt16LE(i) & keep & 0xffff) | (set & 0xffff), i);
  }
}
