// Cluster mode: workers on any machines announce themselves over NATS; the coordinator waits
// for tp x pp of them, plans the placement from their inventory, sends each its assignment,
// and waits until every shard is loaded. Each ready worker reports its KV cache block count;
// the cluster's cache is the least of them. The placement is kept in NATS's key-value store, so
// that a coordinator that restarts re-adopts the workers still holding their shards (same
// assignments, same KV geometry) instead of reloading the model.
//
// Mending: a worker whose heartbeats stop, that restarts (announces itself with the same id and
// a new start time), that leaves, or whose step fails the pipeline marks the cluster degraded
// (`workerLost`, health NOT_SERVING). Once every worker of the placement is heard again, each
// stage that lost a member re-forms: a restarted worker gets its assignment again, with a new
// collective group, and its tensor-parallel peers move to that group (Regroup: no reload);
// when every worker answers GetStatus ready, in its stage's group, `recovered` is emitted.
//
// With internal mutual TLS a worker joins only once its gRPC server presented a certificate that
// verifies against the internal CA for the address it announced; one that does not is refused,
// with the reason in the log, and the coordinator keeps waiting for workers it can talk to.

import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Assignment, KvGeometry, PlacedWorker, PlacementRecord } from '@medcluster/proto';
import { type InternalTls, type LlamaConfig, regroupWorker, workerStatus } from '@medcluster/worker';
import type { NatsConnection } from 'nats';
import { type WorkerRecord, WorkerRegistry } from '../control/index.js';
import { planPlacement } from '../placement/index.js';
import { assignmentsFor } from './assignments.js';
import type { ClusterEvents, ClusterHandle, ClusterWorker } from './cluster-handle.js';
import {
  describeKvGeometry,
  type KvCacheRequest,
  type KvReport,
  kvCacheForDevice,
  kvGeometryFromReports,
} from './kv-cache.js';
import { PipelineExecutor } from './pipeline-executor.js';
import { PlacementStore } from './placement-store.js';

export interface NatsClusterOptions {
  nc: NatsConnection;
  cluster: string;
  modelDir: string;
  config: LlamaConfig;
  tp: number;
  pp: number;
  /** A block count or a memory share for every worker; with neither, each device's default. */
  kvCache: KvCacheRequest;
  /** How long to wait for enough workers to announce themselves. */
  workerTimeoutMs: number;
  heartbeatTimeoutMs?: number;
  /** Mutual TLS with the workers: admission checks their certificates, links present ours. */
  internalTls?: InternalTls;
  log?: (line: string) => void;
  /** The name the APIs serve the model under (the workers label their metrics with it). */
  servedModelName?: string;
  /** A step with no result this long after it was sent fails the pipeline (executor). */
  stepTimeoutMs?: number;
  /** A collective call whose peers do not all arrive within this fails its stage's group. */
  collectiveTimeoutMs?: number;
  /** How long a stage's ranks have to form a new group when it re-forms (default 30 s). */
  regroupTimeoutMs?: number;
  /** Keep the placement in NATS's key-value store and re-adopt from it (default true). */
  placementStore?: boolean;
}

/** What the coordinator placed where; rewritten as workers are re-placed. */
interface Placement {
  run: string;
  assignments: Map<string, Assignment>;
  addresses: Map<string, string>;
  devices: Map<string, 'cpu' | 'cuda'>;
  kvBlocks: Map<string, number>;
  transports: Map<string, 'grpc' | 'ipc' | 'nccl'>;
  geometry: KvGeometry;
}

const STATUS_DEADLINE_MS = 3_000;
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 10_000;

function metricsUrl(address: string | undefined): { metricsUrl?: string } {
  return address === undefined ? {} : { metricsUrl: `http://${address}/metrics` };
}

/** The registry stamps heartbeats with performance.now(). */
function heartbeatAge(lastSeenMs: number | undefined): { heartbeatAgeSeconds?: number } {
  return lastSeenMs === undefined ? {} : { heartbeatAgeSeconds: (performance.now() - lastSeenMs) / 1000 };
}

const alive = (r: WorkerRecord | undefined) => r !== undefined && r.state !== 'lost' && r.state !== 'leaving';

