// The paged KV cache of one shard: per layer, K and V tensors of
// [numBlocks, blockSize, localKvHeads, headDim] f16. Which blocks a sequence uses is
// decided by the scheduler (block tables travel with every step); the shard only owns
// the memory.

import type { Device, Tensor } from '@medcluster/kernels';
import type { KvGeometry } from '@medcluster/proto';

/** The cache tensors of one shard: its geometry, for each of its layers and local KV heads. */
export interface KvCacheShape extends KvGeometry {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
}

export class KvCache {
  readonly keys: Tensor[] = [];
  readonly values: Tensor[] = [];

  constructor(
    device: Device,
    readonly shape: KvCacheShape,
  ) {
    const dims = [shape.numBlocks, shape.blockSize, shape.numKvHeads, shape.headDim];
    for (let i = 0; i < shape.numLayers; i++) {
      this.keys.push(device.zeros(dims, 'f16'));
      this.values.push(device.zeros(dims, 'f16'));
    }
  }

  /** Bytes of KV cache per token per layer for a shard holding numKvHeads heads. */
  static bytesPerTokenPerLayer(numKvHeads: number, headDim: number): number {
    return 2 * numKvHeads * headDim * 2;
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t.dispose();
  }
}
