// --kv-blocks / --kv-memory-fraction / --block-size, shared by `up` and `coordinator`: how the
// workers size their KV cache. Neither count nor share means each worker's device default
// (cpu: a fixed count, cuda: a share of the memory left after the weights).

import type { KvCacheRequest } from '../cluster/kv-cache.js';
import { intFlag, UsageError } from './args.js';

export const KV_USAGE = `KV cache of each worker: --kv-blocks N blocks, or --kv-memory-fraction F (0 < F <= 1) of the
memory its device has free once its weights are loaded. The coordinator serves from the least
count its workers allocated. Default by the worker's device: 1024 blocks on cpu, 0.9 on cuda.`;

export interface KvFlags {
  'kv-blocks'?: string;
  'kv-memory-fraction'?: string;
  'block-size'?: string;
}

export function kvCacheFromFlags(flags: KvFlags): KvCacheRequest {
  const blocks = flags['kv-blocks'];
  const fraction = flags['kv-memory-fraction'];
  if (blocks !== undefined && fraction !== undefined) {
    throw new UsageError(
      `give --kv-blocks (a block count) or --kv-memory-fraction (a share of the memory left after the weights), not both`,
    );
  }
  const blockSize = intFlag(flags['block-size'], 'block-size', 16);
  if (blockSize < 1) throw new UsageError(`--block-size must be at least 1, got ${blockSize}`);
  if (blocks !== undefined) {
    const numBlocks = intFlag(blocks, 'kv-blocks');
    if (numBlocks < 1) throw new UsageError(`--kv-blocks must be at least 1, got ${numBlocks}`);
    return { blockSize, numBlocks };
  }
  if (fraction !== undefined) {
    const memoryFraction = Number(fraction);
    if (fraction.trim() === '' || !(memoryFraction > 0 && memoryFraction <= 1)) {
      throw new UsageError(`--kv-memory-fraction must be a number in (0, 1], got ${fraction}`);
    }
    return { blockSize, memoryFraction };
  }
  return { blockSize };
}
