import type { CheckpointShape } from '@medcluster/worker';
import { describe, expect, it } from 'vitest';
import { PlacementError } from './placement-error.js';
import { type PlacementPlan, type PlacementWorker, planPlacement, shardSpecFor } from './plan-placement.js';
import { layerBytesPerRank } from './weight-bytes.js';

const GB = 1e9;
const GIB = 1024 ** 3;

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

const TINY: CheckpointShape = {
  numLayers: 4,
  hiddenSize: 512,
  intermediateSize: 1536,
  numHeads: 8,
  numKvHeads: 4,
  headDim: 64,
  vocabRows: 32019,
  quant: { groupSize: 128 },
};

const gpus = (n: number, memoryBytes = 80 * GIB): PlacementWorker[] =>
  Array.from({ length: n }, (_, i) => ({ id: `gpu${i}`, device: 'cuda' as const, memoryBytes }));

/** Stages cover every layer once, in order, with whole tp groups of distinct workers. */
function expectWellFormed(plan: PlacementPlan, numLayers: number): void {
  expect(plan.stages).toHaveLength(plan.pp);
  let next = 0;
  const seen = new Set<string>();
  for (const [i, stage] of plan.stages.entries()) {
    expect(stage.index).toBe(i);
    expect(stage.layerStart).toBe(next);
    expect(stage.layerEnd).toBeGreaterThan(stage.layerStart);
    next = stage.layerEnd;
    expect(stage.embeds).toBe(i === 0);
    expect(stage.computesLogits).toBe(i === plan.pp - 1);
    expect(stage.ranks.map((r) => r.tpRank)).toEqual(Array.from({ length: plan.tp }, (_, r) => r));
    for (const r of stage.ranks) {
      expect(seen.has(r.workerId)).toBe(false);
      seen.add(r.workerId);
    }
    expect(stage.bytesPerRank).toBeLessThanOrEqual(stage.availableBytesPerRank);
  }
  expect(next).toBe(numLayers);
}

describe('weight estimates', () => {
  it('matches MODEL.md: one 70B block is 444.6 MB of int4 weights, scales and zeros', () => {
    expect(layerBytesPerRank(MEDITRON_70B, 1) / 1e6).toBeCloseTo(444.6, 0);
    // Each rank holds a tp-th of the linears; norms are replicated.
    const normBytes = 2 * 8192 * 2;
    expect(layerBytesPerRank(MEDITRON_70B, 4) - normBytes).toBeCloseTo(
      (layerBytesPerRank(MEDITRON_70B, 1) - normBytes) / 4,
      3,
    );
  });
});

