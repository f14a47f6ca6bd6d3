// Synthetic weights must have exactly the shapes and dtypes a checkpoint's shard has, so a
// benchmark on them measures the same work as the real model.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDevice, isPackedAwq, type Tensor } from '@medcluster/kernels';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { makeModel } from '../checkpoint/make-model.js';
import { openCheckpoint } from '../checkpoint/open.js';
import { presetConfig } from '../checkpoint/presets.js';
import type { Checkpoint } from '../checkpoint/types.js';
import { disposeShardWeights, loadShardWeights, type ShardWeights } from './shard-weights.js';
import { syntheticShardWeights } from './synthetic-weights.js';

function shapes(w: ShardWeights) {
  const t = (x: Tensor | undefined) => (x ? `${x.dtype}[${x.shape.join(',')}]` : 'none');
  return {
    layers: w.layers.map((l) =>
      Object.fromEntries(
        Object.entries(l).map(([k, v]) =>
          'qweight' in v ? [k, [t(v.qweight), t(v.qzeros), t(v.scales), v.groupSize]] : [k, t(v as Tensor)],
        ),
      ),
    ),
    embed: t(w.embed),
    finalNorm: t(w.finalNorm),
    lmHead: t(w.lmHead),
    vocabRange: w.vocabRange,
  };
}

describe('synthetic weights', () => {
  const device = createDevice({ kind: 'cpu', threads: 1 });
  const overrides = { layers: 2, hidden: 256, heads: 4, kvHeads: 2, intermediate: 512, vocabRows: 1001 };
  let dir: string;
  let checkpoint: Checkpoint;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'medcluster-synthetic-'));
    await makeModel({ out: dir, preset: 'tiny', seed: 3, ...overrides });
    checkpoint = await openCheckpoint(dir);
  });
  afterAll(async () => {
    await device.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('the preset config equals what the generated checkpoint says', () => {
    expect(presetConfig('tiny', overrides)).toEqual(checkpoint.config);
  });

  for (const [tpSize, tpRank, embeds, computesLogits] of [
    [1, 0, true, true],
    [2, 1, false, true],
    [2, 0, true, false],
  ] as const) {
    test(`shapes match a checkpoint shard (tp=${tpSize} rank ${tpRank})`, async () => {
      const spec = { layerStart: 0, layerEnd: 2, tpSize, tpRank, embeds, computesLogits };
      const real = loadShardWeights(device, checkpoint, spec);
      const synthetic = syntheticShardWeights(device, checkpoint.config, spec, 7);
      expect(shapes(synthetic)).toEqual(shapes(real));
      // Values are finite and small: a forward pass on them stays numerically sane.
      const down = synthetic.layers[0].down;
      if (isPackedAwq(down)) throw new Error('the cpu device keeps the AutoAWQ tensors');
      const scales = (await down.scales.read()) as Float32Array;
      expect(scales.every((s) => Number.isFinite(s) && s > 0 && s < 0.1)).toBe(true);
      disposeShardWeights(real);
      disposeShardWeights(synthetic);
      await device.sync();
    });
  }
});
