// How many KV cache blocks a shard allocates: a fixed count, or as many as fit in a
// fraction of the memory left once its weights are loaded.

import type { ShardSpec } from '@medcluster/proto';
import type { LlamaConfig } from '../checkpoint/types.js';

/** Tokens of one step that the activation reserve covers (a long prefill chunk). */
const RESERVED_STEP_TOKENS = 2048;
/** Backend workspaces, graph pools and allocator slack. */
const RESERVED_FIXED_BYTES = 256 * 2 ** 20;

/** Bytes of K and V for one block of blockSize positions across the shard's layers. */
export function kvBytesPerBlock(config: LlamaConfig, spec: ShardSpec, blockSize: number): number {
  const layers = spec.layerEnd - spec.layerStart;
  const kvHeads = config.numKvHeads / spec.tpSize;
  return layers * blockSize * 2 * kvHeads * config.headDim * 2;
}

/**
 * Memory a step's intermediates may need beside the cache: per token the fp32 residual
 * stream and its deltas, the f16 q/k/v/attention rows and the f16 MLP rows of one layer
 * (intermediates are freed layer by layer), for a step of RESERVED_STEP_TOKENS tokens, plus
 * the f16 copy of a weight matrix that large-M CUDA matmuls dequantize into.
 */
export function activationReserveBytes(config: LlamaConfig, spec: ShardSpec): number {
  const tp = spec.tpSize;
  const perToken =
    4 * config.hiddenSize * 4 +
    2 * ((2 * config.numHeads + 2 * config.numKvHeads) / tp) * config.headDim +
    2 * 3 * (config.intermediateSize / tp);
  // Large-M matmuls may dequantize the largest weight matrix (fused gate/up) to f16 first.
  const dequantScratch = 2 * config.hiddenSize * ((2 * config.intermediateSize) / tp);
  return RESERVED_STEP_TOKENS * perToken + dequantScratch + RESERVED_FIXED_BYTES;
}

/** The number of blocks that a fraction of `freeBytes` holds after the activation reserve. */
export function kvBlocksFromMemory(
  freeBytes: number,
  config: LlamaConfig,
  spec: ShardSpec,
  blockSize: number,
  memoryFraction: number,
): number {
  if (!(memoryFraction > 0 && memoryFraction <= 1)) {
    throw new RangeError(`KV cache memory fraction ${memoryFraction} must be in (0, 1]`);
  }
  const perBlock = kvBytesPerBlock(config, spec, blockSize);
  const reserve = activationReserveBytes(config, spec);
  const budget = freeBytes * memoryFraction - reserve;
  const blocks = Math.floor(budget / perBlock);
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
  if (blocks < 1) {
    throw new RangeError(
      `KV cache: ${gib(freeBytes)} free after the weights x fraction ${memoryFraction} leaves ${gib(Math.max(0, budget))} ` +
        `after a ${gib(reserve)} activation reserve, less than one ${blockSize}-token block (${gib(perBlock)})`,
    );
  }
  return blocks;
}
