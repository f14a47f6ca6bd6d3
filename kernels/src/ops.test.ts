// Every op against a float64 reference on fresh seeded inputs.
import { afterAll, describe, expect, it } from 'vitest';
import { dequantizeAwq, packAwqInt4 } from './awq.js';
import { buildCache } from './cache-fixture.js';
import { createDevice } from './device.js';
import { fromF16Bits, roundToF16, toF16Bits } from './half.js';
import {
  attentionRef,
  linearRef,
  matmulRef,
  randomNibbles,
  relativeError,
  rmsNormRef,
  rng,
  ropeRef,
  siluMulRef,
  uniform,
} from './reference.js';

const dev = createDevice({ kind: 'cpu', threads: 2 });
afterAll(() => dev.close());

const F16_TOL = 2e-3;

describe('memory', () => {
  it('round-trips f16 (from f32 and raw bits), f32 and i32, and zero-fills', async () => {
    const rand = rng(1);
    const v = uniform(rand, 37, -100, 100);
    expect(await dev.fromArray(v, [37], 'f16').read()).toEqual(roundToF16(v));
    expect(await dev.fromArray(toF16Bits(v), [37], 'f16').read()).toEqual(roundToF16(v));
    expect(await dev.fromArray(v, [37], 'f32').read()).toEqual(v);
    const ints = Int32Array.from([0, -1, 2 ** 31 - 1, -(2 ** 31), 7]);
    expect(await dev.fromArray(ints, [5], 'i32').read()).toEqual(ints);
    expect(await dev.zeros([3, 5], 'f16').read()).toEqual(new Float32Array(15));
  });

  it('converts f16 edge values exactly like half.ts', async () => {
    const bits = Uint16Array.from([
      0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00, 0x7bff, 0x7c00, 0xfc00, 0xc000,
    ]);
    expect(await dev.fromArray(bits, [bits.length], 'f16').read()).toEqual(fromF16Bits(bits));
    const f = Float32Array.from([65520, 65519, 1e-8, 2.98e-8, -3.0e-8, 1 + 2 ** -11, 1 + 3 * 2 ** -11]);
    expect(await dev.fromArray(f, [f.length], 'f16').read()).toEqual(roundToF16(f));
  });

  it('randomBits is deterministic per seed and index, independent of the shape', async () => {
    const a = (await dev.randomBits([1000], 'i32', 42).read()) as Int32Array;
    const b = (await dev.randomBits([10, 100], 'i32', 42).read()) as Int32Array;
    const c = (await dev.randomBits([1001], 'i32', 42).read()) as Int32Array;
    const d = (await dev.randomBits([1000], 'i32', 43).read()) as Int32Array;
    expect(b).toEqual(a);
    expect(c.subarray(0, 1000)).toEqual(a);
    expect(d).not.toEqual(a);
    expect(new Set(a).size).toBeGreaterThan(990);
  });
});

describe('awqLinear', () => {
  const cases = [
    { m: 1, k: 256, n: 64, g: 128, seed: 1 },
    { m: 3, k: 384, n: 200, g: 128, seed: 2 }, // N not a multiple of 64: partial column tile
    { m: 17, k: 96, n: 136, g: 32, seed: 3 }, // K not a multiple of 64
    { m: 20, k: 128, n: 8, g: 64, seed: 4 }, // more rows than one row block, one int32 column
  ];
  for (const { m, k, n, g, seed } of cases) {
    it(`matches dequantizeAwq for M=${m} K=${k} N=${n} G=${g}`, async () => {
      const rand = rng(seed);
      const qweight = packAwqInt4(randomNibbles(rand, k * n), k, n);
      const qzeros = packAwqInt4(randomNibbles(rand, (k / g) * n), k / g, n);
      const scales = roundToF16(uniform(rand, (k / g) * n, 0.001, 0.02));
      const x = roundToF16(uniform(rand, m * k));
      const ref = matmulRef(x, dequantizeAwq(qweight, qzeros, scales, k, n, g), m, k, n);
      const weights = {
        qweight: dev.fromArray(qweight, [k, n / 8], 'i32'),
        qzeros: dev.fromArray(qzeros, [k / g, n / 8], 'i32'),
        scales: dev.fromArray(scales, [k / g, n], 'f16'),
        groupSize: g,
      };
      const xt = dev.fromArray(x, [m, k], 'f16');
      const out32 = await dev.awqLinear(xt, weights, 'f32').read();
      const out16 = await dev.awqLinear(xt, weights, 'f16').read();
      expect(relativeError(out32, ref)).toBeLessThan(1e-5);
      expect(relativeError(out16, ref)).toBeLessThan(F16_TOL);
    });
  }
});

