// AutoAWQ "GEMM" int4 packing (see shared MODEL.md): each int32 holds 8 output columns,
// nibble i (bits 4i..4i+3) holding column 8c + AWQ_PACK_ORDER[i]. qweight [K, N/8] and
// qzeros [K/G, N/8] share this packing; scales are f16 [K/G, N].

/** Column offset (within a group of 8) stored in nibble i. */
export const AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7] as const;
/** Nibble that stores column offset j (the inverse of AWQ_PACK_ORDER). */
export const AWQ_NIBBLE_OF_COLUMN = [0, 4, 1, 5, 2, 6, 3, 7] as const;

/** Packs unsigned 4-bit values [rows, cols] (row-major, 0..15) into int32 [rows, cols/8]. */
export function packAwqInt4(values: Uint8Array, rows: number, cols: number): Int32Array {
  if (cols % 8 !== 0) throw new RangeError(`packAwqInt4: cols ${cols} is not a multiple of 8`);
  if (values.length !== rows * cols)
    throw new RangeError(`packAwqInt4: ${values.length} values for [${rows}, ${cols}]`);
  const packed = new Int32Array((rows * cols) / 8);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols / 8; c++) {
      let word = 0;
      for (let i = 0; i < 8; i++) {
        const v = values[r * cols + 8 * c + AWQ_PACK_ORDER[i]];
        if (v > 15)
          throw new RangeError(
            `packAwqInt4: value ${v} at [${r}, ${8 * c + AWQ_PACK_ORDER[i]}] exceeds 4 bits`,
          );
        word |= v << (4 * i);
      }
      packed[r * (cols / 8) + c] = word;
    }
  }
  return packed;
}

/** Unpacks int32 [rows, cols/8] into unsigned 4-bit values [rows, cols]. */
export function unpackAwqInt4(packed: Int32Array, rows: number, cols: number): Uint8Array {
  const values = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let n = 0; n < cols; n++) {
      const word = packed[r * (cols / 8) + (n >> 3)];
      values[r * cols + n] = (word >>> (4 * AWQ_NIBBLE_OF_COLUMN[n & 7])) & 0xf;
    }
  }
  return values;
}

/** Dequantizes to float64 [K, N]: w = (q - z) * s, per group of `groupSize` input rows. */
export function dequantizeAwq(
  qweight: Int32Array,
  qzeros: Int32Array,
  scales: Float32Array,
  k: number,
  n: number,
  groupSize: number,
): Float64Array {
  const q = unpackAwqInt4(qweight, k, n);
  const z = unpackAwqInt4(qzeros, k / groupSize, n);
  const w = new Float64Array(k * n);
  for (let r = 0; r < k; r++) {
    const g = Math.floor(r / groupSize);
    for (let c = 0; c < n; c++) w[r * n + c] = (q[r * n + c] - z[g * n + c]) * scales[g * n + c];
  }
  return w;
}
