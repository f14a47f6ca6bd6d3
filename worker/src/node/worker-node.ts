// The transport-independent core of a worker process: it holds one device, loads the shard
// it is assigned, and runs steps one at a time in arrival order (every rank of a stage sees
// the same order, so their collectives line up). gRPC services and the NATS agent sit on top.
// When a peer of its stage is lost, the stage's group is re-formed (regroup) without reloading
// the weights; a new assignment replaces the one held.

import type * as grpc from '@grpc/grpc-js';
import { createDevice, type Device, type DeviceKind, isDeviceFault, type Tensor } from '@medcluster/kernels';
import type { Assignment } from '@medcluster/proto';
import { openCheckpoint, presetConfig } from '../checkpoint/index.js';
import { ShardRunner, type StepResult } from '../engine/shard-runner.js';
import type { Collective, CollectiveTransport, SeqStep, ShardSpec, StageInput } from '../engine/types.js';
import { type Failpoints, injectedDeviceLoss } from './failpoints.js';
import { chooseHandOff, type HandOff, hostProcess, SharedInbox, SharedOutbox } from './hand-off.js';
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
  /** Faults a test injects (MEDCLUSTER_FAILPOINTS). */
  failpoints?: Failpoints;
}

/** How long a check of the device after a CUDA error may take before the device counts as lost. */
const DEVICE_CHECK_TIMEOUT_MS = 10_000;

export class WorkerStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WorkerStateError';
  }
}

/** What a stage asks of its ranks to re-form its collective group (the Worker service's Regroup). */
export interface RegroupRequest {
  /** The assignment the worker must hold. */
  assignmentId: string;
  /** The new group's name, never one the stage used before. */
  group: string;
  /** The stage's ranks' addresses, by tp rank. */
  peers: readonly string[];
  /** How long the ranks have to form it. */
  timeoutMs: number;
}

/** Forms a stage's collective: the worker process knows its collective host and transport. */
export type CollectiveOpener = (options: {
  group: string;
  rank: number;
  size: number;
  peers: readonly string[];
  /** Deadline of forming the group. */
  connectTimeoutMs: number;
  /** Deadline of each call (the assignment's), when it gives one. */
  timeoutMs?: number;
}) => Promise<Collective>;

export class WorkerNode {
  state: WorkerState = 'idle';
  assignment?: Assignment;
  error?: string;
  stepsCompleted = 0;
  /** Link to the same rank of the next stage (absent on the last stage). */
  downstream?: StageLink;
  /** How hidden states go to the next stage (see hand-off.ts); absent on the last stage. */
  handOff?: HandOff;
  /** The shared buffers lent to steps handed off on the device ('shared'). */
  outbox?: SharedOutbox;
  /** The previous stage's shared buffers, mapped (CUDA workers). */
  inbox?: SharedInbox;
  /** Hidden-state bytes sent on the stream to the next stage since the shard loaded. */
  activationGrpcBytes = 0;
  /** This worker's host and process, for the previous stage's hand-off choice. */
  readonly hostProcess = hostProcess();
  private device?: Device;
  private runner?: ShardRunner;
  private collective?: Collective;
  /** Settles once everything queued so far (steps and serial work) has finished. */
  private tail: Promise<unknown> = Promise.resolve();
  /** Settles once the latest queued step was handed to the runner (or serial work finished):
   * the next step is handed over then, and the runner queues its device work after that one's. */
  private handedOver: Promise<unknown> = Promise.resolve();
  /** Steps queued or running. */
  private queued = 0;
  /** Regroups asked for since the shard loaded: a later one supersedes an earlier one. */
  private regroups = 0;
  /** The collective group the worker is in (tp > 1): its assignment's, then each regroup's. */
  collectiveGroup?: string;
  /** Settles, with the reason, once the device is lost: no step can run in this process again. */
  readonly deviceLost: Promise<string>;
  private markDeviceLost!: (reason: string) => void;
  /** Why the device is lost, once it is (the state moves on to 'leaving'; this stays). */
  deviceLostReason?: string;