describe('planPlacement on Meditron-70B', () => {
  for (const pp of [1, 2, 4, 8]) {
    for (const tp of [1, 2, 4, 8]) {
      it(`places 80 layers over pp ${pp} x tp ${tp}`, () => {
        const plan = planPlacement({ config: MEDITRON_70B, workers: gpus(tp * pp), tp, pp });
        expectWellFormed(plan, 80);
        const sizes = plan.stages.map((s) => s.layerEnd - s.layerStart);
        // Equal memory: balanced to within the embedding / lm_head's worth of layers.
        expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(2);
      });
    }
  }

  it('puts everything on one 80 GB card at tp 1 pp 1', () => {
    const plan = planPlacement({ config: MEDITRON_70B, workers: gpus(1), tp: 1, pp: 1 });
    expect(plan.stages[0]).toMatchObject({ layerStart: 0, layerEnd: 80, embeds: true, computesLogits: true });
    expect(plan.stages[0].bytesPerRank / GB).toBeCloseTo(36.6, 0);
  });

  it('gives more layers to stages with more memory and groups similar workers in a stage', () => {
    const workers: PlacementWorker[] = [
      { id: 'small-a', device: 'cuda', memoryBytes: 24 * GIB },
      { id: 'big-a', device: 'cuda', memoryBytes: 80 * GIB },
      { id: 'small-b', device: 'cuda', memoryBytes: 24 * GIB },
      { id: 'big-b', device: 'cuda', memoryBytes: 80 * GIB },
    ];
    const plan = planPlacement({ config: MEDITRON_70B, workers, tp: 2, pp: 2 });
    expectWellFormed(plan, 80);
    expect(plan.stages[0].ranks.map((r) => r.workerId).sort()).toEqual(['big-a', 'big-b']);
    expect(plan.stages[1].ranks.map((r) => r.workerId).sort()).toEqual(['small-a', 'small-b']);
    const [first, second] = plan.stages.map((s) => s.layerEnd - s.layerStart);
    expect(first).toBeGreaterThan(2.5 * second);
    // Utilizations are close to equal.
    const util = plan.stages.map((s) => s.bytesPerRank / s.availableBytesPerRank);
    expect(Math.abs(util[0] - util[1])).toBeLessThan(0.05);
  });

  it('leaves the smallest extra workers unused', () => {
    const workers = [...gpus(2), { id: 'cpu0', device: 'cpu' as const, memoryBytes: 512 * GIB }];
    const plan = planPlacement({ config: MEDITRON_70B, workers, tp: 2, pp: 1 });
    expect(plan.unusedWorkers).toEqual(['cpu0']);
  });

  it('reserves the KV cache fraction and per-layer KV bytes', () => {
    const base = planPlacement({ config: MEDITRON_70B, workers: gpus(2), tp: 1, pp: 2 });
    const withKv = planPlacement({
      config: MEDITRON_70B,
      workers: gpus(2),
      tp: 1,
      pp: 2,
      kvCacheFraction: 0.4,
      bytesPerLayerKv: 100e6,
    });
    expect(withKv.stages[0].availableBytesPerRank).toBe(Math.floor(80 * GIB * 0.6));
    expect(withKv.stages[0].bytesPerRank).toBeGreaterThan(base.stages[0].bytesPerRank);
  });

  it('hands each worker its ShardSpec', () => {
    const plan = planPlacement({ config: MEDITRON_70B, workers: gpus(4), tp: 2, pp: 2 });
    const last = plan.stages[1];
    const spec = shardSpecFor(plan, last.ranks[1].workerId);
    expect(spec).toEqual({
      stageIndex: 1,
      shard: {
        layerStart: last.layerStart,
        layerEnd: 80,
        tpRank: 1,
        tpSize: 2,
        embeds: false,
        computesLogits: true,
      },
      stageWorkers: last.ranks.map((r) => r.workerId),
    });
    expect(() => shardSpecFor(plan, 'nobody')).toThrow(PlacementError);
  });
});

