// Runs one shard of the model (a layer range, one tensor-parallel slice) for one step.
//
// One step: embed (first stage) or take the previous stage's hidden states, run every
// held layer (attention and MLP, each closed by a tensor-parallel all-reduce), then either
// hand the hidden states on or, on the last stage, apply the final norm and lm_head to
// the rows whose logits are wanted. All kernels are queued on the device; the JS thread
// waits at the end, and at the collectives only on the host (gRPC) transport.

import type { Device, Tensor } from '@medcluster/kernels';
import type { KvCacheSpec } from '@medcluster/proto';
import type { Checkpoint, LlamaConfig } from '../checkpoint/types.js';
import { type DeviceSampled, finishOnDevice } from '../sampling/device-sample.js';
import { DecodeGraphs, type StepTensors } from './decode-graphs.js';
import { KvCache } from './kv-cache.js';
import { kvBlocksFromMemory } from './kv-sizing.js';
import {
  disposeShardWeights,
  type LoadProgress,
  loadShardWeights,
  localDims,
  type ShardWeights,
} from './shard-weights.js';
import { buildStepInputs, type StepInputs } from './step-inputs.js';
import { syntheticShardWeights } from './synthetic-weights.js';
import { vocabShard } from './tp-slice.js';
import type { Collective, SeqStep, ShardSpec, StageInput, StepOutput } from './types.js';

/** Where a shard's weights come from: a checkpoint, or random values of a config's shapes. */
export type WeightSource = { checkpoint: Checkpoint } | { synthetic: { config: LlamaConfig; seed: number } };

export type ShardRunnerOptions = WeightSource & {
  device: Device;
  spec: ShardSpec;
  /** KV cache geometry: a block count, or a share of the memory left after the weights. */
  kvCache: KvCacheSpec;
  /** Required when spec.tpSize > 1. */
  collective?: Collective;
  /** Replay decode steps as CUDA graphs where the device can (default true). */
  decodeGraphs?: boolean;
  onProgress?: LoadProgress;
};

interface LatestStep {
  sampled?: DeviceSampled;
  failed: boolean;
}

export interface StepResult {
  /** Hidden states [T, hidden] f32, for the next stage (non-last stages, unless written `into`). */
  hidden?: Float32Array;
  /** The last stage's answer, sampled where the logits are (see finishOnDevice): the tokens,
   * and the logit rows of the sequences that return them. */
  output?: StepOutput;
}

function configOf(source: WeightSource): LlamaConfig {
  return 'checkpoint' in source ? source.checkpoint.config : source.synthetic.config;
}

export class ShardRunner {
  readonly config: LlamaConfig;
  readonly spec: ShardSpec;
  readonly blockSize: number;
  readonly numBlocks: number;
  private readonly device: Device;
  private readonly weights: ShardWeights;
  private readonly cache: KvCache;
  private collective?: Collective;
  private readonly dims: ReturnType<typeof localDims>;
  /** Decode steps as CUDA graphs; absent where the backend has none, or with tp > 1 on the
   * host transport (its all-reduce runs on the host between layers, which a graph cannot wait
   * for). With a device transport the all-reduces are inside the graph. */
  private graphs?: DecodeGraphs;
  private readonly graphsAllowed: boolean;
  /** Logit columns of each tensor-parallel rank (the vocabulary split, uneven where needed). */
  private readonly vocabWidths: number[];
  /** Settles once the latest step's device work is queued: the next step queues after it. */
  private queueing: Promise<void> = Promise.resolve();
  /** The latest step: the ids it sampled, still on the device, for the next step's sampled
   * inputs; failed until its sampling was queued. */
  private latest: LatestStep = { failed: false };

