import { describe, expect, it } from 'vitest';
import { controlCodecs } from './codec.js';
import { type Assignment, kvCacheSchema, type LoadEvent } from './messages.js';
import { ControlMessageError } from './schema.js';

const assignment: Assignment = {
  v: 1,
  assignmentId: 'a-1',
  modelDir: '/models/tiny',
  stageIndex: 0,
  shard: { layerStart: 0, layerEnd: 4, tpRank: 0, tpSize: 1, embeds: true, computesLogits: true },
  kvCache: { blockSize: 16, memoryFraction: 0.9 },
  collectiveGroup: 'stage-0',
  peers: [],
};

const ready: LoadEvent = {
  v: 1,
  workerId: 'w0',
  assignmentId: 'a-1',
  phase: 'ready',
  bytesLoaded: 10,
  bytesTotal: 10,
  kvBlocks: 321,
};

const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
const kv = (value: unknown) => kvCacheSchema(value, 'kvCache');

describe('KV cache message', () => {
  it('takes a block count or a memory share, and keeps only the one given', () => {
    expect(kv({ blockSize: 16, numBlocks: 64 })).toEqual({ blockSize: 16, numBlocks: 64 });
    expect(kv({ blockSize: 16, memoryFraction: 1 })).toEqual({ blockSize: 16, memoryFraction: 1 });
    expect(kv({ blockSize: 16, memoryFraction: 0.001, extra: 1 })).toEqual({
      blockSize: 16,
      memoryFraction: 0.001,
    });
    const codec = controlCodecs.assignment;
    expect(codec.decode(codec.encode(assignment))).toEqual(assignment);
  });

  it('refuses both, neither, and values out of range, naming the field', () => {
    expect(() => kv({ blockSize: 16, numBlocks: 64, memoryFraction: 0.5 })).toThrow(
      'kvCache: give numBlocks (64) or memoryFraction (0.5), not both',
    );
    expect(() => kv({ blockSize: 16 })).toThrow(/kvCache: needs numBlocks .* or memoryFraction/);
    expect(() => kv({ blockSize: 16, memoryFraction: 0 })).toThrow(
      'kvCache.memoryFraction: expected a number in (0, 1], got number 0',
    );
    expect(() => kv({ blockSize: 16, memoryFraction: 1.5 })).toThrow(
      /memoryFraction: expected a number in \(0, 1\]/,
    );
    expect(() => kv({ blockSize: 16, memoryFraction: '0.5' })).toThrow(/got string "0.5"/);
    expect(() => kv({ blockSize: 16, numBlocks: 0 })).toThrow(
      'kvCache.numBlocks: expected a number >= 1, got number 0',
    );
    expect(() => kv({ blockSize: 16, numBlocks: 2.5 })).toThrow('kvCache.numBlocks: expected an integer');
    expect(() => kv({ blockSize: 0, numBlocks: 8 })).toThrow('kvCache.blockSize: expected a number >= 1');
    expect(() =>
      controlCodecs.assignment.decode(enc({ ...assignment, kvCache: { blockSize: 16, memoryFraction: -1 } })),
    ).toThrow(ControlMessageError);
    expect(() =>
      controlCodecs.assignment.decode(enc({ ...assignment, kvCache: { blockSize: 16, memoryFraction: -1 } })),
    ).toThrow(/Assignment\.kvCache\.memoryFraction/);
  });
});

describe('assignment', () => {
  it('may name synthetic weights instead of the checkpoint, validated like the rest', () => {
    const codec = controlCodecs.assignment;
    const synthetic = { ...assignment, synthetic: { preset: 'llama-2-70b', seed: 1, layers: 2 } };
    expect(codec.decode(codec.encode(synthetic))).toEqual(synthetic);
    expect(() => codec.decode(enc({ ...assignment, synthetic: { preset: '', seed: 1 } }))).toThrow(
      /Assignment\.synthetic\.preset/,
    );
    expect(() => codec.decode(enc({ ...assignment, synthetic: { preset: 'tiny', seed: -1 } }))).toThrow(
      /Assignment\.synthetic\.seed/,
    );
  });
});

describe('load event', () => {
  it('carries the allocated block count when ready', () => {
    const codec = controlCodecs.load;
    expect(codec.decode(codec.encode(ready))).toEqual(ready);
    const { kvBlocks: _, ...loading } = { ...ready, phase: 'loading' as const };
    expect(codec.decode(codec.encode(loading))).toEqual(loading);
  });

  it('says which transport a tensor-parallel stage chose, and refuses an unknown one', () => {
    const codec = controlCodecs.load;
    for (const collective of ['grpc', 'ipc', 'nccl'] as const) {
      expect(codec.decode(codec.encode({ ...ready, collective }))).toEqual({ ...ready, collective });
    }
    expect(() => codec.decode(enc({ ...ready, collective: 'shm' }))).toThrow(/LoadEvent\.collective/);
  });

  it('refuses a ready event without a positive block count', () => {
    const { kvBlocks: _, ...bare } = ready;
    expect(() => controlCodecs.load.decode(enc(bare))).toThrow(
      'LoadEvent: a ready load event must say how many KV cache blocks the worker allocated (kvBlocks)',
    );
    expect(() => controlCodecs.load.encode({ ...ready, kvBlocks: 0 })).toThrow(
      'LoadEvent.kvBlocks: expected a number >= 1, got number 0',
    );
  });
});
