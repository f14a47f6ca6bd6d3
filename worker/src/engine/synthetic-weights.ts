// Random weights of a config's exact shapes, straight into device memory (no checkpoint file),
// so the 70B model can be benchmarked where its checkpoint cannot be downloaded. Packed int4
// weights and zero points are random bits drawn on the device; scales, norms, embeddings and
// lm_head are small, valid fp16 values drawn on the host.

import type { AwqLinear, Device, Tensor } from '@medcluster/kernels';
import { f32ToF16Bits } from '@medcluster/kernels';
import { PROJ_NAMES, type ProjName } from '../checkpoint/layout.js';
import type { LlamaConfig } from '../checkpoint/types.js';
import { projShape } from './model-shape.js';
import { fuseAwqColumns, type LayerWeights, type ShardWeights } from './shard-weights.js';
import { tpSlice, vocabShard } from './tp-slice.js';
import type { ShardSpec } from './types.js';

/** A fast seeded generator (xorshift32): host-side fills of hundreds of MB must stay quick. */
function xorshift(seed: number): () => number {
  let s = (seed ^ 0x9e3779b9) >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
}

/** n fp16 values uniform in [lo, hi), as raw bits (drawn from a 4096-entry table). */
function halfBits(n: number, lo: number, hi: number, next: () => number): Uint16Array {
  const table = new Uint16Array(4096);
  for (let i = 0; i < table.length; i++) table[i] = f32ToF16Bits(lo + ((hi - lo) * (i + 0.5)) / table.length);
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = table[next() & 4095];
  return out;
}

export function syntheticShardWeights(
  device: Device,
  config: LlamaConfig,
  spec: ShardSpec,
  seed: number,
): ShardWeights {
  const next = xorshift(seed);
  let stream = seed * 1_000_003;
  const bits = (shape: number[]) => device.randomBits(shape, 'i32', stream++);
  const half = (shape: number[], lo: number, hi: number) =>
    device.fromArray(
      halfBits(
        shape.reduce((a, b) => a * b, 1),
        lo,
        hi,
        next,
      ),
      shape,
      'f16',
    );
  const g = config.quant.groupSize;

  const awq = (proj: ProjName): AwqLinear => {
    const slice = tpSlice(config, proj, spec.tpSize, spec.tpRank);
    const { inFeatures, outFeatures } = projShape(config, proj);
    const k = slice.split === 'row' ? slice.inputs.end - slice.inputs.start : inFeatures;
    const n = slice.split === 'column' ? slice.outputs.end - slice.outputs.start : outFeatures;
    // Scales near AutoAWQ's for unit-variance weights in [-8, 7] steps of 1/sqrt(K).
    const s = 1 / (8 * Math.sqrt(inFeatures));
    return {
      qweight: bits([k, n / 8]),
      qzeros: bits([k / g, n / 8]),
      scales: half([k / g, n], 0.5 * s, 1.5 * s),
      groupSize: g,
    };
  };

  const layers: LayerWeights[] = [];
  for (let i = spec.layerStart; i < spec.layerEnd; i++) {
    const [q, k, v, o, gate, up, down] = PROJ_NAMES.map(awq);
    layers.push({
      inputNorm: half([config.hiddenSize], 0.9, 1.1),
      postAttentionNorm: half([config.hiddenSize], 0.9, 1.1),
      qkv: device.packAwq(fuseAwqColumns(device, [q, k, v])),
      o: device.packAwq(o),
      gateUp: device.packAwq(fuseAwqColumns(device, [gate, up]), { gated: true }),
      down: device.packAwq(down),
    });
  }
  const weights: ShardWeights = { layers };
  if (spec.embeds) weights.embed = half([config.vocabRows, config.hiddenSize], -1, 1);
  if (spec.computesLogits) {
    weights.finalNorm = half([config.hiddenSize], 0.9, 1.1);
    weights.vocabRange = vocabShard(config.vocabRows, spec.tpSize, spec.tpRank);
    const rows = weights.vocabRange.end - weights.vocabRange.start;
    const bound = 4 / Math.sqrt(config.hiddenSize);
    weights.lmHead = half([rows, config.hiddenSize], -bound, bound) as Tensor;
  }
  return weights;
}
