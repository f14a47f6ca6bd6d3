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
import type { StageInput } from './types.js';

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

  /** Whether the step (fits() must hold) would capture its bucket's graph: its first step. */
  captures(inputs: StepInputs): boolean {
    const batch = bucketFor(BATCH_BUCKETS, inputs.numTokens) as number;
    const bucket = this.buckets.get(`${batch}x${this.widthFor(inputs.maxBlocks)}`);
    return !bucket?.graph && !bucket?.broken;
  }

  /**
   * Runs a decode step (fits() must hold) and hands its output tensor to `use`: [B, cols] with
   * the step's rows first and the bucket's padding rows after them (logits on the last stage,
   * hidden states elsewhere). The tensor is the bucket's: valid until `use` settles. `feedIds`
   * may overwrite ids that the step's inputs left at 0 (SeqStep.sampledInput), before the step
   * runs.
   */
  async run<X>(
    inputs: StepInputs,
    hidden: StageInput | undefined,
    use: (t: Tensor) => Promise<X>,
    feedIds?: (ids: Tensor) => void,
  ): Promise<X> {
    const n = inputs.numTokens;
    const batch = bucketFor(BATCH_BUCKETS, n) as number;
    const width = this.widthFor(inputs.maxBlocks) as number;
    const bucket = this.bucket(batch, width);
    this.writeInputs(bucket, inputs, hidden);
    if (feedIds && bucket.tensors.ids) feedIds(bucket.tensors.ids);
    if (bucket.graph) {
      bucket.graph.replay();
      this.replays++;
      return use(bucket.graph.outputs);
    }
    if (bucket.broken) return this.eager(bucket, use);
    return this.warmupAndCapture(bucket, use);
  }

  /** A step's output tensor, used; disposed unless it is one of the bucket's own inputs (a
   * middle stage's output is its hidden-state input, updated in place). */
  private async useOutput<X>(bucket: Bucket, t: Tensor, use: (t: Tensor) => Promise<X>): Promise<X> {
    try {
      return await use(t);
    } finally {
      if (t !== bucket.tensors.hidden) t.dispose();
    }
  }

  /** The bucket's padded step, op by op (a bucket whose capture failed, padBrokenBuckets). */
  private eager<X>(bucket: Bucket, use: (t: Tensor) => Promise<X>): Promise<X> {
    return this.useOutput(bucket, this.options.forward(bucket.tensors), use);
  }

  private async warmupAndCapture<X>(bucket: Bucket, use: (t: Tensor) => Promise<X>): Promise<X> {
    const { device, forward } = this.options;
    // One memory pool for all buckets: their graphs never run at the same time.
    const builder = device.buildGraph(() => forward(bucket.tensors), { sharePoolWith: this.poolOwner });
    const out = await this.useOutput(bucket, builder.warmup(), use);
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
  private writeInputs(bucket: Bucket, inputs: StepInputs, hidden?: StageInput): void {
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
    if (tensors.hidden && hidden instanceof Float32Array) {
      const h = new Float32Array(batch * hiddenSize);
      h.set(hidden);
      device.write(tensors.hidden, h);
    } else if (tensors.hidden && hidden && !(hidden instanceof Float32Array)) {
      // On the device: the padding rows keep an earlier step's (finite) values; their outputs
      // are never read and their K/V go to the padding block.
      device.copyRows(tensors.hidden, hidden.tensor, n);
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