  private constructor(options: ShardRunnerOptions, weights: ShardWeights, numBlocks: number) {
    this.device = options.device;
    this.config = configOf(options);
    this.spec = options.spec;
    this.blockSize = options.kvCache.blockSize;
    this.numBlocks = numBlocks;
    this.collective = options.collective;
    this.weights = weights;
    this.dims = localDims(this.config, this.spec.tpSize);
    // One block more than the scheduler may use: padded rows of graph steps write there.
    this.cache = new KvCache(this.device, {
      numLayers: this.spec.layerEnd - this.spec.layerStart,
      numBlocks: numBlocks + 1,
      blockSize: this.blockSize,
      numKvHeads: this.dims.numKvHeads,
      headDim: this.config.headDim,
    });
    this.vocabWidths = Array.from({ length: this.spec.tpSize }, (_, r) => {
      const { start, end } = vocabShard(this.config.vocabRows, this.spec.tpSize, r);
      return end - start;
    });
    this.graphsAllowed = options.decodeGraphs !== false && this.device.supportsGraphs;
    this.graphs = this.makeGraphs();
  }

  /** Graphs for the current collective (they capture its device group's calls). */
  private makeGraphs(): DecodeGraphs | undefined {
    const onDevice = this.spec.tpSize === 1 || this.collective?.device !== undefined;
    if (!this.graphsAllowed || !onDevice) return undefined;
    return new DecodeGraphs({
      // Every rank must take the same path with the same padded sizes, so a rank whose
      // capture failed still runs the bucket's padded shapes (eagerly).
      padBrokenBuckets: this.spec.tpSize > 1,
      device: this.device,
      embeds: this.spec.embeds,
      hiddenSize: this.config.hiddenSize,
      blockSize: this.blockSize,
      padBlock: this.numBlocks,
      maxTableWidth: Math.ceil(this.config.maxPositions / this.blockSize),
      forward: (t) => this.graphForward(t),
    });
  }

  /**
   * Runs later steps on another collective of the same ranks (the stage's group re-formed after
   * a peer was lost). Captured graphs hold the old group's device calls, so they are dropped and
   * captured again. The caller closes the old collective, and calls this between steps.
   */
  replaceCollective(collective: Collective): void {
    if (collective.size !== this.spec.tpSize || collective.rank !== this.spec.tpRank) {
      throw new Error(
        `collective rank ${collective.rank} of ${collective.size} does not fit shard rank ${this.spec.tpRank} of tp=${this.spec.tpSize}`,
      );
    }
    const replays = this.graphs?.replays ?? 0;
    this.graphs?.dispose();
    this.collective = collective;
    this.graphs = this.makeGraphs();
    if (this.graphs) this.graphs.replays = replays;
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
    const { device, kvCache } = options;
    const weights =
      'checkpoint' in options
        ? loadShardWeights(device, options.checkpoint, spec, options.onProgress)
        : syntheticShardWeights(device, options.synthetic.config, spec, options.synthetic.seed);
    let runner: ShardRunner | undefined;
    try {
      await device.sync();
      const numBlocks =
        'numBlocks' in kvCache
          ? kvCache.numBlocks
          : kvBlocksFromMemory(
              (await device.memoryInfo()).freeBytes,
              configOf(options),
              spec,
              kvCache.blockSize,
              kvCache.memoryFraction,
            );
      runner = new ShardRunner(options, weights, numBlocks);
      await device.sync();
      return runner;
    } catch (err) {
      if (runner) runner.dispose();
      else disposeShardWeights(weights);
      throw err;
    }
  }

  /**
   * Runs the held layers for one step. `hidden` ([T, hidden] f32) is required unless this
   * shard embeds. Every rank of a tensor-parallel stage must run the same steps in the same
   * order. A step may be called before the one before it has resolved: its device work queues
   * after that step's sampling, so it can take the tokens sampled there (SeqStep.sampledInput)
   * while the host still waits for them.
   */
  async step(seqs: readonly SeqStep[], hidden?: StageInput, into?: Tensor): Promise<StepResult> {
    const before = this.queueing;
    let queued = () => {};
    this.queueing = new Promise<void>((resolve) => {
      queued = resolve;
    });
    await before;
    const previous = this.latest;
    const current: LatestStep = { failed: true };
    this.latest = current;
    let released = false;
    // The previous step's ids are no longer needed once this step's device work is queued.
    const release = () => {
      if (released) return;
      released = true;
      previous.sampled?.ids.dispose();
      queued();
    };
    // Once the sampling is queued, the next step may queue its work, except while this one has
    // a graph to capture (after its reads): the capture must come before any later work.
    const keep = (sampled: DeviceSampled | undefined, capturing: boolean) => {
      current.sampled = sampled;
      current.failed = false;
      if (!capturing) release();
    };
    try {
      const result = await this.queueStep(seqs, hidden, into, previous, keep);
      current.failed = false;
      return result;
    } finally {
      release();
    }
  }

