// Decode steps as replayed CUDA graphs, one per (batch bucket, block-table width bucket).
//
// Issuing a decode step op by op costs the worker ~7 us of JS + addon dispatch per op,
// ~1,000 ops per step for 80 layers: milliseconds per token, on the critical path at
// small batches. A captured graph replays the whole step in one call. A graph runs on
// fixed buffers, so each bucket owns static input tensors that every step overwrites:
// a step of n sequences runs in the smallest bucket B >= n, with the rows past n padded
// (token 0 at position 0, writing its K/V into a padding block that no sequence owns).
// The block-table width is bucketed too, because the attention kernel's split of the
// context is chosen from it at capture time. The first step of a bucket runs eagerly
// (the graph's warm-up, a real step) and the next ones replay. Tensor-parallel ranks whose
// collective runs on the device capture its all-reduces too; their ranks must agree on every
// step's shapes, so a bucket whose capture failed keeps its padded shapes (padBrokenBuckets).

import type { Device, Graph, Tensor } from '@medcluster/kernels';
import type { StepInputs } from './step-inputs.js';

/** The device tensors a step reads; a graph bucket owns one set and overwrites it per step. */
export interface StepTensors {
  /** Token ids [T] i32 (first stage). */
  ids?: Tensor;
  /** Hidden states [T, hidden] f32 from the previous stage (other stages). */
  hidden?: Tensor;
  positions: Tensor;
  tokenSeq: Tensor;
  slots: Tensor;
  blockTables: Tensor;
}

/** Batch sizes that get a graph: a step of n sequences pads up to the next one. */
export const BATCH_BUCKETS: readonly number[] = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256];
const MIN_TABLE_WIDTH = 16;

export interface DecodeGraphsOptions {
  device: Device;
  /** Whether the stage embeds token ids (else it takes hidden states). */
  embeds: boolean;
  hiddenSize: number;
  blockSize: number;
  /** A block no sequence owns: padded rows write their K/V there. */
  padBlock: number;
  /** The widest block table a sequence can have (max positions / block size). */
  maxTableWidth: number;
  /** Queues one step on `t` (synchronously, the same ops every call); returns its output:
   * logits [B, vocab] on the last stage, hidden states [B, hidden] elsewhere. */
  forward: (t: StepTensors) => Tensor;
  /** A bucket whose capture failed runs its padded shapes eagerly (instead of the step's own
   * shapes), so that tensor-parallel ranks issue identical collectives whatever happened to
   * each rank's capture. */
  padBrokenBuckets?: boolean;
}

interface Bucket {
  batch: number;
  width: number;
  tensors: StepTensors;
  graph?: Graph<Tensor>;
  /** Capture failed: this bucket runs eagerly from now on. */
  broken?: string;
}

export class DecodeGraphs {
  private readonly buckets = new Map<string, Bucket>();
  /** The first captured graph; the others draw on its memory pool. */
  private poolOwner?: Graph<Tensor>;
  /** Steps run as graph replays. */
  replays = 0;

  constructor(private readonly options: DecodeGraphsOptions) {}

  /**
   * Whether a step can run as a graph. The caller says whether it is a decode step whose
   * every row's output is wanted (one token per sequence; on the last stage, every
   * sequence wants logits); this adds the bucket limits.
   */
  fits(inputs: StepInputs, decodeStep: boolean): boolean {
    const batch = bucketFor(BATCH_BUCKETS, inputs.numTokens);
    if (!decodeStep || batch === undefined || inputs.numTokens === 0) return false;
    const width = this.widthFor(inputs.maxBlocks);
    if (width === undefined) return false;
    return this.options.padBrokenBuckets === true || !this.buckets.get(`${batch}x${width}`)?.broken;
  }

  /**
   * Runs a decode step (fits() must hold) and returns its output rows for the real
   * sequences: [n, cols] flattened.
   */
  async run(inputs: StepInputs, hidden?: Float32Array): Promise<Float32Array> {
    return (await this.step(inputs, hidden, (t) => t.read())) as Float32Array;
  }

  /** Like run on the last stage, but each output row (logits) comes back as its argmax: the
   * reduction runs on the device after the replay, and only the ids are read. */
  async runArgmax(inputs: StepInputs, hidden?: Float32Array): Promise<Int32Array> {
    const { device } = this.options;
    return (await this.step(inputs, hidden, async (t) => {
      const ids = device.argmax(t);
      try {
        return await ids.read();
      } finally {
        ids.dispose();
      }
    })) as Int32Array;
  }

  private async step(
    inputs: StepInputs,
    hidden: Float32Array | undefined,
    read: (t: Tensor) => Promise<Float32Array | Int32Array>,
  ): Promise<Float32Array | Int32Array> {
    const n = inputs.numTokens;
    const batch = bucketFor(BATCH_BUCKETS, n) as number;
    const width = this.widthFor(inputs.maxBlocks) as number;
    const bucket = this.bucket(batch, width);
    this.writeInputs(bucket, inputs, hidden);
    let out: Float32Array | Int32Array;
    if (bucket.graph) {
      bucket.graph.replay();
      this.replays++;
      out = await read(bucket.graph.outputs);
    } else if (bucket.broken) {
      out = await this.eager(bucket, read);
    } else {
      out = await this.warmupAndCapture(bucket, read);
    }
    return out.subarray(0, (out.length / batch) * n);
  }