describe('linear', () => {
  for (const [m, k, n] of [
    [1, 64, 10],
    [3, 100, 33],
    [17, 257, 40],
  ]) {
    it(`matches float64 for M=${m} K=${k} N=${n}`, async () => {
      const rand = rng(m * 1000 + k);
      const x = roundToF16(uniform(rand, m * k));
      const w = roundToF16(uniform(rand, n * k));
      const ref = linearRef(x, w, m, k, n);
      const xt = dev.fromArray(x, [m, k], 'f16');
      const wt = dev.fromArray(w, [n, k], 'f16');
      expect(relativeError(await dev.linear(xt, wt, 'f32').read(), ref)).toBeLessThan(1e-5);
      expect(relativeError(await dev.linear(xt, wt, 'f16').read(), ref)).toBeLessThan(F16_TOL);
    });
  }
});

describe('norms and element-wise ops', () => {
  it('rmsNorm and addRmsNorm follow HF LlamaRMSNorm', async () => {
    const rand = rng(11);
    const [t, h, eps] = [3, 1000, 1e-5];
    const x = uniform(rand, t * h, -4, 4);
    const delta = uniform(rand, t * h);
    const w = roundToF16(uniform(rand, h, 0.5, 1.5));
    const wt = dev.fromArray(w, [h], 'f16');
    const norm = await dev.rmsNorm(dev.fromArray(x, [t, h], 'f32'), wt, eps).read();
    expect(relativeError(norm, rmsNormRef(x, w, t, h, eps))).toBeLessThan(F16_TOL);

    const residual = dev.fromArray(x, [t, h], 'f32');
    const fused = await dev.addRmsNorm(residual, dev.fromArray(delta, [t, h], 'f32'), wt, eps).read();
    const sum = x.map((v, i) => v + delta[i]);
    expect(await residual.read()).toEqual(sum);
    expect(relativeError(fused, rmsNormRef(sum, w, t, h, eps))).toBeLessThan(F16_TOL);
  });

  it('addInPlace adds in fp32', async () => {
    const rand = rng(12);
    const a = uniform(rand, 17 * 5);
    const b = uniform(rand, 17 * 5);
    const r = dev.fromArray(a, [17, 5], 'f32');
    dev.addInPlace(r, dev.fromArray(b, [17, 5], 'f32'));
    expect(await r.read()).toEqual(a.map((v, i) => Math.fround(v + b[i])));
  });

  it('siluMul', async () => {
    const rand = rng(13);
    const g = roundToF16(uniform(rand, 3 * 77, -6, 6));
    const u = roundToF16(uniform(rand, 3 * 77, -2, 2));
    const out = await dev.siluMul(dev.fromArray(g, [3, 77], 'f16'), dev.fromArray(u, [3, 77], 'f16')).read();
    expect(relativeError(out, siluMulRef(g, u))).toBeLessThan(F16_TOL);
  });

  it('embedding copies f16 rows into f32', async () => {
    const rand = rng(14);
    const table = roundToF16(uniform(rand, 32 * 24));
    const ids = Int32Array.from([5, 0, 31, 5]);
    const out = await dev
      .embedding(dev.fromArray(table, [32, 24], 'f16'), dev.fromArray(ids, [4], 'i32'))
      .read();
    const ref = new Float32Array(4 * 24);
    ids.forEach((id, r) => {
      ref.set(table.subarray(id * 24, id * 24 + 24), r * 24);
    });
    expect(out).toEqual(ref);
  });

  it('gatherRows selects rows of any dtype', async () => {
    const x = Int32Array.from({ length: 5 * 3 }, (_, i) => i);
    const out = await dev
      .gatherRows(dev.fromArray(x, [5, 3], 'i32'), dev.fromArray(Int32Array.from([4, 0, 4]), [3], 'i32'))
      .read();
    expect(Array.from(out)).toEqual([12, 13, 14, 0, 1, 2, 12, 13, 14]);
    const f = roundToF16(uniform(rng(15), 5 * 3));
    const outF = await dev
      .gatherRows(dev.fromArray(f, [5, 3], 'f16'), dev.fromArray(Int32Array.from([2]), [1], 'i32'))
      .read();
    expect(outF).toEqual(f.subarray(6, 9));
  });

  it('argmax returns the first index on ties', async () => {
    const x = Float32Array.from([1, 3, 3, 2, -1, -1, -5, -1, 0, 0, 0, 0]);
    const out = await dev.argmax(dev.fromArray(x, [3, 4], 'f32')).read();
    expect(Array.from(out)).toEqual([1, 0, 0]);
    const big = uniform(rng(16), 2 * 32000);
    const outBig = await dev.argmax(dev.fromArray(big, [2, 32000], 'f32')).read();
    for (let r = 0; r < 2; r++) {
      const row = Array.from(big.subarray(r * 32000, (r + 1) * 32000));
      expect(outBig[r]).toBe(row.indexOf(Math.max(...row)));
    }
  });

  it('rope rotates q and k with HF rotate-half at each position', async () => {
    const rand = rng(17);
    const [t, hd, nq, nk, theta] = [5, 64, 4, 2, 10000];
    const q = roundToF16(uniform(rand, t * nq * hd));
    const k = roundToF16(uniform(rand, t * nk * hd));
    const positions = Int32Array.from([0, 1, 7, 300, 4095]);
    const qt = dev.fromArray(q, [t, nq * hd], 'f16');
    const kt = dev.fromArray(k, [t, nk * hd], 'f16');
    dev.rope(qt, kt, dev.fromArray(positions, [t], 'i32'), hd, theta);
    expect(relativeError(await qt.read(), ropeRef(q, positions, t, nq * hd, hd, theta))).toBeLessThan(
      F16_TOL,
    );
    expect(relativeError(await kt.read(), ropeRef(k, positions, t, nk * hd, hd, theta))).toBeLessThan(
      F16_TOL,
    );
  });
});

