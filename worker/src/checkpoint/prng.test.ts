import { describe, expect, it } from 'vitest';
import { KeystreamBytes, Xoshiro128 } from './prng.js';

describe('seeded streams', () => {
  it('fill() continues the same sequence as nextU32()', () => {
    const a = new Xoshiro128(5, 't');
    const b = new Xoshiro128(5, 't');
    const filled = new Uint32Array(1000);
    a.fill(filled.subarray(0, 500));
    a.fill(filled.subarray(500));
    for (let i = 0; i < 1000; i++) expect(filled[i]).toBe(b.nextU32());
  });

  it('byte streams depend on seed and name only, and chunking does not change them', () => {
    const whole = new KeystreamBytes(9, 'x').next(1000);
    const parts = new KeystreamBytes(9, 'x');
    expect(Buffer.concat([parts.next(400), parts.next(600)]).equals(whole)).toBe(true);
    expect(new KeystreamBytes(9, 'y').next(1000).equals(whole)).toBe(false);
    expect(new KeystreamBytes(10, 'x').next(1000).equals(whole)).toBe(false);
  });

  it('draws roughly standard normals', () => {
    const rng = new Xoshiro128(1, 'n');
    let sum = 0;
    let sq = 0;
    const n = 100_000;
    for (let i = 0; i < n; i++) {
      const v = rng.nextNormal();
      sum += v;
      sq += v * v;
    }
    expect(Math.abs(sum / n)).toBeLessThan(0.02);
    expect(Math.abs(sq / n - 1)).toBeLessThan(0.02);
  });
});