/** Waits for the workers, assigns (or re-adopts) their shards, and resolves once every one is ready and connected. */
export async function startNatsCluster(options: NatsClusterOptions): Promise<ClusterHandle> {
  const log = options.log ?? (() => undefined);
  const tls = options.internalTls;
  const registry = await WorkerRegistry.start({
    nc: options.nc,
    cluster: options.cluster,
    heartbeatTimeoutMs: options.heartbeatTimeoutMs,
    ...(tls ? { admit: (w) => tls.verifyPeer(w.grpcAddress) } : {}),
  });
  registry.on('refused', (w, reason) =>
    log(
      `coordinator: refused worker ${w.id}: could not verify its certificate against --internal-ca (${reason})`,
    ),
  );
  const store =
    options.placementStore === false
      ? undefined
      : await PlacementStore.open(options.nc, options.cluster, log);
  try {
    const cluster = new NatsCluster(options, registry, store, log);
    await cluster.start();
    return cluster.handle();
  } catch (err) {
    store?.close();
    await registry.close();
    throw err;
  }
}

class NatsCluster {
  private placement!: Placement;
  private executor!: PipelineExecutor;
  private readonly events = new EventEmitter<ClusterEvents>();
  private readonly coordinatorId = `coordinator-${randomUUID().slice(0, 8)}`;
  /** Placed workers lost and not yet back in their stage. */
  private readonly lost = new Set<string>();
  /** Stages whose collective group must re-form before steps run again. */
  private readonly broken = new Set<number>();
  /** A step found the pipeline broken though no worker was known lost. */
  private degraded = false;
  /** The start time each placed worker's process announced: another one is a restart. */
  private readonly startedAt = new Map<string, number>();
  /** Workers being assigned by this coordinator (their load events are its own). */
  private readonly assigning = new Set<string>();
  private healing?: Promise<void>;
  private healAgain = false;
  private generation = 0;
  private stopping = false;
  private readonly run = `run-${randomUUID().slice(0, 8)}`;
  /** How this coordinator reaches the workers: the internal mutual TLS, or plaintext. */
  private readonly credentials: ReturnType<InternalTls['channelCredentials']> | undefined;

  constructor(
    private readonly options: NatsClusterOptions,
    private readonly registry: WorkerRegistry,
    private readonly store: PlacementStore | undefined,
    private readonly log: (line: string) => void,
  ) {
    this.credentials = options.internalTls?.channelCredentials();
  }

