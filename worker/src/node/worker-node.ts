// The transport-independent core of a worker process: it holds one device, loads the shard
// it is assigned, and runs steps one at a time in arrival order (every rank of a stage sees
// the same order, so their collectives line up). gRPC services and the NATS agent sit on top.

import type * as grpc from '@grpc/grpc-js';
import { createDevice, type Device, type DeviceKind } from '@medcluster/kernels';
import type { Assignment } from '@medcluster/proto';
import { openCheckpoint, presetConfig } from '../checkpoint/index.js';
import { ShardRunner, type StepResult } from '../engine/shard-runner.js';
import type { Collective, CollectiveTransport, SeqStep, ShardSpec } from '../engine/types.js';
import type { Logger } from './log.js';
import { StageLink } from './stage-link.js';
import type { WorkerMetrics } from './worker-metrics.js';

export type WorkerState = 'idle' | 'loading' | 'ready' | 'failed' | 'leaving';

export interface WorkerNodeOptions {
  workerId: string;
  /** Lifecycle lines, and one debug line per sequence per step (with its requestId). */
  log?: Logger;
  device: DeviceKind;
  threads?: number;
  ordinal?: number;
  /** How this worker reaches the next stage: the internal mutual TLS, or plaintext (the default). */
  credentials?: grpc.ChannelCredentials;
}

export class WorkerStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WorkerStateError';
  }
}

export class WorkerNode {
  state: WorkerState = 'idle';
  assignment?: Assignment;
  error?: string;
  stepsCompleted = 0;
  /** Link to the same rank of the next stage (absent on the last stage). */
  downstream?: StageLink;
  private device?: Device;
  private runner?: ShardRunner;
  private collective?: Collective;
  /** Tail of the step queue: steps run strictly one after another. */
  private tail: Promise<unknown> = Promise.resolve();
  /** Steps queued or running. */
  private queued = 0;

  constructor(
    readonly options: WorkerNodeOptions,
    readonly metrics?: WorkerMetrics,
  ) {}

  get spec(): ShardSpec | undefined {
    return this.assignment?.shard;
  }

  get vocabRows(): number | undefined {
    return this.runner?.config.vocabRows;
  }

  /** KV cache blocks the loaded shard allocated (undefined until it is loaded). */
  get kvBlocks(): number | undefined {
    return this.runner?.numBlocks;
  }

  /** How the stage's ranks exchange tensors (undefined for tp = 1 or before a load). */
  get collectiveTransport(): CollectiveTransport | undefined {
    return this.collective?.transport;
  }

  /** float32 payload bytes this rank's collective calls sent over gRPC (0 on device transports). */
  get collectiveGrpcBytes(): number {
    return this.collective?.grpcBytes ?? 0;
  }

  /** Decode steps run as CUDA graph replays since the shard was loaded. */
  get graphReplays(): number {
    return this.runner?.graphReplays ?? 0;
  }

  /** The worker's device, created on first use (a stage's device group is opened on it before
   * the shard loads). */
  openDevice(): Device {
    this.device ??= createDevice({
      kind: this.options.device,
      threads: this.options.threads,
      ordinal: this.options.ordinal,
    });
    return this.device;
  }

  /**
   * Loads an assignment. `collective` joins the stage's ranks (required when tp > 1).
   * Resolves when the shard is on the device, with the number of KV cache blocks it allocated
   * (the assignment's count, or what its memory share held); on failure the worker is 'failed'
   * and idle memory is freed.
   */
  async load(
    assignment: Assignment,
    collective: Collective | undefined,
    onProgress?: (loaded: number, total: number) => void,
  ): Promise<{ kvBlocks: number }> {
    if (this.state === 'loading' || this.state === 'ready') {
      throw new WorkerStateError(
        `worker ${this.options.workerId} already holds assignment ${this.assignment?.assignmentId}`,
      );
    }
    this.state = 'loading';
    this.assignment = assignment;
    this.error = undefined;
    try {
      this.device ??= createDevice({
        kind: this.options.device,
        threads: this.options.threads,
        ordinal: this.options.ordinal,
      });
      const { synthetic } = assignment;
      const source = synthetic
        ? {
            synthetic: {
              config: presetConfig(synthetic.preset, { layers: synthetic.layers }),
              seed: synthetic.seed,
            },
          }
        : { checkpoint: await openCheckpoint(assignment.modelDir) };
      this.collective = collective;
      const runner = await ShardRunner.load({
        device: this.device,
        ...source,
        spec: assignment.shard,
        kvCache: assignment.kvCache,
        collective,
        onProgress,
      });
      this.runner = runner;
      if (assignment.downstream) {
        this.downstream = await StageLink.connect(assignment.downstream, undefined, this.options.credentials);
      }
      this.state = 'ready';
      this.metrics?.idle(performance.now() / 1000);
      return { kvBlocks: runner.numBlocks };
    } catch (err) {
      this.state = 'failed';
      this.error = err instanceof Error ? err.message : String(err);
      await this.unload();
      throw err;
    }
  }

  /** Queues one step; steps run in the order they were queued. */
  runStep(seqs: SeqStep[], hidden?: Float32Array): Promise<StepResult> {
    const run = async () => {
      const runner = this.runner;
      if (this.state !== 'ready' || !runner) {
        throw new WorkerStateError(`worker ${this.options.workerId} is ${this.state}, not ready for steps`);
      }
      const started = performance.now();
      this.metrics?.busy(started / 1000);
      let ok = false;
      try {
        const result = await runner.step(seqs, hidden);
        this.stepsCompleted++;
        ok = true;
        return result;
      } finally {
        const ended = performance.now();
        this.metrics?.step((ended - started) / 1000, ok);
        if (--this.queued === 0) this.metrics?.idle(ended / 1000);
      }
    };
    this.queued++;
    const result = this.tail.then(run, run);
    this.tail = result.catch(() => undefined);
    return result;
  }

  private async unload(): Promise<void> {
    this.downstream?.close();
    this.downstream = undefined;
    this.runner?.dispose();
    this.runner = undefined;
    await this.collective?.close();
    this.collective = undefined;
  }

  async close(): Promise<void> {
    this.state = 'leaving';
    await this.tail;
    await this.unload();
    await this.device?.close();
    this.device = undefined;
  }
}
