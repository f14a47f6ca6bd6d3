// Single-machine mode: the coordinator starts tp x pp worker processes itself, gives each its
// assignment on the command line, and follows their progress as JSON lines on stdout.
// No NATS: the parent knows every worker's address because it chose their ports. Each worker's
// ready line carries its KV cache block count; the cluster's cache is the least of them.

import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { freemem } from 'node:os';
import { createInterface } from 'node:readline';
import { cudaDeviceCount, type DeviceKind } from '@medcluster/kernels';
import type { Assignment, KvCacheMessage } from '@medcluster/proto';
import type { LlamaConfig, WorkerEvent } from '@medcluster/worker';
import { freePort } from '@medcluster/worker';
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
  /** Kernel threads per worker (default: this machine's cores shared among the workers). */
  threadsPerWorker?: number;
  /** Command that starts a worker: [executable, ...args] (default: this CLI). */
  workerCommand?: string[];
  readyTimeoutMs?: number;
  log?: (line: string) => void;
}

interface LocalWorker {
  id: string;
  address: string;
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
  const addresses = new Map<string, string>();
  for (const id of ids) addresses.set(id, `127.0.0.1:${await freePort()}`);
  const kvCache = kvCacheForDevice(options.kvCache, options.device);
  const slots =
    options.device === 'cuda'
      ? localGpuSlots(count, cudaDeviceCount())
      : ids.map(() => ({ ordinal: 0, sharers: 1 }));
  const slotOf = new Map(ids.map((id, i) => [id, slots[i]]));
  const kvCacheOf = (id: string): KvCacheMessage => {
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
  const assignments = assignmentsFor(
    plan,
    addresses,
    options.modelDir,
    kvCacheOf,
    `local-${randomUUID().slice(0, 8)}`,
  );
  const [exe, ...baseArgs] = options.workerCommand ?? defaultWorkerCommand();
  const threads = options.threadsPerWorker;

  const workers: LocalWorker[] = [];
  const ready: Promise<KvReport>[] = [];
  const transports = new Map<string, string>();
  for (const id of ids) {
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
    ];
    const child = spawn(exe, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    const { shard, stageIndex } = assignments.get(id) as Assignment;
    workers.push({
      id,
      address: addresses.get(id) as string,
      process: child,
      stageIndex,
      tpRank: shard.tpRank,
      layerStart: shard.layerStart,
      layerEnd: shard.layerEnd,
    });
    ready.push(
      new Promise<KvReport>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`worker ${id} was not ready after ${options.readyTimeoutMs ?? 120_000} ms`)),
          options.readyTimeoutMs ?? 120_000,
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
          if (event.event === 'ready') {
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
      }),
    );
  }

  const stopWorkers = async () => {
    await Promise.all(
      workers.map(
        ({ process: child }) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once('exit', () => resolve());
            child.kill('SIGTERM');
            setTimeout(() => child.kill('SIGKILL'), 5000).unref();
          }),
      ),
    );
  };

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
    );
    const reported = new Map(reports.map((r) => [r.workerId, r.kvBlocks]));
    const events = new EventEmitter<ClusterEvents>();
    let stopping = false;
    const lost = new Set<string>();
    for (const w of workers) {
      w.process.on('exit', (code, signal) => {
        if (stopping) return;
        lost.add(w.id);
        const reason = `worker ${w.id} exited (${signal ?? `code ${code}`})`;
        log(`local cluster: ${reason}; the cluster is degraded`);
        events.emit('workerLost', w.id, reason);
      });
    }
    return {
      executor,
      kvGeometry: geometry,
      tp,
      pp,
      events,
      healthy: () => lost.size === 0,
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
          state: lost.has(w.id) ? 'exited' : 'ready',
          kvBlocks: reported.get(w.id) ?? 0,
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
