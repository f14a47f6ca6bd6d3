// Runs one shard of the model (a layer range, one tensor-parallel slice) for one step.
//
// One step: embed (first stage) or take the previous stage's hidden states, run every
// held layer (attention and MLP, each closed by a tensor-parallel all-reduce), then either
// hand the hidden states on or, on the last stage, apply the final norm and lm_head to
// the rows whose logits are wanted. All kernels are queued on the device; the JS thread
// only waits at collectives and at the end.

import type { Device, Tensor } from '@medcluster/kernels';
import type { Checkpoint, LlamaConfig } from '../checkpoint/types.js';
import { KvCache } from './kv-cache.js';
import {
  disposeShardWeights,
  type LoadProgress,
  loadShardWeights,
  localDims,
  type ShardWeights,
} from './shard-weights.js';
import { buildStepInputs } from './step-inputs.js';
import { syntheticShardWeights } from './synthetic-weights.js';
import type { Collective, SeqStep, ShardSpec } from './types.js';

/** Where a shard's weights come from: a checkpoint, or random values of a config's shapes. */
export type WeightSource = { checkpoint: Checkpoint } | { synthetic: { config: LlamaConfig; seed: number } };

export type ShardRunnerOptions = WeightSource & {
  device: Device;
  spec: ShardSpec;
  /** KV cache geometry: blocks of blockSize tokens. */
  numBlocks: number;
  blockSize: number;
  /** Required when spec.tpSize > 1. */
  collective?: Collective;
  onProgress?: LoadProgress;
};

export interface StepResult {
  /** Hidden states [T, hidden] f32, for the next stage (non-last stages). */
  hidden?: Float32Array;
  /** Logits [rows, vocabRows] f32 of the rows that wanted them (last stage). */
  logits?: Float32Array;
}

export class ShardRunner {
  readonly config: LlamaConfig;
  readonly spec: ShardSpec;
  readonly blockSize: number;
  readonly numBlocks: number;
  private readonly device: Device;
  private readonly weights: ShardWeights;
  private readonly cache: KvCache;
  private readonly collective?: Collective;
  private readonly dims: ReturnType<typeof localDims>;

  private constructor(options: ShardRunnerOptions, weights: ShardWeights) {
    this.device = options.device;
    this.config = 'checkpoint' in options ? options.checkpoint.config : options.synthetic.config;
    this.spec = options.spec;
    this.blockSize = options.blockSize;
    this.numBlocks = options.numBlocks;
    this.collective = options.collective;
    this.weights = weights;
    this.dims = localDims(this.config, this.spec.tpSize);
    this.cache = new KvCache(this.device, {
      numLayers: this.spec.layerEnd - this.spec.layerStart,
      numBlocks: options.numBlocks,
      blockSize: options.blockSize,
      numKvHeads: this.dims.numKvHeads,
      headDim: this.config.headDim,
    });
  }

  /** Loads the shard's weights and allocates its KV cache; resolves once both are on the device. */
  static async load(options: ShardRunnerOptions): Promise<ShardRunner> {
    const { spec } = options;
    if (spec.tpSize > 1 && !options.collective) {
      throw new Error(`shard with tp=${spec.tpSize} needs a collective for its all-reduces`);
    }
    if (options.collective && options.collective.size !== spec.tpSize) {
      throw new Error(`collective has ${options.collective.size} ranks but the shard has tp=${spec.tpSize}`);
    }
    const weights =
      'checkpoint' in options
        ? loadShardWeights(options.device, options.checkpoint, spec, options.onProgress)
        : syntheticShardWeights(options.device, options.synthetic.config, spec, options.synthetic.seed);
    const runner = new ShardRunner(options, weights);
    try {
      await options.device.sync();
    } catch (err) {
      runner.dispose();
      throw err;
    }
    return runner;
  }

