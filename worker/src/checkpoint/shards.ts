// Splitting the tensor list into safetensors shards and writing one shard with bounded memory.

import { open } from 'node:fs/promises';
import { CheckpointError } from './errors.js';
import { type ExpectedTensor, tensorByteLength } from './layout.js';
import { encodeSafetensorsHeader } from './safetensors.js';
import type { TensorSource } from './tensor-source.js';

export function shardFileName(index: number, count: number): string {
  const pad = (i: number) => String(i).padStart(5, '0');
  return `model-${pad(index + 1)}-of-${pad(count)}.safetensors`;
}

/**
 * Splits tensors, in order, into `count` contiguous non-empty runs of roughly equal bytes: each tensor
 * goes to the shard its midpoint falls in, then runs are nudged so that none is empty.
 */
export function planShards(tensors: readonly ExpectedTensor[], count: number): ExpectedTensor[][] {
  if (tensors.length < count)
    throw new RangeError(`planShards: ${tensors.length} tensors cannot fill ${count} shards`);
  const sizes = tensors.map((t) => tensorByteLength(t.dtype, t.shape));
  const total = sizes.reduce((a, b) => a + b, 0);
  const shards: ExpectedTensor[][] = Array.from({ length: count }, () => []);
  let start = 0;
  let previous = 0;
  tensors.forEach((tensor, i) => {
    const byMidpoint = total === 0 ? 0 : Math.floor(((start + sizes[i] / 2) * count) / total);
    let shard = i === 0 ? 0 : Math.min(Math.max(byMidpoint, previous), previous + 1);
    shard = Math.max(shard, count - (tensors.length - i)); // leave a tensor for each later shard
    shards[shard].push(tensor);
    start += sizes[i];
    previous = shard;
  });
  return shards;
}

/**
 * Writes a safetensors file: header, then each tensor's chunks. One write is kept in flight while the
 * next chunk is produced, so generation and disk overlap and at most two chunks are in memory.
 */
export async function writeShard(
  file: string,
  tensors: readonly ExpectedTensor[],
  source: TensorSource,
  onBytes: (bytes: number) => void,
): Promise<void> {
  const header = encodeSafetensorsHeader(tensors);
  const handle = await open(file, 'w');
  try {
    let position = 0;
    let pending: Promise<unknown> = Promise.resolve();
    const write = async (bytes: Uint8Array) => {
      await pending;
      pending = handle.write(bytes, 0, bytes.length, position).then(() => onBytes(bytes.length));
      position += bytes.length;
    };
    await write(header.bytes);
    for (const tensor of tensors) {
      const expected = tensorByteLength(tensor.dtype, tensor.shape);
      let produced = 0;
      for (const chunk of source.chunks(tensor)) {
        produced += chunk.length;
        await write(chunk);
      }
      if (produced !== expected) {
        throw new CheckpointError(
          `generator produced ${produced} bytes for ${tensor.name}, expected ${expected} (bug)`,
        );
      }
    }
    await pending;
  } finally {
    await handle.close();
  }
}