describe('paged attention', () => {
  const cases = [
    { lengths: [1], nh: 2, nkv: 2, bs: 16 }, // ratio 1, a single position
    { lengths: [17, 3, 40], nh: 4, nkv: 2, bs: 16 }, // ratio 2, partial last blocks
    { lengths: [33, 9], nh: 8, nkv: 1, bs: 8 }, // ratio 8
  ];
  for (const { lengths, nh, nkv, bs } of cases) {
    it(`matches float64 for lengths ${lengths} nh=${nh} nkv=${nkv} blockSize=${bs}`, async () => {
      const hd = 32;
      const c = buildCache(dev, lengths.length * 100 + nh, lengths, nkv, hd, bs);
      // Every position of every sequence queries (a prefill of all of them in one call).
      const tokenSeq: number[] = [];
      const positions: number[] = [];
      lengths.forEach((l, s) => {
        for (let p = 0; p < l; p++) {
          tokenSeq.push(s);
          positions.push(p);
        }
      });
      const t = tokenSeq.length;
      const q = roundToF16(uniform(rng(t), t * nh * hd));
      const out = await dev
        .attention(
          dev.fromArray(q, [t, nh * hd], 'f16'),
          c.kCache,
          c.vCache,
          c.blockTables,
          dev.fromArray(Int32Array.from(tokenSeq), [t], 'i32'),
          dev.fromArray(Int32Array.from(positions), [t], 'i32'),
          { numHeads: nh, numKvHeads: nkv, headDim: hd },
        )
        .read();
      const ref = attentionRef(q, c.keys, c.values, tokenSeq, positions, nh, nkv, hd, 1 / Math.sqrt(hd));
      expect(relativeError(out, ref)).toBeLessThan(F16_TOL);
    });
  }
});
