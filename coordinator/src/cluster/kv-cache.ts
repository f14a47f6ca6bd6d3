// How big the KV cache is. The user asks for a block count or for a share of the memory each
// worker has free once its weights are loaded; every worker allocates and reports its count; the
// scheduler then hands out block ids below the least of those counts, because every stage and
// every tensor-parallel rank must hold every block id a step names.

import type { DeviceKind } from '@medcluster/kernels';
import { type KvCacheSpec, type KvGeometry, kvCacheSchema } from '@medcluster/proto';

/** Blocks a CPU worker allocates when neither a count nor a share is asked for. */
export const DEFAULT_CPU_KV_BLOCKS = 1024;
/**
 * Share of the memory left after the weights that a CUDA worker's cache takes when neither is
 * asked for: a GPU serves nothing else, and the worker reserves step activations apart.
 */
export const DEFAULT_CUDA_KV_MEMORY_FRACTION = 0.9;

/**
 * What the user asked for: numBlocks, or memoryFraction, or neither (each worker's device then
 * picks the default). Giving both is refused.
 */
export interface KvCacheRequest {
  /** Token positions per block. */
  blockSize: number;
  numBlocks?: number;
  memoryFraction?: number;
}

/** A worker's KV cache as assigned, and the block count it reported once loaded. */
export interface KvReport {
  workerId: string;
  assigned: KvCacheSpec;
  /** Undefined if the worker did not say, which is refused. */
  kvBlocks: number | undefined;
}

/** The assignment's kvCache for a worker on `device`: the request, or that device's default. */
export function kvCacheForDevice(request: KvCacheRequest, device: DeviceKind): KvCacheSpec {
  const { blockSize, numBlocks, memoryFraction } = request;
  const chosen =
    numBlocks !== undefined || memoryFraction !== undefined
      ? { blockSize, numBlocks, memoryFraction }
      : device === 'cuda'
        ? { blockSize, memoryFraction: DEFAULT_CUDA_KV_MEMORY_FRACTION }
        : { blockSize, numBlocks: DEFAULT_CPU_KV_BLOCKS };
  // Validated here, where the caller can still be told, rather than when a worker decodes it.
  return kvCacheSchema(chosen, 'kvCache');
}

/** The least block count the workers reported: ids below it exist on every worker. */
export function kvGeometryFromReports(reports: readonly KvReport[]): KvGeometry {
  if (reports.length === 0) throw new Error('no worker reported a KV cache');
  const blockSize = reports[0].assigned.blockSize;
  const counts: number[] = [];
  for (const { workerId, assigned, kvBlocks } of reports) {
    if (kvBlocks === undefined) {
      throw new Error(`worker ${workerId} is ready but did not report how many KV cache blocks it allocated`);
    }
    if (assigned.blockSize !== blockSize) {
      throw new Error(
        `worker ${workerId} has ${assigned.blockSize}-token KV blocks, worker ${reports[0].workerId} ${blockSize}-token ones`,
      );
    }
    if ('numBlocks' in assigned && kvBlocks !== assigned.numBlocks) {
      throw new Error(
        `worker ${workerId} allocated ${kvBlocks} KV cache blocks, not the ${assigned.numBlocks} it was assigned`,
      );
    }
    counts.push(kvBlocks);
  }
  return { numBlocks: Math.min(...counts), blockSize };
}

/** One log line: the geometry and where it came from. */
export function describeKvGeometry(geometry: KvGeometry, reports: readonly KvReport[]): string {
  const counts = reports.map((r) => `${r.workerId} ${r.kvBlocks}`).join(', ');
  const sized = reports.some((r) => 'memoryFraction' in r.assigned);
  return (
    `KV cache: ${geometry.numBlocks} blocks of ${geometry.blockSize} tokens` +
    (sized ? ` (the least the workers allocated: ${counts})` : '')
  );
}
