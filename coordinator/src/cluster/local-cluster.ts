// Single-machine mode: the coordinator starts tp x pp worker processes itself, gives each its
// assignment on the command line, and follows their progress as JSON lines on stdout.
// No NATS: the parent knows every worker's address because it chose their ports. Each worker's
// ready line carries its KV cache block count; the cluster's cache is the least of them.
// A worker that exits is restarted with its whole stage, with backoff, at the same address and
// with the same assignment in a new collective group; the cluster is degraded (workerLost) until
// it is back (recovered). A step that finds the pipeline broken with every process running (a
// worker that hangs, a stage's group that failed) makes the cluster ask every worker: one that
// does not answer is killed, and so restarted; if all answer, each tensor-parallel stage moves to
// a new group (Regroup), keeping its weights.

import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { freemem } from 'node:os';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { cudaDeviceCount, type DeviceKind } from '@medcluster/kernels';
import type { Assignment, KvCacheSpec, SyntheticWeightsMessage } from '@medcluster/proto';
import type { InternalTls, LlamaConfig, WorkerEvent } from '@medcluster/worker';
import { freePorts, regroupWorker, workerStatus } from '@medcluster/worker';
import { planPlacement } from '../placement/index.js';
import { assignmentsFor, firstStageAddresses } from './assignments.js';
import type { ClusterEvents, ClusterHandle } from './cluster-handle.js';
import {
  describeKvGeometry,
  type KvCacheRequest,
  type KvReport,
  kvCacheForDevice,
  kvGeometryFromReports,
} from './kv-cache.js';
import { PipelineExecutor } from './pipeline-executor.js';

export interface LocalClusterOptions {
  modelDir: string;
  config: LlamaConfig;
  tp: number;
  pp: number;
  device: DeviceKind;
  /** A block count or a memory share for every worker; with neither, the device's default. */
  kvCache: KvCacheRequest;
  /** Workers serve random weights of these shapes (`config` must be the preset's) instead of modelDir's. */
  synthetic?: SyntheticWeightsMessage;
  /** Kernel threads per worker (default: this machine's cores shared among the workers). */
  threadsPerWorker?: number;
  /** Each worker serves /metrics, /health and /ready on a free port (GET /cluster lists them). */
  workerMetrics?: boolean;
  /** More flags for every worker (its log settings). */
  workerArgs?: string[];
  /** The name the APIs serve the model under (the workers label their metrics with it). */
  servedModelName?: string;
  /** Command that starts a worker: [executable, ...args] (default: this CLI). */
  workerCommand?: string[];
  /** Mutual TLS on every internal channel: the workers get the same files (`--internal-*`). */
  internalTls?: InternalTls;
  readyTimeoutMs?: number;
  /** A step with no result this long after it was sent fails the pipeline (executor). */
  stepTimeoutMs?: number;
  /** A collective call whose peers do not all arrive within this fails its stage's group. */
  collectiveTimeoutMs?: number;
  log?: (line: string) => void;
}

interface LocalWorker {
  id: string;
  address: string;
  /** Set once the worker says where it serves metrics. */
  metricsAddress?: string;
  process: ChildProcess;
  stageIndex: number;
  tpRank: number;
  layerStart: number;
  layerEnd: number;
}

/**
 * The GPU of each of `count` local workers, round robin over `gpus` devices, and how many
 * workers share it. Workers that share a GPU split a memory-fraction KV cache between them:
 * each takes its share of what it sees free, so their caches fit whichever loads first.
 */
export function localGpuSlots(count: number, gpus: number): { ordinal: number; sharers: number }[] {
  const n = Math.max(1, gpus);
  return Array.from({ length: count }, (_, i) => ({
    ordinal: i % n,
    sharers: Math.floor(count / n) + (i % n < count % n ? 1 : 0),
  }));
}

