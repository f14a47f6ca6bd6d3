// A paged KV cache filled with seeded random rows through writeKv, with the same rows
// kept on the host for attentionRef. Shared by the CPU tests and the GPU harness.
import type { Device, Tensor } from './api.js';
import { roundToF16 } from './half.js';
import { rng, type SeqRows, uniform } from './reference.js';

export interface CacheFixture {
  kCache: Tensor;
  vCache: Tensor;
  blockTables: Tensor;
  keys: SeqRows;
  values: SeqRows;
  tables: Int32Array;
  numBlocks: number;
  maxBlocks: number;
}

/** Sequence s holds lengths[s] positions; blocks are shuffled so sequences interleave. */
export function buildCache(
  dev: Device,
  seed: number,
  lengths: number[],
  nkv: number,
  hd: number,
  blockSize: number,
): CacheFixture {
  const rand = rng(seed);
  const width = nkv * hd;
  const blocksOf = (l: number) => Math.ceil(l / blockSize);
  const maxBlocks = Math.max(...lengths.map(blocksOf));
  const numBlocks = lengths.reduce((a, l) => a + blocksOf(l), 0) + 2; // two spare blocks stay unused
  const order = Array.from({ length: numBlocks }, (_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const tables = new Int32Array(lengths.length * maxBlocks);
  let next = 0;
  lengths.forEach((l, s) => {
    for (let b = 0; b < blocksOf(l); b++) tables[s * maxBlocks + b] = order[next++];
  });
  const kCache = dev.zeros([numBlocks, blockSize, nkv, hd], 'f16');
  const vCache = dev.zeros([numBlocks, blockSize, nkv, hd], 'f16');
  const keys: SeqRows = [];
  const values: SeqRows = [];
  lengths.forEach((l, s) => {
    const k = roundToF16(uniform(rand, l * width));
    const v = roundToF16(uniform(rand, l * width));
    keys.push(Array.from({ length: l }, (_, j) => k.subarray(j * width, (j + 1) * width)));
    values.push(Array.from({ length: l }, (_, j) => v.subarray(j * width, (j + 1) * width)));
    const slots = Int32Array.from(
      { length: l },
      (_, j) => tables[s * maxBlocks + Math.floor(j / blockSize)] * blockSize + (j % blockSize),
    );
    dev.writeKv(
      kCache,
      vCache,
      dev.fromArray(k, [l, width], 'f16'),
      dev.fromArray(v, [l, width], 'f16'),
      dev.fromArray(slots, [l], 'i32'),
    );
  });
  const blockTables = dev.fromArray(tables, [lengths.length, maxBlocks], 'i32');
  return { kCache, vCache, blockTables, keys, values, tables, numBlocks, maxBlocks };
}
