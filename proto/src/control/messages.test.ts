import { describe, expect, it } from 'vitest';
import { controlCodecs } from './codec.js';
import { type Assignment, kvCacheSchema, type LoadEvent } from './messages.js';
import { placementBucket } from './placement.js';
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

describe('placement record (the coordinator key-value store)', () => {
  const record = {
    v: 1 as const,
    coordinatorId: 'coordinator-1',
    updatedAt: 1,
    modelDir: '/models/tiny',
    tp: 1,
    pp: 1,
    kvCache: { numBlocks: 300, blockSize: 16 },
    workers: [
      {
        workerId: 'w0',
        grpcAddress: '10.0.0.1:7000',
        device: 'cuda' as const,
        assignment: { ...assignment, deadlines: { collectiveMs: 5000, stepMs: 60_000 } },
        kvBlocks: 321,
      },
    ],
  };
  const codec = controlCodecs.placement;

  it('round-trips, assignments and deadlines included', () => {
    expect(codec.decode(codec.encode(record))).toEqual(record);
    expect(placementBucket('obs')).toBe('medcluster-obs');
  });

  it('refuses a record whose workers do not fill tp x pp, or hold fewer blocks than it schedules', () => {
    expect(() => codec.decode(enc({ ...record, tp: 2 }))).toThrow(
      'PlacementRecord.workers: 1 workers for tp 2 x pp 1',
    );
    expect(() => codec.decode(enc({ ...record, kvCache: { numBlocks: 400, blockSize: 16 } }))).toThrow(
      /worker w0 holds 321 KV blocks, fewer than the 400/,
    );
    expect(() =>
      codec.decode(enc({ ...record, workers: [{ ...record.workers[0], workerId: 'a.b' }] })),
    ).toThrow(/workers\[0\]\.workerId/);
    expect(() => placementBucket('a.b')).toThrow(ControlMessageError);
  });
});