  /** Where each token of a step with sampled inputs takes its id from: a row of the previous
   * step's sampled ids, or -1 (its own id, or token 0 where that step failed). */
  private sampledFrom(seqs: readonly SeqStep[], T: number, previous: LatestStep): Int32Array | undefined {
    if (!seqs.some((s) => s.sampledInput)) return undefined;
    if (!this.spec.embeds || !this.spec.computesLogits) {
      throw new RangeError('sampled inputs need a stage that embeds and samples (one stage)');
    }
    const from = new Int32Array(T).fill(-1);
    const rowOf = new Map(previous.sampled?.seqIds.map((id, row) => [id, row]));
    let t = 0;
    for (const s of seqs) {
      if (s.sampledInput && !previous.failed) {
        const row = rowOf.get(s.seqId);
        if (row === undefined)
          throw new RangeError(`sequence ${s.seqId}: the previous step sampled no token for it`);
        from[t] = row;
      }
      t += s.numTokens;
    }
    return from;
  }

  private async queueStep(
    seqs: readonly SeqStep[],
    hidden: StageInput | undefined,
    into: Tensor | undefined,
    previous: LatestStep,
    keep: (sampled: DeviceSampled | undefined, capturing: boolean) => void,
  ): Promise<StepResult> {
    const { config, spec } = this;
    const inputs = buildStepInputs(seqs, this.blockSize, this.numBlocks);
    const from = this.sampledFrom(seqs, inputs.numTokens, previous);
    const source = previous.sampled?.ids;
    const feedIds =
      from && source
        ? (ids: Tensor) => {
            const rows = new Int32Array(ids.shape[0]).fill(-1);
            rows.set(from);
            this.device.takeSampled(ids, source, rows);
          }
        : undefined;
    const T = inputs.numTokens;
    const H = config.hiddenSize;
    if (spec.embeds) {
      for (const id of inputs.tokens) {
        if (id < 0 || id >= config.vocabRows) {
          throw new RangeError(`token id ${id} is outside the model's ${config.vocabRows} embedding rows`);
        }
      }
    } else if (
      hidden instanceof Float32Array
        ? hidden.length !== T * H
        : hidden?.rows !== T || hidden.tensor.shape[1] !== H
    ) {
      const got =
        hidden instanceof Float32Array
          ? `${hidden.length} floats`
          : hidden
            ? `${hidden.rows} device rows`
            : 'none';
      throw new RangeError(`stage expects hidden states of ${T} x ${H} floats, got ${got}`);
    }
    if (into && (spec.computesLogits || into.shape[0] < T || into.shape[1] !== H)) {
      throw new RangeError(
        `a step's hidden states need [>= ${T}, ${H}] to be written into, got [${into.shape}]`,
      );
    }
    // A middle stage's output: into the caller's tensor (a shared buffer the next stage copies
    // from; the wait makes it complete before the next stage hears of it), or read to the host.
    const handOn = async (t: Tensor): Promise<StepResult> => {
      if (!into) return { hidden: ((await t.read()) as Float32Array).subarray(0, T * H) };
      this.device.copyRows(into, t, T);
      await this.device.sync();
      return {};
    };
    const decodeStep = seqs.every((s) => s.numTokens === 1 && (s.logitRows === 1 || !spec.computesLogits));
    if (this.graphs?.fits(inputs, decodeStep)) {
      if (spec.computesLogits) {
        const capturing = this.graphs.captures(inputs);
        const use = (t: Tensor) => finishOnDevice(this.device, t, seqs, (ids) => keep(ids, capturing));
        return { output: await this.graphs.run(inputs, hidden, use, feedIds) };
      }
      return this.graphs.run(inputs, hidden, handOn);
    }
    return this.eagerStep(seqs, inputs, hidden, handOn, (ids) => keep(ids, false), feedIds);
  }