  async start(): Promise<void> {
    const started = performance.now();
    const stored = await this.store?.read();
    const why = stored && this.whyNotAdopt(stored);
    let adopted = false;
    if (stored && why) this.log(`coordinator: not re-adopting the stored placement: ${why}`);
    else if (stored) adopted = await this.adopt(stored);
    if (!adopted) await this.placeAnew();
    this.executor = await PipelineExecutor.connect(
      this.stageRanks(0).map((id) => this.placement.addresses.get(id) as string),
      this.options.config.vocabRows,
      this.options.pp,
      {
        stepTimeoutMs: this.options.stepTimeoutMs,
        stageGroups: this.stageGroups(),
        credentials: this.credentials,
      },
    );
    this.follow();
    if (this.broken.size > 0 || this.lost.size > 0) {
      // Re-adopted with some workers that no longer hold their shard: mend before serving.
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(
              new Error(`the re-adopted cluster did not mend within ${this.options.workerTimeoutMs} ms`),
            ),
          this.options.workerTimeoutMs,
        );
        this.events.once('recovered', () => {
          clearTimeout(timer);
          resolve();
        });
        this.requestHeal();
      });
    }
    void this.persist();
    this.log(
      `coordinator: ${adopted ? 're-adopted' : 'placed'} ${this.placement.assignments.size} workers in ${((performance.now() - started) / 1000).toFixed(2)} s`,
    );
  }

  /** Why the stored placement cannot be re-adopted by this coordinator, or undefined if it can. */
  private whyNotAdopt(stored: PlacementRecord): string | undefined {
    const { modelDir, tp, pp, kvCache } = this.options;
    if (stored.modelDir !== modelDir)
      return `it holds ${stored.modelDir}, this coordinator serves ${modelDir}`;
    if (stored.tp !== tp || stored.pp !== pp)
      return `it is tp=${stored.tp} x pp=${stored.pp}, this coordinator runs tp=${tp} x pp=${pp}`;
    for (const w of stored.workers) {
      const asked = kvCacheForDevice(kvCache, w.device);
      if (JSON.stringify(asked) !== JSON.stringify(w.assignment.kvCache)) {
        return `worker ${w.workerId}'s KV cache was sized ${JSON.stringify(w.assignment.kvCache)}, this coordinator asks for ${JSON.stringify(asked)}`;
      }
    }
    return undefined;
  }

  /**
   * Takes over a stored placement once every one of its workers is heard at its stored address.
   * Workers that hold their stored assignment are kept as they are; the others (restarted while
   * no coordinator ran) are re-placed by the mending that follows. False if the workers did not
   * all come back within the worker timeout.
   */
  private async adopt(stored: PlacementRecord): Promise<boolean> {
    const ids = stored.workers.map((w) => w.workerId);
    this.log(
      `coordinator: found the placement ${stored.coordinatorId} stored (${ids.length} workers, ${stored.kvCache.numBlocks} KV blocks); waiting for its workers to re-adopt them`,
    );
    const heard = await this.waitFor(
      () => ids.every((id) => alive(this.registry.get(id))),
      this.options.workerTimeoutMs,
    );
    if (!heard) {
      const missing = ids.filter((id) => !alive(this.registry.get(id)));
      this.log(
        `coordinator: workers ${missing.join(', ')} did not announce themselves; placing the model anew`,
      );
      return false;
    }
    const moved = stored.workers.find((w) => this.registry.get(w.workerId)?.grpcAddress !== w.grpcAddress);
    if (moved) {
      this.log(
        `coordinator: worker ${moved.workerId} moved from ${moved.grpcAddress} to ${this.registry.get(moved.workerId)?.grpcAddress}; placing the model anew`,
      );
      return false;
    }
    this.placement = {
      run: this.run,
      assignments: new Map(stored.workers.map((w) => [w.workerId, w.assignment])),
      addresses: new Map(stored.workers.map((w) => [w.workerId, w.grpcAddress])),
      devices: new Map(stored.workers.map((w) => [w.workerId, w.device])),
      kvBlocks: new Map(stored.workers.map((w) => [w.workerId, w.kvBlocks])),
      transports: new Map(stored.workers.flatMap((w) => (w.collective ? [[w.workerId, w.collective]] : []))),
      geometry: stored.kvCache,
    };
    for (const id of ids) {
      const record = this.registry.get(id) as WorkerRecord;
      this.startedAt.set(id, record.startedAt);
      if (!this.holds(id)) {
        this.log(`coordinator: worker ${id} no longer holds its shard (${record.state}); it is placed again`);
        this.lost.add(id);
        this.broken.add(this.stageOf(id));
      }
    }
    // What the store says is what the workers say: the shard, and the group (a regroup whose
    // placement was not stored yet leaves the stage to re-form).
    await Promise.all(
      ids
        .filter((id) => !this.lost.has(id))
        .map((id) =>
          this.check(id).catch((err: Error) => {
            this.log(`coordinator: ${err.message}; its stage re-forms`);
            this.broken.add(this.stageOf(id));
          }),
        ),
    );
    return true;
  }

  /** Waits for tp x pp workers, plans, assigns every shard and waits until all are ready. */
  private async placeAnew(): Promise<void> {
    const { tp, pp, config, modelDir, kvCache } = this.options;
    this.log(`coordinator: waiting for ${tp * pp} workers on cluster '${this.options.cluster}'`);
    const records = await this.registry.waitForWorkers(tp * pp, this.options.workerTimeoutMs);
    const plan = planPlacement({
      config,
      workers: records.map((r) => ({
        id: r.id,
        device: r.devices[0]?.kind ?? 'cpu',
        memoryBytes: r.memoryBytes,
      })),
      tp,
      pp,
    });
    const addresses = new Map(records.map((r) => [r.id, r.grpcAddress]));
    const devices = new Map(records.map((r) => [r.id, r.devices[0]?.kind ?? 'cpu']));
    const assignments = assignmentsFor(
      plan,
      addresses,
      modelDir,
      (id) => kvCacheForDevice(kvCache, devices.get(id) ?? 'cpu'),
      this.run,
    );
    for (const a of assignments.values()) this.decorate(a);
    for (const r of records) this.startedAt.set(r.id, r.startedAt);
    const transports = new Map<string, 'grpc' | 'ipc' | 'nccl'>();
    const reports: KvReport[] = await Promise.all(
      [...assignments].map(async ([id, assignment]) => {
        const ready = await this.assign(id, assignment);
        if (ready.collective !== undefined) transports.set(id, ready.collective);
        return { workerId: id, assigned: assignment.kvCache, kvBlocks: ready.kvBlocks };
      }),
    );
    // Only after every worker loaded: a block id is usable only if every stage and rank has it.
    const geometry = kvGeometryFromReports(reports);
    this.log(`coordinator: ${describeKvGeometry(geometry, reports)}`);
    this.placement = {
      run: this.run,
      assignments,
      addresses,
      devices,
      kvBlocks: new Map(reports.map((r) => [r.workerId, r.kvBlocks as number])),
      transports,
      geometry,
    };
  }

  /** Fields every assignment of this coordinator carries besides its place. */
  private decorate(a: Assignment): void {
    if (this.options.servedModelName) a.servedModelName = this.options.servedModelName;
    const { collectiveTimeoutMs, stepTimeoutMs } = this.options;
    a.deadlines = {
      ...(collectiveTimeoutMs ? { collectiveMs: collectiveTimeoutMs } : {}),
      ...(stepTimeoutMs ? { stepMs: stepTimeoutMs } : {}),
    };
  }

  /** Sends one assignment and waits until the worker is ready with it. */
  private async assign(id: string, assignment: Assignment): Promise<WorkerRecord> {
    const { v: _v, ...spec } = assignment;
    this.assigning.add(id);
    try {
      const ready = await this.registry.assign(id, spec);
      this.log(
        `coordinator: worker ${id} ready (stage ${assignment.stageIndex}, tp rank ${assignment.shard.tpRank}, ${ready.kvBlocks} KV blocks${ready.collective ? `, collective ${ready.collective}` : ''})`,
      );
      this.startedAt.set(id, ready.startedAt);
      return ready;
    } finally {
      this.assigning.delete(id);
    }
  }

  private stageOf(id: string): number {
    return (this.placement.assignments.get(id) as Assignment).stageIndex;
  }

  /** The workers of a stage, by tp rank. */
  private stageRanks(stage: number): string[] {
    return [...this.placement.assignments]
      .filter(([, a]) => a.stageIndex === stage)
      .sort(([, a], [, b]) => a.shard.tpRank - b.shard.tpRank)
      .map(([id]) => id);
  }

  /** Each stage's collective group (what every step names). */
  private stageGroups(): string[] {
    return Array.from({ length: this.options.pp }, (_, s) =>
      this.options.tp > 1
        ? (this.placement.assignments.get(this.stageRanks(s)[0]) as Assignment).collectiveGroup
        : '',
    );
  }

  /** Whether the registry says the worker is ready with the assignment it was given. */
  private holds(id: string): boolean {
    const record = this.registry.get(id);
    return (
      record?.state === 'ready' && record.assignmentId === this.placement.assignments.get(id)?.assignmentId
    );
  }

  /** Resolves true once check() holds (re-checked on registry events), false after timeoutMs. */
  private waitFor(check: () => boolean, timeoutMs?: number): Promise<boolean> {
    if (check()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const events = ['joined', 'returned', 'ready', 'lost', 'left', 'failed'] as const;
      const done = (value: boolean) => {
        clearTimeout(timer);
        clearInterval(poll);
        for (const e of events) this.registry.off(e, onEvent);
        resolve(value);
      };
      const onEvent = () => {
        if (this.stopping) done(false);
        else if (check()) done(true);
      };
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => done(false), timeoutMs);
      // Heartbeats change records without an event (a worker's state); look now and then too.
      const poll = setInterval(onEvent, 250);
      for (const e of events) this.registry.on(e, onEvent);
    });
  }

  /** The registry's events about placed workers: each may break the pipeline. */
  private follow(): void {
    const placed = (w: WorkerRecord) => this.placement.assignments.has(w.id);
    const lose = (id: string, reason: string) => {
      this.broken.add(this.stageOf(id));
      if (!this.lost.has(id)) {
        this.lost.add(id);
        this.log(`coordinator: ${reason}; the cluster is degraded`);
        this.events.emit('workerLost', id, reason);
      }
      this.requestHeal();
    };
    this.registry.on('lost', (w) => {
      if (placed(w)) lose(w.id, `worker ${w.id} stopped sending heartbeats`);
    });
    this.registry.on('left', (w, reason) => {
      if (placed(w)) lose(w.id, `worker ${w.id} left (${reason})`);
    });
    this.registry.on('joined', (w) => {
      // The same id with a new start time: the process restarted and holds nothing.
      if (placed(w) && w.startedAt !== this.startedAt.get(w.id))
        lose(w.id, `worker ${w.id} restarted (its shard and KV cache are gone)`);
    });
    this.registry.on('returned', (w) => {
      if (!placed(w)) return;
      this.log(`coordinator: worker ${w.id} is heard again (${w.state})`);
      // Its stage's group broke while it was silent (a peer's deadline failed it).
      this.broken.add(this.stageOf(w.id));
      this.requestHeal();
    });
    this.registry.on('failed', (w, message) => {
      if (placed(w) && !this.assigning.has(w.id)) lose(w.id, `worker ${w.id} failed: ${message}`);
    });
    this.registry.on('disconnected', (down) => {
      this.log(
        down
          ? 'coordinator: the NATS connection dropped; serving goes on, membership waits for it'
          : 'coordinator: the NATS connection is back; workers announce themselves again',
      );
      // The server may have come back with an empty store.
      if (!down) void this.persist();
    });
  }

  reportUnavailable(reason: string): void {
    if (this.stopping) return;
    if (this.lost.size === 0 && !this.degraded) {
      this.degraded = true;
      this.log(`coordinator: a step found the pipeline broken (${reason}); checking every worker`);
    }
    // Which stage's group failed is not known: every tensor-parallel stage re-forms.
    if (this.options.tp > 1) for (let s = 0; s < this.options.pp; s++) this.broken.add(s);
    this.requestHeal();
  }

  private requestHeal(): void {
    if (this.stopping) return;
    this.healAgain = true;
    this.healing ??= this.healLoop().finally(() => {
      this.healing = undefined;
    });
  }

  /** Mends until the cluster is whole, retrying with backoff; one loop at a time. */
  private async healLoop(): Promise<void> {
    let failures = 0;
    while (this.healAgain && !this.stopping) {
      const ids = [...this.placement.assignments.keys()];
      await this.waitFor(() => ids.every((id) => alive(this.registry.get(id))));
      if (this.stopping) return;
      // What happened while waiting is in the registry now: mend looks at all of it.
      this.healAgain = false;
      try {
        await this.mend();
        if (this.healAgain) continue; // something else broke meanwhile: look again
        const back = [...this.lost];
        this.lost.clear();
        this.broken.clear();
        this.degraded = false;
        failures = 0;
        this.log(`coordinator: the cluster is whole again${back.length ? ` (${back.join(', ')} back)` : ''}`);
        void this.persist();
        this.events.emit('recovered');
      } catch (err) {
        const delay = Math.min(FIRST_RETRY_MS * 2 ** failures++, MAX_RETRY_MS);
        this.log(
          `coordinator: cannot mend the cluster yet: ${(err as Error).message}; retrying in ${delay} ms`,
        );
        // A registry event (a worker lost, back, restarted) ends the wait early.
        await this.waitFor(() => this.healAgain, delay);
        this.healAgain = true;
      }
    }
  }

  /** Re-places the workers that lost their shard, re-forms the broken stages, checks everyone. */
  private async mend(): Promise<void> {
    for (const [id, address] of this.placement.addresses) {
      const now = this.registry.get(id)?.grpcAddress;
      if (now !== undefined && now !== address) {
        throw new Error(
          `worker ${id} came back at ${now}, not at ${address} where its stage's peers expect it; restart it at ${address}, or restart the coordinator to place the model anew`,
        );
      }
    }
    const stale = new Set([...this.placement.assignments.keys()].filter((id) => !this.holds(id)));
    const stages = new Set([...this.broken, ...[...stale].map((id) => this.stageOf(id))]);
    await Promise.all([...stages].map((s) => this.reform(s, stale)));
    this.executor.setStageGroups(this.stageGroups());
    await Promise.all([...this.placement.assignments.keys()].map((id) => this.check(id)));
  }

  /**
   * Re-forms one stage: stale workers get their assignment again (in a new group), the others
   * move to that group (Regroup), all at once since the group forms across them. A tp = 1 stage
   * has no group: only its stale worker is re-assigned.
   */
  private async reform(stage: number, stale: ReadonlySet<string>): Promise<void> {
    const ranks = this.stageRanks(stage);
    const tp = this.options.tp;
    const generation = ++this.generation;
    const group = `${this.run}-stage-${stage}-g${generation}`;
    const peers = ranks.map((id) => this.placement.addresses.get(id) as string);
    const timeoutMs = this.options.regroupTimeoutMs ?? 30_000;
    const changed = new Map<string, Assignment>();
    await Promise.all(
      ranks.map(async (id) => {
        const held = this.placement.assignments.get(id) as Assignment;
        const address = this.placement.addresses.get(id) as string;
        if (stale.has(id)) {
          const assignment: Assignment = {
            ...held,
            assignmentId: `${this.run}-s${stage}-r${held.shard.tpRank}-g${generation}`,
            ...(tp > 1 ? { collectiveGroup: group } : {}),
          };
          this.decorate(assignment);
          this.log(`coordinator: placing worker ${id} again (stage ${stage}, tp rank ${held.shard.tpRank})`);
          const ready = await this.assign(id, assignment);
          const need = this.placement.geometry.numBlocks;
          if ((ready.kvBlocks ?? 0) < need) {
            throw new Error(
              `worker ${id} came back with ${ready.kvBlocks} KV blocks, fewer than the ${need} scheduled`,
            );
          }
          this.placement.kvBlocks.set(id, ready.kvBlocks as number);
          if (ready.collective) this.placement.transports.set(id, ready.collective);
          changed.set(id, assignment);
        } else if (tp > 1) {
          const reply = await regroupWorker(
            address,
            { assignmentId: held.assignmentId, group, peers, timeoutMs },
            this.credentials,
          );
          changed.set(id, { ...held, collectiveGroup: group });
          if (reply.collectiveTransport)
            this.placement.transports.set(id, reply.collectiveTransport as 'grpc' | 'ipc' | 'nccl');
        }
      }),
    );
    for (const [id, a] of changed) this.placement.assignments.set(id, a);
    if (tp > 1) this.log(`coordinator: stage ${stage} re-formed as ${group}`);
  }

  /** The worker answers, is ready with its assignment, and sits in its stage's group. */
  private async check(id: string): Promise<void> {
    const a = this.placement.assignments.get(id) as Assignment;
    const status = await workerStatus(
      this.placement.addresses.get(id) as string,
      STATUS_DEADLINE_MS,
      this.credentials,
    );
    if (status.state !== 'WORKER_STATE_READY' || status.assignmentId !== a.assignmentId) {
      throw new Error(
        `worker ${id} is ${status.state} with ${status.assignmentId || 'no assignment'}, not ready with ${a.assignmentId}`,
      );
    }
    if (this.options.tp > 1 && status.collectiveGroup !== a.collectiveGroup)
      throw new Error(`worker ${id} is in group ${status.collectiveGroup}, not ${a.collectiveGroup}`);
  }

  private record(): PlacementRecord {
    const p = this.placement;
    const workers: PlacedWorker[] = [...p.assignments].map(([id, assignment]) => ({
      workerId: id,
      grpcAddress: p.addresses.get(id) as string,
      device: p.devices.get(id) ?? 'cpu',
      assignment,
      kvBlocks: p.kvBlocks.get(id) as number,
      ...(p.transports.has(id) ? { collective: p.transports.get(id) } : {}),
    }));
    return {
      v: 1,
      coordinatorId: this.coordinatorId,
      updatedAt: Date.now(),
      modelDir: this.options.modelDir,
      tp: this.options.tp,
      pp: this.options.pp,
      kvCache: { numBlocks: p.geometry.numBlocks, blockSize: p.geometry.blockSize },
      workers,
    };
  }

  private async persist(): Promise<void> {
    await this.store?.write(this.record());
  }

  private workers(): ClusterWorker[] {
    const p = this.placement;
    return [...p.assignments].map(([id, a]) => {
      const record = this.registry.get(id);
      return {
        id,
        address: p.addresses.get(id) as string,
        device: p.devices.get(id) ?? 'cpu',
        ...(p.transports.has(id) ? { collective: p.transports.get(id) } : {}),
        stage: a.stageIndex,
        tpRank: a.shard.tpRank,
        layerStart: a.shard.layerStart,
        layerEnd: a.shard.layerEnd,
        state: this.lost.has(id) ? (alive(record) ? 'rejoining' : 'lost') : (record?.state ?? 'unknown'),
        kvBlocks: p.kvBlocks.get(id) ?? 0,
        ...heartbeatAge(record?.lastSeenMs),
        ...metricsUrl(record?.metricsAddress),
      };
    });
  }

  handle(): ClusterHandle {
    return {
      executor: this.executor,
      kvGeometry: this.placement.geometry,
      tp: this.options.tp,
      pp: this.options.pp,
      events: this.events,
      workers: () => this.workers(),
      healthy: () => this.lost.size === 0 && !this.degraded,
      reportUnavailable: (reason) => this.reportUnavailable(reason),
      stop: async () => {
        this.stopping = true;
        await this.executor.close();
        this.store?.close();
        await this.registry.close();
      },
    };
  }
}
