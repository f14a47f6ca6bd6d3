// Hidden states on the wire: fp32, row-major, little-endian (every supported host is little-endian).

import type { workerV1 } from '@medcluster/proto';

export function encodeActivation(hidden: Float32Array, rows: number): workerV1.Activation {
  return {
    dtype: 'DTYPE_FLOAT32',
    shape: [rows, hidden.length / rows],
    data: Buffer.from(hidden.buffer, hidden.byteOffset, hidden.byteLength),
  };
}

export function decodeActivation(activation: workerV1.Activation__Output): Float32Array {
  if (activation.dtype !== 'DTYPE_FLOAT32')
    throw new RangeError(`activation dtype ${activation.dtype} is not supported`);
  const expected = activation.shape.reduce((n, d) => n * d, 1);
  const bytes = activation.data;
  if (bytes.byteLength !== expected * 4) {
    throw new RangeError(`activation of shape [${activation.shape}] carries ${bytes.byteLength} bytes`);
  }
  // Copy: the received buffer may not be 4-byte aligned.
  const out = new Float32Array(expected);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}

/** Logits travel as raw fp32 bytes per sequence. */
export function decodeLogits(bytes: Buffer): Float32Array {
  const out = new Float32Array(bytes.byteLength / 4);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}