  /** The previous stage's hidden states as a new [T, hidden] tensor (the layers update it in place). */
  private inputTensor(hidden: StageInput, T: number): Tensor {
    const { device } = this;
    if (hidden instanceof Float32Array) return device.fromArray(hidden, [T, this.config.hiddenSize], 'f32');
    const t = device.zeros([T, this.config.hiddenSize], 'f32');
    device.copyRows(t, hidden.tensor, T);
    return t;
  }

  /** Queues the step op by op (any step shape, and every tensor-parallel step). */
  private async eagerStep(
    seqs: readonly SeqStep[],
    inputs: StepInputs,
    hidden: StageInput | undefined,
    handOn: (x: Tensor) => Promise<StepResult>,
    kept: (sampled: DeviceSampled | undefined) => void,
    feedIds?: (ids: Tensor) => void,
  ): Promise<StepResult> {
    const { device, spec } = this;
    const T = inputs.numTokens;
    const owned: Tensor[] = [];
    const keep = <X extends Tensor>(t: X): X => {
      owned.push(t);
      return t;
    };
    try {
      const tensors: StepTensors = {
        positions: keep(device.fromArray(inputs.positions, [T], 'i32')),
        tokenSeq: keep(device.fromArray(inputs.tokenSeq, [T], 'i32')),
        slots: keep(device.fromArray(inputs.slots, [T], 'i32')),
        blockTables: keep(
          device.fromArray(
            inputs.blockTables,
            [inputs.blockTables.length / inputs.maxBlocks, inputs.maxBlocks],
            'i32',
          ),
        ),
        ids: spec.embeds ? keep(device.fromArray(inputs.tokens, [T], 'i32')) : undefined,
        hidden: spec.embeds ? undefined : keep(this.inputTensor(hidden as StageInput, T)),
      };
      if (tensors.ids) feedIds?.(tensors.ids);
      const layers = this.layers(tensors, keep);
      let next = layers.next();
      while (!next.done) next = layers.next(await this.allReduce(next.value));
      const x = next.value;
      if (!spec.computesLogits) return await handOn(x);
      if (inputs.logitRows.length === 0)
        return { output: await finishOnDevice(device, undefined, seqs, kept) };
      const rows =
        inputs.logitRows.length === T
          ? undefined
          : keep(device.fromArray(inputs.logitRows, [inputs.logitRows.length], 'i32'));
      const local = keep(this.head(x, keep, rows));
      const logits =
        this.spec.tpSize > 1 ? keep(await this.collectiveOf().allGatherCols(local, this.vocabWidths)) : local;
      return { output: await finishOnDevice(device, logits, seqs, kept) };
    } finally {
      for (const t of owned) t.dispose();
    }
  }