  /** A step's output tensor, read; disposed unless it is one of the bucket's own inputs (a
   * middle stage's output is its hidden-state input, updated in place). */
  private async readOutput(
    bucket: Bucket,
    t: Tensor,
    read: (t: Tensor) => Promise<Float32Array | Int32Array>,
  ): Promise<Float32Array | Int32Array> {
    try {
      return await read(t);
    } finally {
      if (t !== bucket.tensors.hidden) t.dispose();
    }
  }

  /** The bucket's padded step, op by op (a bucket whose capture failed, padBrokenBuckets). */
  private eager(bucket: Bucket, read: (t: Tensor) => Promise<Float32Array | Int32Array>) {
    return this.readOutput(bucket, this.options.forward(bucket.tensors), read);
  }

  private async warmupAndCapture(bucket: Bucket, read: (t: Tensor) => Promise<Float32Array | Int32Array>) {
    const { device, forward } = this.options;
    // One memory pool for all buckets: their graphs never run at the same time.
    const builder = device.buildGraph(() => forward(bucket.tensors), { sharePoolWith: this.poolOwner });
    const out = await this.readOutput(bucket, builder.warmup(), read);
    try {
      bucket.graph = builder.capture();
      await device.sync();
      this.poolOwner ??= bucket.graph;
    } catch (err) {
      // The step's result is already computed; later steps of this bucket run eagerly.
      bucket.graph?.dispose();
      bucket.graph = undefined;
      bucket.broken = err instanceof Error ? err.message : String(err);
      process.emitWarning(`decode graph ${bucket.batch}x${bucket.width} not captured: ${bucket.broken}`);
    }
    return out;
  }

  private widthFor(maxBlocks: number): number | undefined {
    const { maxTableWidth } = this.options;
    if (maxBlocks > maxTableWidth) return undefined;
    let w = MIN_TABLE_WIDTH;
    while (w < maxBlocks) w *= 2;
    return Math.min(w, maxTableWidth);
  }

  private bucket(batch: number, width: number): Bucket {
    const key = `${batch}x${width}`;
    let bucket = this.buckets.get(key);
    if (!bucket) {
      const { device, embeds, hiddenSize } = this.options;
      const tokenSeq = Int32Array.from({ length: batch }, (_, i) => i);
      bucket = {
        batch,
        width,
        tensors: {
          ids: embeds ? device.zeros([batch], 'i32') : undefined,
          hidden: embeds ? undefined : device.zeros([batch, hiddenSize], 'f32'),
          positions: device.zeros([batch], 'i32'),
          tokenSeq: device.fromArray(tokenSeq, [batch], 'i32'),
          slots: device.zeros([batch], 'i32'),
          blockTables: device.zeros([batch, width], 'i32'),
        },
      };
      this.buckets.set(key, bucket);
    }
    return bucket;
  }

  /** Copies the step's inputs into the bucket's tensors, padding rows past the real batch. */
  private writeInputs(bucket: Bucket, inputs: StepInputs, hidden?: Float32Array): void {
    const { device, blockSize, padBlock, hiddenSize } = this.options;
    const { batch, width, tensors } = bucket;
    const n = inputs.numTokens;
    const positions = new Int32Array(batch);
    positions.set(inputs.positions);
    const slots = new Int32Array(batch).fill(padBlock * blockSize);
    slots.set(inputs.slots);
    const tables = new Int32Array(batch * width).fill(padBlock);
    for (let s = 0; s < n; s++) {
      tables.set(inputs.blockTables.subarray(s * inputs.maxBlocks, (s + 1) * inputs.maxBlocks), s * width);
    }
    device.write(tensors.positions, positions);
    device.write(tensors.slots, slots);
    device.write(tensors.blockTables, tables);
    if (tensors.ids) {
      const ids = new Int32Array(batch);
      ids.set(inputs.tokens);
      device.write(tensors.ids, ids);
    }
    if (tensors.hidden) {
      const h = new Float32Array(batch * hiddenSize);
      if (hidden) h.set(hidden);
      device.write(tensors.hidden, h);
    }
  }

  dispose(): void {
    for (const bucket of this.buckets.values()) {
      if (bucket.graph?.outputs !== bucket.tensors.hidden) bucket.graph?.outputs.dispose();
      bucket.graph?.dispose();
      for (const t of Object.values(bucket.tensors)) t?.dispose();
    }
    this.buckets.clear();
  }
}

function bucketFor(buckets: readonly number[], n: number): number | undefined {
  return buckets.find((b) => b >= n);
}