/** First delay before restarting a lost stage; it doubles per failed attempt, up to the max. */
const RESTART_BACKOFF_MS = 500;
const MAX_RESTART_BACKOFF_MS = 30_000;

/**
 * MEDCLUSTER_ variables a worker started here inherits: how it finds its native parts and how it
 * runs them, not settings. Every other MEDCLUSTER_ variable is left out: settings such as
 * MEDCLUSTER_LISTEN or MEDCLUSTER_CONFIG were given to this command, whose flags differ from the
 * worker's (a worker would bind the coordinator's port, or refuse a config key it lacks), and
 * workers get theirs on the command line; MEDCLUSTER_API_KEYS is no worker's business.
 */
const INHERITED_BY_WORKERS = new Set([
  'MEDCLUSTER_COLLECTIVE',
  'MEDCLUSTER_DEBUG',
  'MEDCLUSTER_FAILPOINTS',
  'MEDCLUSTER_GPU_CHECK',
  'MEDCLUSTER_HAND_OFF',
  'MEDCLUSTER_KERNELS_ADDON',
  'MEDCLUSTER_MODEL_CACHE',
  'MEDCLUSTER_NCCL_LIBRARY',
  'MEDCLUSTER_PROTO_ROOT',
]);

/** The environment of a worker process: this one's, without its MEDCLUSTER_ settings. */
export function workerEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return Object.fromEntries(
    Object.entries(env).filter(([name]) => !name.startsWith('MEDCLUSTER_') || INHERITED_BY_WORKERS.has(name)),
  );
}

function defaultWorkerCommand(): string[] {
  // This process runs the CLI (bin shim or bundle): start workers the same way.
  return [process.execPath, ...process.execArgv, process.argv[1]];
}