  /**
   * Queues the held layers; returns the residual stream [T, hidden] f32. At each
   * row-parallel linear it yields the partial output and resumes with the sum across the
   * stage's ranks, so that one body serves both the eager path (which awaits the
   * collective) and graph capture (no await: a device collective queues the sum in place,
   * and with tp = 1 the partial is the sum).
   */
  private *layers(t: StepTensors, keep: <X extends Tensor>(t: X) => X): Generator<Tensor, Tensor, Tensor> {
    const { config, device, weights } = this;
    // The embedding's output, or the previous stage's hidden states, updated in place.
    const x = t.ids ? keep(device.embedding(weights.embed as Tensor, t.ids)) : (t.hidden as Tensor);
    const attnShape = {
      numHeads: this.dims.numHeads,
      numKvHeads: this.dims.numKvHeads,
      headDim: config.headDim,
    };
    const owned: Tensor[] = [];
    const local = <X extends Tensor>(v: X): X => {
      owned.push(v);
      return v;
    };
    // A layer's down projection, added to x by the next layer's norm (one fused kernel instead of
    // an add and a norm); the stage's last one is added before x leaves.
    let pendingDown: Tensor | undefined;
    try {
      for (let l = 0; l < weights.layers.length; l++) {
        const w = weights.layers[l];
        const h = local(
          pendingDown
            ? device.addRmsNorm(x, local(pendingDown), w.inputNorm, config.rmsNormEps)
            : device.rmsNorm(x, w.inputNorm, config.rmsNormEps),
        );
        pendingDown = undefined;
        const qkv = local(device.awqLinear(h, w.qkv, 'f16'));
        const q = local(
          device.ropeWriteKv(
            qkv,
            this.cache.keys[l],
            this.cache.values[l],
            t.positions,
            t.slots,
            config.ropeTheta,
          ),
        );
        const a = local(
          device.attention(
            q,
            this.cache.keys[l],
            this.cache.values[l],
            t.blockTables,
            t.tokenSeq,
            t.positions,
            attnShape,
          ),
        );
        const o = local(yield local(device.awqLinear(a, w.o, 'f32')));
        const h2 = local(device.addRmsNorm(x, o, w.postAttentionNorm, config.rmsNormEps));
        const m = local(device.awqSiluGate(h2, w.gateUp));
        const d = yield local(device.awqLinear(m, w.down, 'f32'));
        // Free the layer's intermediates now (memory is reused layer to layer), all but d.
        for (const v of new Set(owned)) if (v !== d) v.dispose();
        owned.length = 0;
        pendingDown = d;
      }
      if (pendingDown) device.addInPlace(x, local(pendingDown));
      pendingDown = undefined;
    } finally {
      for (const v of new Set(owned)) v.dispose();
      pendingDown?.dispose();
    }
    return x;
  }

  /** Final norm and lm_head (this rank's vocabulary slice) of x's rows, or of `rows` of x. */
  private head(x: Tensor, keep: <X extends Tensor>(t: X) => X, rows?: Tensor): Tensor {
    const { config, device, weights } = this;
    const last = rows ? keep(device.gatherRows(x, rows)) : x;
    const normed = keep(device.rmsNorm(last, weights.finalNorm as Tensor, config.rmsNormEps));
    return device.linear(normed, weights.lmHead as Tensor, 'f32');
  }

  /** The graph body: one decode step on a bucket's tensors, queued synchronously; with tp > 1
   * the device collective's all-reduces and the logits' all-gather are part of it. */
  private graphForward(t: StepTensors): Tensor {
    const owned: Tensor[] = [];
    const keep = <X extends Tensor>(v: X): X => {
      owned.push(v);
      return v;
    };
    const group = this.spec.tpSize > 1 ? this.collective?.device : undefined;
    try {
      const layers = this.layers(t, keep);
      let next = layers.next();
      while (!next.done) {
        group?.allReduceSum(next.value);
        next = layers.next(next.value);
      }
      const x = next.value;
      if (!this.spec.computesLogits) {
        // The output outlives this call (it is the embedding's output, or the input itself).
        const i = owned.indexOf(x);
        if (i >= 0) owned.splice(i, 1);
        return x;
      }
      const local = this.head(x, keep);
      if (!group) return local;
      keep(local);
      return group.allGatherCols(local, this.vocabWidths);
    } finally {
      for (const v of owned) v.dispose();
    }
  }

  private collectiveOf(): Collective {
    if (!this.collective) throw new Error(`shard with tp=${this.spec.tpSize} has no collective`);
    return this.collective;
  }

  /** Sums a row-parallel layer's partial outputs across the stage's ranks, in fp32, in place. */
  private async allReduce(partial: Tensor): Promise<Tensor> {
    if (this.spec.tpSize > 1) await this.collectiveOf().allReduceSum(partial);
    return partial;
  }

  /** Decode steps run as graph replays since the shard was loaded. */
  get graphReplays(): number {
    return this.graphs?.replays ?? 0;
  }

  dispose(): void {
    this.graphs?.dispose();
    disposeShardWeights(this.weights);
    this.cache.dispose();
  }
}
