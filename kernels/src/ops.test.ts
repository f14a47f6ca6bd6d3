// Every op against a float64 reference on fresh seeded inputs.
import { afterAll, describe, expect, it } from 'vitest';
import { type DType, KernelError, type SampleRow, type Tensor } from './api.js';
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
  it('a read returns what the tensor held where it was queued; completions settle in queued order', async () => {
    const t = dev.fromArray(Int32Array.from([1, 2, 3]), [3], 'i32');
    const order: string[] = [];
    const before = t.read().then((v) => {
      order.push('before');
      return v;
    });
    dev.write(t, Int32Array.from([4, 5, 6]));
    const after = t.read().then((v) => {
      order.push('after');
      return v;
    });
    const synced = dev.sync().then(() => order.push('sync'));
    expect(Array.from(await before)).toEqual([1, 2, 3]);
    expect(Array.from(await after)).toEqual([4, 5, 6]);
    await synced;
    expect(order).toEqual(['before', 'after', 'sync']);
  });

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

  it('write overwrites a tensor in issue order, with the data rules of fromArray', async () => {
    const t = dev.fromArray(Float32Array.from([1, 2, 3]), [3], 'f32');
    const before = t.read();
    dev.write(t, Float32Array.from([4, 5, 6]));
    expect(await before).toEqual(Float32Array.from([1, 2, 3]));
    expect(await t.read()).toEqual(Float32Array.from([4, 5, 6]));
    const h = dev.zeros([2], 'f16');
    dev.write(h, Float32Array.from([0.1, -3]));
    expect(await h.read()).toEqual(roundToF16(Float32Array.from([0.1, -3])));
    expect(() => dev.write(t, Int32Array.from([1, 2, 3]))).toThrow(
      /write: Int32Array cannot fill a f32 tensor/,
    );
    expect(() => dev.write(t, Float32Array.from([1]))).toThrow(/write: 1 values do not fill shape \[3\]/);
  });

  it('reports free and total memory', async () => {
    const { freeBytes, totalBytes } = await dev.memoryInfo();
    expect(totalBytes).toBeGreaterThan(2 ** 28);
    expect(freeBytes).toBeGreaterThan(0);
    expect(freeBytes).toBeLessThanOrEqual(totalBytes);
  });

  it('has no graphs on the CPU backend', () => {
    expect(dev.supportsGraphs).toBe(false);
    expect(() => dev.buildGraph(() => undefined)).toThrow(
      /buildGraph: the cpu backend cannot capture graphs/,
    );
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

  it('awqSiluGate is silu(x @ gate) * (x @ up) of the fused [gate | up] layer, packed gated', async () => {
    const [m, k, n, g] = [5, 256, 96, 128];
    const rand = rng(9);
    const qweight = packAwqInt4(randomNibbles(rand, k * n), k, n);
    const qzeros = packAwqInt4(randomNibbles(rand, (k / g) * n), k / g, n);
    const scales = roundToF16(uniform(rand, (k / g) * n, 0.001, 0.02));
    const x = roundToF16(uniform(rand, m * k));
    const full = matmulRef(x, dequantizeAwq(qweight, qzeros, scales, k, n, g), m, k, n);
    const gate: number[] = [];
    const up: number[] = [];
    for (let r = 0; r < m; r++)
      for (let c = 0; c < n / 2; c++) {
        gate.push(full[r * n + c]);
        up.push(full[r * n + n / 2 + c]);
      }
    const layer = () => ({
      qweight: dev.fromArray(qweight, [k, n / 8], 'i32'),
      qzeros: dev.fromArray(qzeros, [k / g, n / 8], 'i32'),
      scales: dev.fromArray(scales, [k / g, n], 'f16'),
      groupSize: g,
    });
    const xt = dev.fromArray(x, [m, k], 'f16');
    const gated = dev.packAwq(layer(), { gated: true });
    const out = dev.awqSiluGate(xt, gated);
    expect(out.shape).toEqual([m, n / 2]);
    const got = await out.read();
    expect(relativeError(got, siluMulRef(gate, up))).toBeLessThan(F16_TOL);
    // On the CPU it is exactly awqLinear then siluMul.
    expect(Array.from(got)).toEqual(Array.from(await dev.siluMul(dev.awqLinear(xt, layer(), 'f16')).read()));
    const odd = { ...layer(), qweight: dev.zeros([k, 3], 'i32'), qzeros: dev.zeros([k / g, 3], 'i32') };
    expect(() => dev.packAwq({ ...odd, scales: dev.zeros([k / g, 24], 'f16') }, { gated: true })).toThrow(
      /^packAwq: a gated layer pairs runs of 8 gate and 8 up columns: N=24 is not a multiple of 16/,
    );
  });
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

  it('siluMul reads gate and up from the fused [T, 2I] output', async () => {
    const rand = rng(13);
    const g = roundToF16(uniform(rand, 3 * 77, -6, 6));
    const u = roundToF16(uniform(rand, 3 * 77, -2, 2));
    const gateUp = new Float32Array(3 * 154);
    for (let t = 0; t < 3; t++) {
      gateUp.set(g.subarray(t * 77, (t + 1) * 77), t * 154);
      gateUp.set(u.subarray(t * 77, (t + 1) * 77), t * 154 + 77);
    }
    const out = dev.siluMul(dev.fromArray(gateUp, [3, 154], 'f16'));
    expect(out.shape).toEqual([3, 77]);
    expect(relativeError(await out.read(), siluMulRef(g, u))).toBeLessThan(F16_TOL);
    expect(() => dev.siluMul(dev.zeros([2, 5], 'f16'))).toThrow(
      /^siluMul: gateUp \[2, 5\] f16 must have an even column count/,
    );
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

  it('takeSampled feeds ids from column 0 of sampled rows, leaving the -1 entries', async () => {
    const ids = dev.fromArray(Int32Array.from([7, 8, 9, 10]), [4], 'i32');
    const sampled = dev.fromArray(Int32Array.from([100, 101, 200, 201, 300, 301]), [3, 2], 'i32');
    dev.takeSampled(ids, sampled, Int32Array.from([2, -1, 0, 2]));
    expect(Array.from(await ids.read())).toEqual([300, 8, 100, 300]);
    expect(() => dev.takeSampled(ids, sampled, Int32Array.from([3, -1, 0, 0]))).toThrow(
      /from index 3 is outside -1\.\.2/,
    );
    expect(() => dev.takeSampled(ids, sampled, Int32Array.from([0]))).toThrow(/4 indices/);
    expect(() => dev.takeSampled(dev.zeros([4], 'f32'), sampled, new Int32Array(4))).toThrow(KernelError);
  });

  it('greedy sampling picks the first index of the largest on ties', async () => {
    const greedy = (row: number): SampleRow => ({
      row,
      temperature: 0,
      topK: 0,
      topP: 1,
      repetitionPenalty: 1,
      presencePenalty: 0,
      frequencyPenalty: 0,
      penalizedIds: [],
      penalizedCounts: [],
      maskedIds: [],
      uniform: 0,
    });
    const idsOf = async (t: Tensor, rows: number) => {
      const out = dev.sample(
        t,
        Array.from({ length: rows }, (_, r) => greedy(r)),
      );
      out.logprobs.dispose();
      return out.ids.read();
    };
    const x = Float32Array.from([1, 3, 3, 2, -1, -1, -5, -1, 0, 0, 0, 0]);
    const out = await idsOf(dev.fromArray(x, [3, 4], 'f32'), 3);
    expect(Array.from(out)).toEqual([1, 0, 0]);
    const big = uniform(rng(16), 2 * 32000);
    const outBig = await idsOf(dev.fromArray(big, [2, 32000], 'f32'), 2);
    for (let r = 0; r < 2; r++) {
      const row = Array.from(big.subarray(r * 32000, (r + 1) * 32000));
      expect(outBig[r]).toBe(row.indexOf(Math.max(...row)));
    }
  });

  it('ropeWriteKv rotates q and k of the fused q/k/v rows and caches k and v at their slots', async () => {
    const rand = rng(17);
    const [t, hd, nq, nk, theta, blockSize, blocks] = [5, 64, 4, 2, 10000, 4, 3];
    const [qw, kw] = [nq * hd, nk * hd];
    const qkv = roundToF16(uniform(rand, t * (qw + 2 * kw)));
    const cols = (c0: number, w: number) => {
      const out = new Float32Array(t * w);
      for (let r = 0; r < t; r++)
        out.set(qkv.subarray(r * (qw + 2 * kw) + c0, r * (qw + 2 * kw) + c0 + w), r * w);
      return out;
    };
    const [q, k, v] = [cols(0, qw), cols(qw, kw), cols(qw + kw, kw)];
    const positions = Int32Array.from([0, 1, 7, 300, 4095]);
    const slots = Int32Array.from([11, 0, 5, 6, 2]);
    const kCache = dev.zeros([blocks, blockSize, nk, hd], 'f16');
    const vCache = dev.zeros([blocks, blockSize, nk, hd], 'f16');
    const qOut = dev.ropeWriteKv(
      dev.fromArray(qkv, [t, qw + 2 * kw], 'f16'),
      kCache,
      vCache,
      dev.fromArray(positions, [t], 'i32'),
      dev.fromArray(slots, [t], 'i32'),
      theta,
    );
    expect(qOut.shape).toEqual([t, qw]);
    expect(relativeError(await qOut.read(), ropeRef(q, positions, t, qw, hd, theta))).toBeLessThan(F16_TOL);
    const [kc, vc] = [await kCache.read(), await vCache.read()];
    const atSlots = (cache: Float32Array) => {
      const out = new Float32Array(t * kw);
      for (const [r, s] of slots.entries()) out.set(cache.subarray(s * kw, (s + 1) * kw), r * kw);
      return out;
    };
    expect(relativeError(atSlots(kc), ropeRef(k, positions, t, kw, hd, theta))).toBeLessThan(F16_TOL);
    expect(atSlots(vc)).toEqual(v);
    expect(() =>
      dev.ropeWriteKv(
        dev.zeros([t, 2 * kw], 'f16'),
        kCache,
        vCache,
        dev.zeros([t], 'i32'),
        dev.zeros([t], 'i32'),
        theta,
      ),
    ).toThrow(/^ropeWriteKv: qkv \[5, 256\] f16 is not q, k and v heads of 64 with 2 KV heads/);
  });
});

describe('column concat', () => {
  type Host = Float32Array | Int32Array;
  const hostData = (dtype: DType, n: number, seed: number): Host => {
    const rand = rng(seed);
    if (dtype === 'i32') return Int32Array.from({ length: n }, () => Math.floor((rand() - 0.5) * 2 ** 32));
    const v = uniform(rand, n, -10, 10);
    return dtype === 'f16' ? roundToF16(v) : v;
  };
  // Host reference (typed like what read() returns): parts [rows, widths[i]] side by side.
  const hostConcat = (parts: Host[], rows: number, widths: readonly number[]): Host => {
    const cols = widths.reduce((a, b) => a + b, 0);
    const out = parts[0] instanceof Int32Array ? new Int32Array(rows * cols) : new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      let c0 = 0;
      parts.forEach((p, i) => {
        out.set(p.subarray(r * widths[i], (r + 1) * widths[i]), r * cols + c0);
        c0 += widths[i];
      });
    }
    return out;
  };

  // Exact comparison, fast on large arrays (toEqual walks them slowly); describes the first difference.
  const diff = (a: Host, b: Host): string | undefined => {
    if (a.constructor !== b.constructor || a.length !== b.length)
      return `${a.constructor.name}(${a.length}) vs ${b.constructor.name}(${b.length})`;
    for (let i = 0; i < a.length; i++) {
      if (!Object.is(a[i], b[i])) return `index ${i}: ${a[i]} vs ${b[i]}`;
    }
    return undefined;
  };

  for (const dtype of ['f16', 'f32', 'i32'] as const) {
    for (const [rows, widths] of [
      [4, [3, 5, 2]],
      [300, [1024, 128, 128]], // q, k, v of a GQA layer in miniature; rows span several tasks
      [1, [1, 1, 1]],
    ] as const) {
      const cols = widths.reduce((a, b) => a + b, 0);
      it(`concatCols of ${widths.length} ${dtype} parts [${rows}, ${widths}] matches the host concatenation`, async () => {
        const host = widths.map((w, i) => hostData(dtype, rows * w, 100 + i));
        const parts = host.map((h, i) => dev.fromArray(h, [rows, widths[i]], dtype));
        const out = dev.concatCols(parts);
        expect(out.shape).toEqual([rows, cols]);
        expect(out.dtype).toBe(dtype);
        expect(diff(await out.read(), hostConcat(host, rows, widths))).toBeUndefined();
      });
    }
  }

  it('concatCols of a single part is a plain copy', async () => {
    const host = hostData('i32', 7 * 28, 300);
    expect(await dev.concatCols([dev.fromArray(host, [7, 28], 'i32')]).read()).toEqual(host);
  });

  it('rejects bad parts with the op and the shapes', () => {
    const a = dev.zeros([4, 3], 'f16');
    expect(() => dev.concatCols([])).toThrow(/^concatCols: parts must be a non-empty array of tensors$/);
    expect(() => dev.concatCols([a, dev.zeros([4, 2], 'f32')])).toThrow(
      /^concatCols: parts\[1\] \[4, 2\] f32 does not match parts\[0\] \[4, 3\] f16 \(dtype f16\)$/,
    );
    expect(() => dev.concatCols([a, dev.zeros([5, 2], 'f16')])).toThrow(
      /^concatCols: parts\[1\] \[5, 2\] f16 does not match parts\[0\] \[4, 3\] f16 \(R=4\)$/,
    );
    expect(() => dev.concatCols([a, dev.zeros([4], 'f16')])).toThrow(
      /^concatCols: parts\[1\] \[4\] f16 must be 2-D f16 or f32 or i32$/,
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