/** Starts the worker processes and resolves once every one is ready and connected. */
export async function startLocalCluster(options: LocalClusterOptions): Promise<ClusterHandle> {
  const { tp, pp, config } = options;
  const log = options.log ?? (() => undefined);
  const count = tp * pp;
  const ids = Array.from({ length: count }, (_, i) => `w${i}`);
  const plan = planPlacement({
    config,
    workers: ids.map((id) => ({ id, device: options.device, memoryBytes: Math.floor(freemem() / count) })),
    tp,
    pp,
  });
  // Every worker's gRPC port and metrics port, chosen together so that no two are the same (a
  // metrics server left to pick its own port could take a gRPC port chosen here before its worker
  // binds it).
  const ports = await freePorts(options.workerMetrics ? 2 * count : count);
  const addresses = new Map(ids.map((id, i) => [id, `127.0.0.1:${ports[i]}`]));
  const metricsPorts = new Map(ids.map((id, i) => [id, ports[count + i]]));
  const kvCache = kvCacheForDevice(options.kvCache, options.device);
  const slots =
    options.device === 'cuda'
      ? localGpuSlots(count, cudaDeviceCount())
      : ids.map(() => ({ ordinal: 0, sharers: 1 }));
  const slotOf = new Map(ids.map((id, i) => [id, slots[i]]));
  const kvCacheOf = (id: string): KvCacheSpec => {
    const { sharers } = slotOf.get(id) as { sharers: number };
    return 'memoryFraction' in kvCache && sharers > 1
      ? { blockSize: kvCache.blockSize, memoryFraction: kvCache.memoryFraction / sharers }
      : kvCache;
  };
  if (slots.some((s) => s.sharers > 1)) {
    log(
      `local cluster: ${count} workers share ${Math.max(1, cudaDeviceCount())} GPU(s); memory-sized KV caches split between them`,
    );
  }
  const run = `local-${randomUUID().slice(0, 8)}`;
  const assignments = assignmentsFor(plan, addresses, options.modelDir, kvCacheOf, run);
  for (const a of assignments.values()) {
    if (options.synthetic) a.synthetic = options.synthetic;
    if (options.servedModelName) a.servedModelName = options.servedModelName;
    a.deadlines = {
      ...(options.collectiveTimeoutMs ? { collectiveMs: options.collectiveTimeoutMs } : {}),
      ...(options.stepTimeoutMs ? { stepMs: options.stepTimeoutMs } : {}),
    };
  }
  /** Collective groups re-formed so far: each new group of a stage gets a new name. */
  let generation = 0;
  const regroupAssignments = (stage: number): string => {
    const group = `${run}-stage-${stage}-g${++generation}`;
    for (const [id, a] of assignments)
      if (a.stageIndex === stage) assignments.set(id, { ...a, collectiveGroup: group });
    return group;
  };
  const stageGroups = () =>
    Array.from({ length: pp }, (_, s) =>
      tp > 1 ? ([...assignments.values()].find((a) => a.stageIndex === s)?.collectiveGroup ?? '') : '',
    );
  const [exe, ...baseArgs] = options.workerCommand ?? defaultWorkerCommand();
  const threads = options.threadsPerWorker;
  const tls = options.internalTls;
  const internalTlsArgs = tls
    ? [
        ...['--internal-ca', resolve(tls.files.ca)],
        ...['--internal-cert', resolve(tls.files.cert)],
        ...['--internal-key', resolve(tls.files.key)],
      ]
    : [];

  /** The current process of each worker id, in id order (a restart replaces the entry). */
  const workers: LocalWorker[] = [];
  const readyTimeoutMs = options.readyTimeoutMs ?? 120_000;
  /** The collective transport each tp > 1 worker reported when it was ready. */
  const transports = new Map<string, string>();

  /** Starts worker `id` with its assignment; resolves with its KV report once it is ready. */
  const spawnWorker = (id: string): { worker: LocalWorker; ready: Promise<KvReport> } => {
    const args = [
      ...baseArgs,
      'worker',
      '--id',
      id,
      '--listen',
      addresses.get(id) as string,
      '--device',
      options.device,
      ...(options.device === 'cuda' ? ['--ordinal', String(slotOf.get(id)?.ordinal ?? 0)] : []),
      '--assignment',
      JSON.stringify(assignments.get(id)),
      ...(threads ? ['--threads', String(threads)] : []),
      ...(options.workerMetrics ? ['--metrics-port', String(metricsPorts.get(id))] : []),
      ...(options.workerArgs ?? []),
      ...internalTlsArgs,
      // stdin stays an open pipe that we never write: it closes when this process ends, however.
      '--exit-with-stdin',
    ];
    const child = spawn(exe, args, { stdio: ['pipe', 'pipe', 'inherit'], env: workerEnv() });
    const { shard, stageIndex } = assignments.get(id) as Assignment;
    const worker: LocalWorker = {
      id,
      address: addresses.get(id) as string,
      process: child,
      stageIndex,
      tpRank: shard.tpRank,
      layerStart: shard.layerStart,
      layerEnd: shard.layerEnd,
    };
    const ready = new Promise<KvReport>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`worker ${id} was not ready after ${readyTimeoutMs} ms`)),
        readyTimeoutMs,
      );
      const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
      lines.on('line', (line) => {
        let event: WorkerEvent;
        try {
          event = JSON.parse(line) as WorkerEvent;
        } catch {
          log(`[${id}] ${line}`);
          return;
        }
        if (event.event === 'listening') worker.metricsAddress = event.metricsAddress;
        else if (event.event === 'ready') {
          clearTimeout(timer);
          if (event.collective !== undefined) transports.set(id, event.collective);
          resolve({ workerId: id, assigned: kvCacheOf(id), kvBlocks: event.kvBlocks });
        } else if (event.event === 'failed') {
          clearTimeout(timer);
          reject(new Error(`worker ${id} failed to load: ${event.error}`));
        }
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`worker ${id} exited (${signal ?? `code ${code}`}) before it was ready`));
      });
    });
    ready.catch(() => undefined); // handled by whoever awaits it; never an unhandled rejection
    return { worker, ready };
  };

  const stopProcesses = (list: readonly LocalWorker[], signal: NodeJS.Signals = 'SIGTERM') =>
    Promise.all(
      list.map(
        ({ process: child }) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once('exit', () => resolve());
            child.kill(signal);
            setTimeout(() => child.kill('SIGKILL'), 5000).unref();
          }),
      ),
    );
  const stopWorkers = () => stopProcesses(workers);

  const ready: Promise<KvReport>[] = [];
  for (const id of ids) {
    const started = spawnWorker(id);
    workers.push(started.worker);
    ready.push(started.ready);
  }

  try {
    const reports = await Promise.all(ready);
    // Only after every worker loaded: a block id is usable only if every stage and rank has it.
    const geometry = kvGeometryFromReports(reports);
    const chosen = [...new Set(transports.values())];
    log(
      `local cluster: ${count} workers ready (tp=${tp}, pp=${pp}${chosen.length ? `, collective ${chosen.join('/')}` : ''}); ${describeKvGeometry(geometry, reports)}`,
    );
    const executor = await PipelineExecutor.connect(
      firstStageAddresses(plan, addresses),
      config.vocabRows,
      pp,
      {
        stepTimeoutMs: options.stepTimeoutMs,
        stageGroups: stageGroups(),
        credentials: tls?.channelCredentials(),
      },
    );
    const reported = new Map(reports.map((r) => [r.workerId, r.kvBlocks]));
    const events = new EventEmitter<ClusterEvents>();
    let stopping = false;
    const lost = new Set<string>();
    /** A step found the pipeline broken while every process ran; cleared once it is mended. */
    let degraded = false;
    let mending: Promise<void> | undefined;
    /** Failed restarts of each stage in a row, for the backoff. */
    const attempts = new Map<number, number>();
    const restarting = new Set<number>();

    const watch = (w: LocalWorker) =>
      w.process.on('exit', (code, signal) => {
        if (stopping || restarting.has(w.stageIndex)) return;
        lost.add(w.id);
        const reason = `worker ${w.id} exited (${signal ?? `code ${code}`})`;
        log(`local cluster: ${reason}; the cluster is degraded until it is back`);
        events.emit('workerLost', w.id, reason);
        scheduleRestart(w.stageIndex);
      });

    // A lost worker comes back with its whole stage: its tensor-parallel peers hold a collective
    // group it can no longer join, and every rank must restart its KV cache together.
    const scheduleRestart = (stage: number) => {
      if (restarting.has(stage) || stopping) return;
      restarting.add(stage);
      const attempt = attempts.get(stage) ?? 0;
      const delayMs = Math.min(RESTART_BACKOFF_MS * 2 ** attempt, MAX_RESTART_BACKOFF_MS);
      setTimeout(() => void restartStage(stage), delayMs).unref();
    };

    const restartStage = async (stage: number) => {
      const members = workers.filter((w) => w.stageIndex === stage);
      for (const w of members) lost.add(w.id);
      await stopProcesses(members, 'SIGKILL');
      if (stopping) return;
      log(`local cluster: restarting stage ${stage} (${members.map((w) => w.id).join(', ')})`);
      // A new group: a step sent to the old one never runs in it.
      regroupAssignments(stage);
      const started = members.map((w) => spawnWorker(w.id));
      for (const { worker } of started) workers[workers.findIndex((w) => w.id === worker.id)] = worker;
      try {
        const back = await Promise.all(started.map((s) => s.ready));
        for (const r of back) {
          if ((r.kvBlocks ?? 0) < geometry.numBlocks) {
            throw new Error(
              `worker ${r.workerId} came back with ${r.kvBlocks} KV blocks, fewer than the ${geometry.numBlocks} the scheduler uses`,
            );
          }
          reported.set(r.workerId, r.kvBlocks);
        }
      } catch (err) {
        attempts.set(stage, (attempts.get(stage) ?? 0) + 1);
        log(`local cluster: stage ${stage} did not come back: ${(err as Error).message}; retrying`);
        restarting.delete(stage);
        await stopProcesses(
          started.map((s) => s.worker),
          'SIGKILL',
        );
        scheduleRestart(stage);
        return;
      }
      attempts.delete(stage);
      restarting.delete(stage);
      for (const { worker } of started) {
        lost.delete(worker.id);
        watch(worker);
      }
      log(`local cluster: stage ${stage} is back`);
      executor.setStageGroups(stageGroups());
      if (lost.size === 0) {
        degraded = false;
        events.emit('recovered');
      }
    };

    /** Asks every worker; kills the ones that do not answer (restarted), else re-forms the groups. */
    const mendPipeline = async () => {
      const silent: LocalWorker[] = [];
      await Promise.all(
        workers.map(async (w) => {
          const status = await workerStatus(w.address, 3_000, tls?.channelCredentials()).catch(
            () => undefined,
          );
          if (status?.state !== 'WORKER_STATE_READY') silent.push(w);
        }),
      );
      if (stopping) return;
      if (silent.length > 0) {
        for (const w of silent) {
          log(`local cluster: worker ${w.id} does not answer; restarting its stage`);
          w.process.kill('SIGKILL');
        }
        return; // its exit restarts the stage, which ends the degradation
      }
      for (let stage = 0; tp > 1 && stage < pp; stage++) {
        const members = workers.filter((w) => w.stageIndex === stage).sort((a, b) => a.tpRank - b.tpRank);
        const group = regroupAssignments(stage);
        try {
          await Promise.all(
            members.map((w) =>
              regroupWorker(
                w.address,
                {
                  assignmentId: (assignments.get(w.id) as Assignment).assignmentId,
                  group,
                  peers: members.map((m) => m.address),
                  timeoutMs: 30_000,
                },
                tls?.channelCredentials(),
              ),
            ),
          );
          log(`local cluster: stage ${stage} re-formed as ${group}`);
        } catch (err) {
          log(`local cluster: stage ${stage} could not re-form (${(err as Error).message}); restarting it`);
          for (const w of members) w.process.kill('SIGKILL');
          return;
        }
      }
      executor.setStageGroups(stageGroups());
      if (lost.size === 0 && !stopping) {
        degraded = false;
        log('local cluster: every worker answers');
        events.emit('recovered');
      }
    };

    const reportUnavailable = (reason: string) => {
      // A restart under way mends it; one check at a time.
      if (stopping || lost.size > 0 || mending) return;
      degraded = true;
      log(`local cluster: a step found the pipeline broken (${reason}); checking every worker`);
      mending = mendPipeline().finally(() => {
        mending = undefined;
      });
    };

    for (const w of workers) watch(w);
    return {
      executor,
      kvGeometry: geometry,
      tp,
      pp,
      events,
      healthy: () => lost.size === 0 && !degraded,
      reportUnavailable,
      workers: () =>
        workers.map((w) => ({
          id: w.id,
          address: w.address,
          device: options.device,
          ...(transports.has(w.id) ? { collective: transports.get(w.id) } : {}),
          stage: w.stageIndex,
          tpRank: w.tpRank,
          layerStart: w.layerStart,
          layerEnd: w.layerEnd,
          state: lost.has(w.id) ? (restarting.has(w.stageIndex) ? 'restarting' : 'exited') : 'ready',
          kvBlocks: reported.get(w.id) ?? 0,
          ...(w.metricsAddress ? { metricsUrl: `http://${w.metricsAddress}/metrics` } : {}),
        })),
      stop: async () => {
        stopping = true;
        await executor.close();
        await stopWorkers();
      },
    };
  } catch (err) {
    await stopWorkers();
    throw err;
  }
}
