import { describe, expect, it } from 'vitest';
import { CheckpointError } from './errors.js';
import { expectedTensors, tensorByteLength, totalTensorBytes } from './layout.js';
import { resolveModelSpec } from './presets.js';
import { planShards } from './shards.js';

describe('llama-2-70b preset shapes (MODEL.md, nothing written)', () => {
  const spec = resolveModelSpec('llama-2-70b');

  it('has the Llama-2-70B dimensions', () => {
    expect(spec).toMatchObject({
      numLayers: 80,
      hiddenSize: 8192,
      intermediateSize: 28672,
      numHeads: 64,
      numKvHeads: 8,
      headDim: 128,
      vocabRows: 32000,
      quant: { groupSize: 128 },
      shards: 4,
    });
  });

  it('has 1843 tensors and 36.61 GB, 444.6 MB per block', () => {
    const tensors = expectedTensors(spec);
    expect(tensors).toHaveLength(80 * 23 + 3);
    expect(tensors).toHaveLength(1843);
    expect(totalTensorBytes(spec) / 1e9).toBeCloseTo(36.61, 2);
    // one block's int4 weights, scales, zeros and its two norms (minus model.norm of this 1-layer shape)
    const oneBlock = totalTensorBytes({ ...spec, numLayers: 1, vocabRows: 0 }) - 8192 * 2;
    expect(oneBlock / 1e6).toBeCloseTo(444.6, 1);
    const byName = new Map(tensors.map((t) => [t.name, t]));
    expect(byName.get('model.layers.79.self_attn.k_proj.qweight')).toEqual({
      name: 'model.layers.79.self_attn.k_proj.qweight',
      dtype: 'I32',
      shape: [8192, 128],
    });
    expect(byName.get('model.layers.0.mlp.down_proj.qzeros')?.shape).toEqual([224, 1024]);
    expect(byName.get('model.layers.0.mlp.gate_proj.scales')?.shape).toEqual([64, 28672]);
    expect(byName.get('lm_head.weight')?.shape).toEqual([32000, 8192]);
  });

  it('splits into 4 shards of similar size, in order', () => {
    const shards = planShards(expectedTensors(spec), 4);
    const bytes = shards.map((s) => s.reduce((sum, t) => sum + tensorByteLength(t.dtype, t.shape), 0));
    const mean = totalTensorBytes(spec) / 4;
    for (const b of bytes) expect(Math.abs(b - mean) / mean).toBeLessThan(0.05);
    expect(shards.flat().map((t) => t.name)).toEqual(expectedTensors(spec).map((t) => t.name));
  });
});

describe('preset overrides', () => {
  it('applies overrides and derives head_dim', () => {
    expect(
      resolveModelSpec('tiny', {
        layers: 1,
        hidden: 256,
        heads: 4,
        kvHeads: 2,
        intermediate: 384,
        vocabRows: 100,
      }),
    ).toMatchObject({
      numLayers: 1,
      hiddenSize: 256,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 64,
      intermediateSize: 384,
      vocabRows: 100,
    });
  });

  it.each([
    [{ hidden: 500, heads: 3, kvHeads: 1 }, /hidden size \(500\) must be a multiple of heads \(3\)/],
    [{ heads: 8, kvHeads: 3 }, /heads \(8\) must be a multiple of KV heads \(3\)/],
    [{ intermediate: 1000 }, /intermediate size \(1000\) .* multiple of the group size 128/],
    [{ hidden: 192, heads: 2, kvHeads: 1 }, /hidden size \(192\) .* multiple of the group size 128/],
    [{ hidden: 256, heads: 64, kvHeads: 1 }, /KV heads x head_dim \(4\) .* multiple of 8/],
    [{ layers: 0 }, /numLayers must be a positive integer, got 0/],
    [{ vocabRows: 1.5 }, /vocabRows must be a positive integer/],
  ])('rejects %j', (overrides, message) => {
    expect(() => resolveModelSpec('tiny', overrides)).toThrow(CheckpointError);
    expect(() => resolveModelSpec('tiny', overrides)).toThrow(message);
  });

  it('rejects an unknown preset', () => {
    expect(() => resolveModelSpec('llama-3')).toThrow(/unknown preset "llama-3"/);
  });
});

describe('planShards', () => {
  it('never leaves a shard empty, even when one tensor dominates', () => {
    const tensors = expectedTensors({
      ...resolveModelSpec('tiny', {
        layers: 1,
        hidden: 128,
        heads: 1,
        kvHeads: 1,
        intermediate: 128,
        vocabRows: 100000,
      }),
    });
    const shards = planShards(tensors, 4);
    expect(shards.every((s) => s.length > 0)).toBe(true);
    expect(shards.flat()).toEqual(tensors);
  });
});
