import { ControlMessageError } from '@medcluster/proto';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_CPU_KV_BLOCKS,
  DEFAULT_CUDA_KV_MEMORY_FRACTION,
  describeKvGeometry,
  type KvReport,
  kvCacheForDevice,
  kvGeometryFromReports,
} from './kv-cache.js';

describe('kvCacheForDevice', () => {
  it('passes a count or a share through, and picks the device default when neither is given', () => {
    expect(kvCacheForDevice({ blockSize: 16, numBlocks: 64 }, 'cuda')).toEqual({
      blockSize: 16,
      numBlocks: 64,
    });
    expect(kvCacheForDevice({ blockSize: 16, memoryFraction: 0.5 }, 'cpu')).toEqual({
      blockSize: 16,
      memoryFraction: 0.5,
    });
    expect(kvCacheForDevice({ blockSize: 16 }, 'cpu')).toEqual({
      blockSize: 16,
      numBlocks: DEFAULT_CPU_KV_BLOCKS,
    });
    expect(kvCacheForDevice({ blockSize: 32 }, 'cuda')).toEqual({
      blockSize: 32,
      memoryFraction: DEFAULT_CUDA_KV_MEMORY_FRACTION,
    });
  });

  it('refuses both, and values out of range, before any worker is started', () => {
    expect(() => kvCacheForDevice({ blockSize: 16, numBlocks: 8, memoryFraction: 0.5 }, 'cpu')).toThrow(
      'kvCache: give numBlocks (8) or memoryFraction (0.5), not both',
    );
    expect(() => kvCacheForDevice({ blockSize: 16, memoryFraction: 2 }, 'cuda')).toThrow(ControlMessageError);
    expect(() => kvCacheForDevice({ blockSize: 16, numBlocks: 0 }, 'cpu')).toThrow(/numBlocks/);
  });
});

describe('kvGeometryFromReports', () => {
  const share = { blockSize: 16, memoryFraction: 0.9 };

  it('takes the least count: every block id handed out must exist on every worker', () => {
    const reports: KvReport[] = [
      { workerId: 'w0', assigned: share, kvBlocks: 900 },
      { workerId: 'w1', assigned: share, kvBlocks: 450 },
      { workerId: 'w2', assigned: share, kvBlocks: 901 },
    ];
    const geometry = kvGeometryFromReports(reports);
    expect(geometry).toEqual({ numBlocks: 450, blockSize: 16 });
    expect(describeKvGeometry(geometry, reports)).toBe(
      'KV cache: 450 blocks of 16 tokens (the least the workers allocated: w0 900, w1 450, w2 901)',
    );
  });

  it('keeps an explicit count, and refuses a worker that allocated another', () => {
    const fixed = { blockSize: 16, numBlocks: 64 };
    const reports: KvReport[] = [
      { workerId: 'w0', assigned: fixed, kvBlocks: 64 },
      { workerId: 'w1', assigned: fixed, kvBlocks: 64 },
    ];
    expect(kvGeometryFromReports(reports)).toEqual({ numBlocks: 64, blockSize: 16 });
    expect(describeKvGeometry({ numBlocks: 64, blockSize: 16 }, reports)).toBe(
      'KV cache: 64 blocks of 16 tokens',
    );
    expect(() =>
      kvGeometryFromReports([...reports, { workerId: 'w2', assigned: fixed, kvBlocks: 32 }]),
    ).toThrow('worker w2 allocated 32 KV cache blocks, not the 64 it was assigned');
  });

  it('refuses a missing report, mixed block sizes, and no workers', () => {
    expect(() => kvGeometryFromReports([{ workerId: 'w0', assigned: share, kvBlocks: undefined }])).toThrow(
      'worker w0 is ready but did not report how many KV cache blocks it allocated',
    );
    expect(() =>
      kvGeometryFromReports([
        { workerId: 'w0', assigned: share, kvBlocks: 10 },
        { workerId: 'w1', assigned: { ...share, blockSize: 32 }, kvBlocks: 10 },
      ]),
    ).toThrow('worker w1 has 32-token KV blocks, worker w0 16-token ones');
    expect(() => kvGeometryFromReports([])).toThrow('no worker reported a KV cache');
  });
});