  constructor(
    readonly options: WorkerNodeOptions,
    readonly metrics?: WorkerMetrics,
  ) {
    this.deviceLost = new Promise((resolve) => {
      this.markDeviceLost = resolve;
    });
  }

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
    if (this.state === 'loading') {
      throw new WorkerStateError(
        `worker ${this.options.workerId} is still loading assignment ${this.assignment?.assignmentId}`,
      );
    }
    // A new placement (a coordinator that could not re-adopt this worker): the held shard goes.
    if (this.state === 'ready') await this.serial(() => this.unload());
    this.state = 'loading';
    this.assignment = assignment;
    this.collectiveGroup = assignment.shard.tpSize > 1 ? assignment.collectiveGroup : undefined;
    this.regroups = 0;
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
        const next = await this.downstream.status();
        this.handOff = chooseHandOff(
          { hostProcess: this.hostProcess, deviceKind: this.options.device },
          next,
          process.env.MEDCLUSTER_HAND_OFF,
        );
        if (this.handOff === 'shared') this.outbox = new SharedOutbox(this.device, runner.config.hiddenSize);
        this.options.log?.info(`hands hidden states to ${assignment.downstream} as ${this.handOff}`);
      }
      if (!assignment.shard.embeds && this.options.device === 'cuda')
        this.inbox = new SharedInbox(this.device);
      this.activationGrpcBytes = 0;
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

  /** Runs fn after every step queued so far, before any queued later. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn, fn);
    this.tail = result.catch(() => undefined);
    this.handedOver = this.tail;
    return result;
  }

  /**
   * Leaves the stage's broken collective group and joins a new one with the same ranks, keeping
   * the weights and the KV cache. The old host group closes at once, so that a step waiting in it
   * for a hung peer fails now; the new group replaces it between steps, once every rank joined.
   * Resolves with the new collective; rejects (WorkerStateError) when the worker does not hold
   * the assignment, or when a later regroup superseded this one.
   */
  async regroup(request: RegroupRequest, open: CollectiveOpener): Promise<Collective> {
    const { assignment, runner } = this;
    const id = this.options.workerId;
    if (this.state !== 'ready' || !assignment || !runner)
      throw new WorkerStateError(`worker ${id} is ${this.state}: it has no group to re-form`);
    if (assignment.assignmentId !== request.assignmentId) {
      throw new WorkerStateError(
        `worker ${id} holds assignment ${assignment.assignmentId}, not ${request.assignmentId}`,
      );
    }
    const { tpRank, tpSize } = assignment.shard;
    if (tpSize < 2) throw new WorkerStateError(`worker ${id} is tp = 1: it has no group`);
    if (request.peers.length !== tpSize)
      throw new WorkerStateError(`${request.peers.length} peers for tp = ${tpSize}`);
    const attempt = ++this.regroups;
    // A device group may still be under a queued kernel: it closes at the swap, between steps.
    if (this.collective?.transport === 'grpc') await this.collective.close();
    const next = await open({
      group: request.group,
      rank: tpRank,
      size: tpSize,
      peers: request.peers,
      connectTimeoutMs: request.timeoutMs,
      timeoutMs: assignment.deadlines?.collectiveMs,
    });
    return this.serial(async () => {
      if (attempt !== this.regroups || this.runner !== runner) {
        await next.close();
        throw new WorkerStateError(`worker ${id}: regroup into ${request.group} was superseded`);
      }
      const previous = this.collective;
      runner.replaceCollective(next);
      this.collective = next;
      this.collectiveGroup = request.group;
      await previous?.close();
      this.options.log?.info(`re-formed the stage's collective group as ${request.group}`, {
        transport: next.transport,
      });
      return next;
    });
  }

  /** Queues one step; steps run in the order they were queued. `hidden` and `into` (the step's
   * input, and where a middle stage writes its output on the device) may still be coming: the
   * queued step awaits them. A step is handed to the runner once the one before it was, so its
   * device work can be queued while that one runs (SeqStep.sampledInput). */
  runStep(
    seqs: SeqStep[],
    hidden?: StageInput | Promise<StageInput | undefined>,
    into?: Tensor | Promise<Tensor>,
  ): Promise<StepResult> {
    let handed = () => {};
    const handedOver = new Promise<void>((resolve) => {
      handed = resolve;
    });
    const run = async () => {
      const runner = this.runner;
      if (this.state !== 'ready' || !runner) {
        handed();
        throw new WorkerStateError(`worker ${this.options.workerId} is ${this.state}, not ready for steps`);
      }
      const started = performance.now();
      this.metrics?.busy(started / 1000);
      let ok = false;
      try {
        const lostAfter = this.options.failpoints?.deviceLostAfterSteps;
        if (lostAfter !== undefined && this.stepsCompleted >= lostAfter) throw injectedDeviceLoss('step');
        const running = runner.step(seqs, await hidden, await into);
        handed();
        const result = await running;
        this.stepsCompleted++;
        ok = true;
        return result;
      } catch (err) {
        if (isDeviceFault(err)) await this.checkDevice(err as Error);
        throw err;
      } finally {
        handed();
        const ended = performance.now();
        this.metrics?.step((ended - started) / 1000, ok);
        if (--this.queued === 0) this.metrics?.idle(ended / 1000);
      }
    };
    this.queued++;
    const result = this.handedOver.then(run, run);
    this.handedOver = handedOver;
    const done = result.catch(() => undefined);
    this.tail = Promise.all([this.tail, done]);
    return result;
  }

  /**
   * After a step's CUDA error, asks the device again: a lost context (an illegal address, a
   * launch failure, an uncorrectable ECC error) fails a fresh call too, or never answers, where a
   * failed allocation passes. A lost device makes the worker 'failed', for good: its state says
   * so to the coordinator, /ready and GetStatus, and `deviceLost` settles so that the process
   * leaves and a new one (the launcher's restart, the pod's) gets a working device.
   */
  private async checkDevice(stepError: Error): Promise<void> {
    const device = this.device;
    if (!device || this.state !== 'ready') return;
    const lostAfter = this.options.failpoints?.deviceLostAfterSteps;
    let timer: NodeJS.Timeout | undefined;
    const verdict = await Promise.race([
      (lostAfter !== undefined && this.stepsCompleted >= lostAfter
        ? Promise.reject(injectedDeviceLoss('memoryInfo'))
        : device.memoryInfo()
      ).then(
        () => 'working' as const,
        (err: unknown) => (isDeviceFault(err) ? ('lost' as const) : ('working' as const)),
      ),
      new Promise<'silent'>((resolve) => {
        timer = setTimeout(() => resolve('silent'), DEVICE_CHECK_TIMEOUT_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    if (verdict === 'working') return;
    this.state = 'failed';
    this.error =
      verdict === 'lost'
        ? `device lost: ${stepError.message}`
        : `device lost: it did not answer within ${DEVICE_CHECK_TIMEOUT_MS} ms after ${stepError.message}`;
    this.deviceLostReason = this.error;
    this.options.log?.error(this.error);
    this.markDeviceLost(this.error);
  }

  private async unload(): Promise<void> {
    this.downstream?.close();
    this.downstream = undefined;
    this.handOff = undefined;
    this.outbox?.dispose();
    this.outbox = undefined;
    this.inbox?.dispose();
    this.inbox = undefined;
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
