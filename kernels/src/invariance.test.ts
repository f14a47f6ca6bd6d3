// Batch invariance: a row's result must be bit-identical whether it is computed
// alone, inside a bigger batch, or with another thread count.
import { afterAll, describe, expect, it } from 'vitest';
import type { Device, Tensor } from './api.js';
import { packAwqInt4 } from './awq.js';
import { buildCache } from './cache-fixture.js';
import { createDevice } from './device.js';
import { randomNibbles, rng, uniform } from './reference.js';

const devices = [1, 2, 3].map((threads) => createDevice({ kind: 'cpu', threads }));
afterAll(() => Promise.all(devices.map((d) => d.close())));

const M = 19;
const subsets = [[0], [7], [3, 4, 5], [18, 0, 9]];

/** Bits of the rows `rows` of a [M, cols] result. */
function rowsOf(all: Float32Array | Int32Array, rows: number[], cols: number): Uint32Array {
  const out = new Uint32Array(rows.length * cols);
  const bits = new Uint32Array(all.buffer, all.byteOffset, all.length);
  rows.forEach((r, i) => {
    out.set(bits.subarray(r * cols, (r + 1) * cols), i * cols);
  });
  return out;
}
const bitsOf = (a: Float32Array | Int32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** Runs op on the full batch and on row subsets, on every device, comparing bits. */
async function checkRows(
  inputs: Float32Array,
  cols: number,
  width: number,
  dtype: 'f16' | 'f32',
  op: (dev: Device, x: Tensor) => Tensor,
): Promise<void> {
  const reference = await op(devices[0], devices[0].fromArray(inputs, [M, cols], dtype)).read();
  for (const dev of devices) {
    const full = await op(dev, dev.fromArray(inputs, [M, cols], dtype)).read();
    expect(bitsOf(full)).toEqual(bitsOf(reference));
    for (const rows of subsets) {
      const sub = new Float32Array(rows.length * cols);
      rows.forEach((r, i) => {
        sub.set(inputs.subarray(r * cols, (r + 1) * cols), i * cols);
      });
      const part = await op(dev, dev.fromArray(sub, [rows.length, cols], dtype)).read();
      expect(bitsOf(part)).toEqual(rowsOf(reference, rows, width));
    }
  }
}

describe('batch invariance', () => {
  it('awqLinear', async () => {
    const [k, n, g] = [256, 4104, 128]; // N/8 = 513: tile widths differ per thread count, with a partial last tile
    const rand = rng(21);
    const qweight = packAwqInt4(randomNibbles(rand, k * n), k, n);
    const qzeros = packAwqInt4(randomNibbles(rand, (k / g) * n), k / g, n);
    const scales = uniform(rand, (k / g) * n, 0.001, 0.02);
    const weights = new Map(
      devices.map((d) => [
        d,
        {
          qweight: d.fromArray(qweight, [k, n / 8], 'i32'),
          qzeros: d.fromArray(qzeros, [k / g, n / 8], 'i32'),
          scales: d.fromArray(scales, [k / g, n], 'f16'),
          groupSize: g,
        },
      ]),
    );
    const x = uniform(rand, M * k);
    for (const out of ['f32', 'f16'] as const) {
      await checkRows(x, k, n, 'f16', (d, t) => d.awqLinear(t, weights.get(d) as never, out));
    }
  });

  it('linear', async () => {
    const [k, n] = [300, 70];
    const rand = rng(22);
    const w = uniform(rand, n * k);
    const weights = new Map(devices.map((d) => [d, d.fromArray(w, [n, k], 'f16')]));
    await checkRows(uniform(rand, M * k), k, n, 'f16', (d, t) =>
      d.linear(t, weights.get(d) as Tensor, 'f32'),
    );
  });

  it('rmsNorm', async () => {
    const h = 999;
    const rand = rng(23);
    const w = uniform(rand, h, 0.5, 1.5);
    const weights = new Map(devices.map((d) => [d, d.fromArray(w, [h], 'f16')]));
    await checkRows(uniform(rand, M * h, -3, 3), h, h, 'f32', (d, t) =>
      d.rmsNorm(t, weights.get(d) as Tensor, 1e-5),
    );
  });

  it('attention: a decode step matches the same position inside a prefill, on any thread count', async () => {
    const [nh, nkv, hd, bs] = [8, 2, 64, 16];
    const lengths = [37, 5];
    const rand = rng(24);
    const T = lengths[0];
    const q = uniform(rand, T * nh * hd);
    const results: Uint32Array[] = [];
    for (const dev of devices) {
      const c = buildCache(dev, 99, lengths, nkv, hd, bs);
      const run = (rows: number[], seq: number[]) => {
        const sub = new Float32Array(rows.length * nh * hd);
        rows.forEach((r, i) => {
          sub.set(q.subarray(r * nh * hd, (r + 1) * nh * hd), i * nh * hd);
        });
        return dev
          .attention(
            dev.fromArray(sub, [rows.length, nh * hd], 'f16'),
            c.kCache,
            c.vCache,
            c.blockTables,
            dev.fromArray(Int32Array.from(seq), [rows.length], 'i32'),
            dev.fromArray(Int32Array.from(rows), [rows.length], 'i32'),
            { numHeads: nh, numKvHeads: nkv, headDim: hd },
          )
          .read();
      };
      const all = Array.from({ length: T }, (_, i) => i);
      const prefill = await run(all, new Array(T).fill(0));
      const last = T - 1;
      const decode = await run([last], [0]);
      expect(bitsOf(decode)).toEqual(rowsOf(prefill, [last], nh * hd));
      // Batched with tokens of another sequence (positions 0..4 of sequence 1).
      const mixed = await run([2, last, 4], [1, 0, 1]);
      expect(bitsOf(mixed).subarray(nh * hd, 2 * nh * hd)).toEqual(rowsOf(prefill, [last], nh * hd));
      results.push(bitsOf(prefill));
    }
    for (const r of results) expect(r).toEqual(results[0]);
  });
});