  /**
   * Runs the held layers for one step. `hidden` ([T, hidden] f32) is required unless this
   * shard embeds. Every rank of a tensor-parallel stage must run the same steps in the same order.
   */
  async step(seqs: readonly SeqStep[], hidden?: Float32Array): Promise<StepResult> {
    const { config, device, weights, spec } = this;
    const inputs = buildStepInputs(seqs, this.blockSize, this.numBlocks);
    const T = inputs.numTokens;
    const owned: Tensor[] = [];
    const keep = <X extends Tensor>(t: X): X => {
      owned.push(t);
      return t;
    };
    try {
      const positions = keep(device.fromArray(inputs.positions, [T], 'i32'));
      const tokenSeq = keep(device.fromArray(inputs.tokenSeq, [T], 'i32'));
      const slots = keep(device.fromArray(inputs.slots, [T], 'i32'));
      const blockTables = keep(device.fromArray(inputs.blockTables, [seqs.length, inputs.maxBlocks], 'i32'));

      let x: Tensor;
      if (spec.embeds) {
        for (const id of inputs.tokens) {
          if (id < 0 || id >= config.vocabRows) {
            throw new RangeError(`token id ${id} is outside the model's ${config.vocabRows} embedding rows`);
          }
        }
        const ids = keep(device.fromArray(inputs.tokens, [T], 'i32'));
        x = keep(device.embedding(weights.embed as Tensor, ids));
      } else {
        if (!hidden || hidden.length !== T * config.hiddenSize) {
          throw new RangeError(
            `stage expects hidden states of ${T} x ${config.hiddenSize} floats, got ${hidden?.length ?? 'none'}`,
          );
        }
        x = keep(device.fromArray(hidden, [T, config.hiddenSize], 'f32'));
      }

      const attnShape = {
        numHeads: this.dims.numHeads,
        numKvHeads: this.dims.numKvHeads,
        headDim: config.headDim,
      };
      for (let l = 0; l < weights.layers.length; l++) {
        const w = weights.layers[l];
        const h = keep(device.rmsNorm(x, w.inputNorm, config.rmsNormEps));
        const q = keep(device.awqLinear(h, w.q, 'f16'));
        const k = keep(device.awqLinear(h, w.k, 'f16'));
        const v = keep(device.awqLinear(h, w.v, 'f16'));
        device.rope(q, k, positions, config.headDim, config.ropeTheta);
        device.writeKv(this.cache.keys[l], this.cache.values[l], k, v, slots);
        const a = keep(
          device.attention(
            q,
            this.cache.keys[l],
            this.cache.values[l],
            blockTables,
            tokenSeq,
            positions,
            attnShape,
          ),
        );
        const o = await this.allReduce(keep(device.awqLinear(a, w.o, 'f32')), keep);
        const h2 = keep(device.addRmsNorm(x, o, w.postAttentionNorm, config.rmsNormEps));
        const gate = keep(device.awqLinear(h2, w.gate, 'f16'));
        const up = keep(device.awqLinear(h2, w.up, 'f16'));
        const m = keep(device.siluMul(gate, up));
        const d = await this.allReduce(keep(device.awqLinear(m, w.down, 'f32')), keep);
        device.addInPlace(x, d);
        this.release(owned, x, positions, tokenSeq, slots, blockTables);
      }

      if (!spec.computesLogits) return { hidden: (await x.read()) as Float32Array };
      if (inputs.logitRows.length === 0) return { logits: new Float32Array(0) };
      const rows = keep(device.fromArray(inputs.logitRows, [inputs.logitRows.length], 'i32'));
      const last = keep(device.gatherRows(x, rows));
      const normed = keep(device.rmsNorm(last, weights.finalNorm as Tensor, config.rmsNormEps));
      const local = (await keep(
        device.linear(normed, weights.lmHead as Tensor, 'f32'),
      ).read()) as Float32Array;
      return { logits: await this.gatherVocab(local, inputs.logitRows.length) };
    } finally {
      for (const t of owned) t.dispose();
    }
  }

  /** Sums a row-parallel layer's partial outputs across the stage's ranks, in fp32. */
  private async allReduce(partial: Tensor, keep: <X extends Tensor>(t: X) => X): Promise<Tensor> {
    if (!this.collective || this.spec.tpSize === 1) return partial;
    const summed = await this.collective.allReduceSum((await partial.read()) as Float32Array);
    return keep(this.device.fromArray(summed, partial.shape, 'f32'));
  }

  /** Joins each rank's vocabulary slice of the logits into full rows. */
  private async gatherVocab(local: Float32Array, rows: number): Promise<Float32Array> {
    if (!this.collective || this.spec.tpSize === 1) return local;
    const parts = await this.collective.allGather(local);
    const vocab = this.config.vocabRows;
    const out = new Float32Array(rows * vocab);
    let col = 0;
    for (const part of parts) {
      const width = part.length / rows;
      for (let r = 0; r < rows; r++) out.set(part.subarray(r * width, (r + 1) * width), r * vocab + col);
      col += width;
    }
    if (col !== vocab) throw new Error(`gathered ${col} logit columns, expected ${vocab}`);
    return out;
  }

  /** Frees a layer's intermediates early; the tensors that live across layers stay. */
  private release(owned: Tensor[], ...live: Tensor[]): void {
    const keepers = new Set(live);
    for (let i = owned.length - 1; i >= 0; i--) {
      if (!keepers.has(owned[i])) {
        owned[i].dispose();
        owned.splice(i, 1);
      }
    }
  }

  dispose(): void {
    disposeShardWeights(this.weights);
    this.cache.dispose();
  }
}
