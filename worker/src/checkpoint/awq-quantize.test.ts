import { f16BitsToF32, unpackAwqInt4 } from '@medcluster/kernels';
import { describe, expect, it } from 'vitest';
import { quantizeAwq, roundHalfEven } from './awq-quantize.js';

describe('roundHalfEven (torch.round)', () => {
  it('sends halves to the even neighbour', () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, -2.6].map(roundHalfEven)).toEqual([
      0, 2, 2, -0, -2, -2, 2, -3,
    ]);
  });
});

describe('quantizeAwq', () => {
  it('follows AutoAWQ zero-point rounding on a hand-checked group', () => {
    // One column (N = 8, others zero), K = 128: values from -1 to 2 in steps of 3/127.
    const k = 128;
    const n = 8;
    const w = new Float32Array(k * n);
    for (let r = 0; r < k; r++) w[r * n + 3] = -1 + (3 * r) / 127;
    const { qweight, qzeros, scales } = quantizeAwq(w, k, n, 128);
    const scale = f16BitsToF32(scales[3]);
    expect(scale).toBeCloseTo(3 / 15, 3); // (max - min) / 15, rounded to fp16
    const z = unpackAwqInt4(qzeros, 1, n);
    expect(z[3]).toBe(5); // -round(-1 / 0.2) = 5
    const q = unpackAwqInt4(qweight, k, n);
    expect(q[0 * n + 3]).toBe(0); // the min maps to 0
    expect(q[127 * n + 3]).toBe(15); // the max maps to 15
    // all-zero columns: scale clamps to 1e-5 / 15 and every value sits on the zero point
    expect(z[0]).toBe(0);
    expect(q[5 * n]).toBe(0);
    expect(f16BitsToF32(scales[0])).toBeCloseTo(1e-5 / 15, 7); // fp16 subnormal: steps of 2^-24
  });

  it('clamps the zero point to 0..15 for one-signed groups', () => {
    const k = 128;
    const n = 8;
    const w = new Float32Array(k * n).fill(0);
    for (let r = 0; r < k; r++) w[r * n] = 1 + r / 127; // all positive: -round(min/scale) < 0
    const { qzeros, qweight } = quantizeAwq(w, k, n, 128);
    expect(unpackAwqInt4(qzeros, 1, n)[0]).toBe(0);
    expect(unpackAwqInt4(qweight, k, n)[127 * n]).toBe(15); // clipped at the top
  });

  it('rejects K that is not a multiple of the group', () => {
    expect(() => quantizeAwq(new Float32Array(64 * 8), 64, 8, 128)).toThrow(
      /not a multiple of the group size/,
    );
  });
});
