import { describe, expect, it } from 'vitest';
import type { CheckpointShape } from '../checkpoint/layout.js';
import { TensorParallelError, tpSlice, vocabShard } from './tp-slice.js';

const MEDITRON_70B: CheckpointShape = {
  numLayers: 80,
  hiddenSize: 8192,
  intermediateSize: 28672,
  numHeads: 64,
  numKvHeads: 8,
  headDim: 128,
  vocabRows: 32019,
  quant: { groupSize: 128 },
};

describe('vocabShard', () => {
  for (const rows of [32000, 32017, 32019, 7]) {
    for (const tp of [1, 2, 4, 8]) {
      if (rows < tp) continue;
      it(`covers all ${rows} rows exactly once over tp ${tp}, sizes within one`, () => {
        let next = 0;
        const sizes: number[] = [];
        for (let r = 0; r < tp; r++) {
          const { start, end } = vocabShard(rows, tp, r);
          expect(start).toBe(next);
          sizes.push(end - start);
          next = end;
        }
        expect(next).toBe(rows);
        expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
      });
    }
  }

  it('splits 32019 rows over 4 as 8005, 8005, 8005, 8004', () => {
    expect([0, 1, 2, 3].map((r) => vocabShard(32019, 4, r))).toEqual([
      { start: 0, end: 8005 },
      { start: 8005, end: 16010 },
      { start: 16010, end: 24015 },
      { start: 24015, end: 32019 },
    ]);
  });

  it('rejects a rank out of range', () => {
    expect(() => vocabShard(32019, 2, 2)).toThrow(TensorParallelError);
  });
});

describe('tpSlice', () => {
  it('splits q_proj by whole query heads along dim 1 of qweight/qzeros/scales', () => {
    const s = tpSlice(MEDITRON_70B, 'q_proj', 4, 1);
    expect(s).toMatchObject({
      split: 'column',
      inputs: { start: 0, end: 8192 },
      outputs: { start: 2048, end: 4096 },
      heads: { start: 16, end: 32 },
      qweight: { dim: 1, start: 256, end: 512 },
      qzeros: { dim: 1, start: 256, end: 512 },
      scales: { dim: 1, start: 2048, end: 4096 },
    });
  });

  it('splits k_proj by whole KV heads', () => {
    const s = tpSlice(MEDITRON_70B, 'k_proj', 8, 7);
    expect(s.heads).toEqual({ start: 7, end: 8 });
    expect(s.outputs).toEqual({ start: 896, end: 1024 });
    expect(s.qweight).toEqual({ dim: 1, start: 112, end: 128 });
  });

  it('splits down_proj rows on AWQ group boundaries along dim 0', () => {
    const s = tpSlice(MEDITRON_70B, 'down_proj', 8, 3);
    expect(s).toMatchObject({
      split: 'row',
      inputs: { start: 10752, end: 14336 },
      outputs: { start: 0, end: 8192 },
      qweight: { dim: 0, start: 10752, end: 14336 },
      qzeros: { dim: 0, start: 84, end: 112 },
      scales: { dim: 0, start: 84, end: 112 },
    });
    expect(s.heads).toBeUndefined();
  });

  it('covers every column of gate_proj and every row group of o_proj across ranks', () => {
    for (const tp of [1, 2, 4, 8]) {
      const gates = Array.from({ length: tp }, (_, r) => tpSlice(MEDITRON_70B, 'gate_proj', tp, r));
      expect(gates[0].qweight.start).toBe(0);
      expect(gates[tp - 1].qweight.end).toBe(28672 / 8);
      const os = Array.from({ length: tp }, (_, r) => tpSlice(MEDITRON_70B, 'o_proj', tp, r));
      for (let r = 1; r < tp; r++) expect(os[r].scales.start).toBe(os[r - 1].scales.end);
      expect(os[tp - 1].scales.end).toBe(8192 / 128);
    }
  });
});