describe('planPlacement rejections', () => {
  const reject = (req: Parameters<typeof planPlacement>[0], message: RegExp) => {
    expect(() => planPlacement(req)).toThrow(PlacementError);
    expect(() => planPlacement(req)).toThrow(message);
  };

  it('rejects tp outside {1, 2, 4, 8}', () => {
    reject(
      { config: MEDITRON_70B, workers: gpus(3), tp: 3, pp: 1 },
      /tp 3 is not supported: tp must be one of 1, 2, 4, 8/,
    );
    reject({ config: MEDITRON_70B, workers: gpus(16), tp: 16, pp: 1 }, /tp 16 is not supported/);
  });

  it('rejects tp that does not divide the query or KV heads', () => {
    reject(
      { config: { ...MEDITRON_70B, numHeads: 20, hiddenSize: 20 * 128 }, workers: gpus(8), tp: 8, pp: 1 },
      /does not divide the 20 query heads/,
    );
    reject(
      { config: { ...MEDITRON_70B, numKvHeads: 4 }, workers: gpus(8), tp: 8, pp: 1 },
      /does not divide the 4 KV heads/,
    );
  });

  it('rejects a row-parallel split off AWQ group boundaries', () => {
    // intermediate 28672 / 8 = 3584 = 28 groups; 28160 / 8 = 3520 is not a multiple of 128.
    reject(
      { config: { ...MEDITRON_70B, intermediateSize: 28160 }, workers: gpus(8), tp: 8, pp: 1 },
      /down_proj: 28160 input rows over tp 8 gives 3520 rows per rank, not a multiple of the AWQ group size 128/,
    );
    reject(
      {
        config: { ...MEDITRON_70B, numHeads: 8, numKvHeads: 8, headDim: 96, hiddenSize: 8192 },
        workers: gpus(8),
        tp: 8,
        pp: 1,
      },
      /o_proj: 768 input rows over tp 8 gives 96 rows per rank/,
    );
  });

  it('rejects a column split that is not whole int32 columns', () => {
    // 8 KV heads of dim 4: 32 columns over tp 8 = 4 per rank, half an int32.
    reject(
      {
        config: { ...MEDITRON_70B, numHeads: 8, numKvHeads: 8, headDim: 4, hiddenSize: 8192 },
        workers: gpus(8),
        tp: 8,
        pp: 1,
      },
      /q_proj: 32 output columns over tp 8 is not a whole multiple of 8 columns per rank/,
    );
  });

  it('rejects pp larger than the layer count and too few workers', () => {
    reject({ config: MEDITRON_70B, workers: gpus(81), tp: 1, pp: 81 }, /pp 81 exceeds the 80 layers/);
    reject(
      { config: MEDITRON_70B, workers: gpus(7), tp: 4, pp: 2 },
      /tp 4 x pp 2 needs 8 workers, but only 7 are available/,
    );
  });

  it('rejects stages whose weights do not fit, saying how much is needed and available', () => {
    reject(
      { config: MEDITRON_70B, workers: gpus(1, 24 * GIB), tp: 1, pp: 1 },
      /stage 0 \(layers 0\.\.79; workers gpu0\) does not fit: each rank needs 34\.\d\d GiB \(80 layers x 0\.41 GiB \+ embedding \+ lm_head\) but worker gpu0 has 24\.00 GiB usable/,
    );
    reject(
      { config: MEDITRON_70B, workers: gpus(2, 30 * GIB), tp: 1, pp: 2, kvCacheFraction: 0.5 },
      /does not fit: .* 15\.00 GiB usable after reserving 50% for the KV cache/,
    );
  });

  it('rejects duplicate worker ids and bad options', () => {
    reject(
      { config: MEDITRON_70B, workers: [...gpus(1), ...gpus(1)], tp: 2, pp: 1 },
      /worker id gpu0 appears twice/,
    );
    reject(
      { config: MEDITRON_70B, workers: gpus(1), tp: 1, pp: 1, kvCacheFraction: 1 },
      /kvCacheFraction must be in \[0, 1\)/,
    );
    reject({ config: MEDITRON_70B, workers: gpus(1), tp: 1, pp: 0 }, /pp must be a positive integer/);
  });
});

describe('planPlacement on a tiny model', () => {
  for (const tp of [1, 2, 4]) {
    it(`accepts tp ${tp}`, () => {
      const plan = planPlacement({ config: TINY, workers: gpus(tp, GIB), tp, pp: 1 });
      expectWellFormed(plan, 4);
    });
  }

  it('rejects tp 8: 4 KV heads', () => {
    expect(() => planPlacement({ config: TINY, workers: gpus(8, GIB), tp: 8, pp: 1 })).toThrow(
      /does not divide the 4 KV heads/,
    );
  });

  it('places 4 layers over 4 stages and 8 layers over 8 stages, one layer each', () => {
    const four = planPlacement({ config: TINY, workers: gpus(4, GIB), tp: 1, pp: 4 });
    expect(four.stages.map((s) => [s.layerStart, s.layerEnd])).toEqual([
      [0, 1],
      [1, 2],
      [2, 3],
      [3, 4],
    ]);
    const eight = planPlacement({ config: { ...TINY, numLayers: 8 }, workers: gpus(16, GIB), tp: 2, pp: 8 });
    expectWellFormed(eight, 8);
    expect(eight.stages.every((s) => s.layerEnd - s.layerStart === 1)).toBe(true);
  });

  it('rejects pp 5 for 4 layers', () => {
    expect(() => planPlacement({ config: TINY, workers: gpus(5, GIB), tp: 1, pp: 5 })).toThrow(
      /pp 5 exceeds the 4 layers/,
    );
  });
});
