// Cluster mode: workers on any machines announce themselves over NATS; the coordinator waits
// for tp x pp of them, plans the placement from their inventory, sends each its assignment,
// and waits until every shard is loaded. Each ready worker reports its KV cache block count;
// the cluster's cache is the least of them. A worker whose heartbeats stop marks the cluster
// degraded (health NOT_SERVING); steps in flight on it fail with a clear error. With internal
// mutual TLS a worker joins only once its gRPC server presented a certificate that verifies
// against the internal CA for the address it announced; one that does not is refused, with the
// reason in the log, and the coordinator keeps waiting for workers it can talk to.

import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { InternalTls, LlamaConfig } from '@medcluster/worker';
import type { NatsConnection } from 'nats';
import { WorkerRegistry } from '../control/index.js';
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
}

function metricsUrl(address: string | undefined): { metricsUrl?: string } {
  return address === undefined ? {} : { metricsUrl: `http://${address}/metrics` };
}

/** The registry stamps heartbeats with performance.now(). */
function heartbeatAge(lastSeenMs: number | undefined): { heartbeatAgeSeconds?: number } {
  return lastSeenMs === undefined ? {} : { heartbeatAgeSeconds: (performance.now() - lastSeenMs) / 1000 };
}

/** Waits for the workers, assigns their shards, and resolves once every one is ready and connected. */
export async function startNatsCluster(options: NatsClusterOptions): Promise<ClusterHandle> {
  const log = options.log ?? (() => undefined);
  const { tp, pp } = options;
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
  try {
    log(`coordinator: waiting for ${tp * pp} workers on cluster '${options.cluster}'`);
    const records = await registry.waitForWorkers(tp * pp, options.workerTimeoutMs);
    const plan = planPlacement({
      config: options.config,
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
      options.modelDir,
      (id) => kvCacheForDevice(options.kvCache, devices.get(id) ?? 'cpu'),
      `run-${randomUUID().slice(0, 8)}`,
    );
    if (options.servedModelName)
      for (const a of assignments.values()) a.servedModelName = options.servedModelName;
    const inPlan = new Set(assignments.keys());
    const events = new EventEmitter<ClusterEvents>();
    const lost = new Set<string>();
    registry.on('lost', (w) => {
      if (!inPlan.has(w.id)) return;
      lost.add(w.id);
      const reason = `worker ${w.id} stopped sending heartbeats`;
      log(`coordinator: ${reason}; the cluster is degraded`);
      events.emit('workerLost', w.id, reason);
    });
    const transports = new Map<string, string>();
    const reports: KvReport[] = await Promise.all(
      [...assignments].map(async ([id, assignment]) => {
        const { v: _v, ...spec } = assignment;
        const ready = await registry.assign(id, spec);
        if (ready.collective !== undefined) transports.set(id, ready.collective);
        log(
          `coordinator: worker ${id} ready (stage ${assignment.stageIndex}, tp rank ${assignment.shard.tpRank}, ${ready.kvBlocks} KV blocks${ready.collective ? `, collective ${ready.collective}` : ''})`,
        );
        return { workerId: id, assigned: assignment.kvCache, kvBlocks: ready.kvBlocks };
      }),
    );
    // Only after every worker loaded: a block id is usable only if every stage and rank has it.
    const kvCache = kvGeometryFromReports(reports);
    log(`coordinator: ${describeKvGeometry(kvCache, reports)}`);
    const executor = await PipelineExecutor.connect(
      firstStageAddresses(plan, addresses),
      options.config.vocabRows,
      pp,
      tls?.channelCredentials(),
    );
    return {
      executor,
      kvGeometry: kvCache,
      tp,
      pp,
      events,
      workers: () =>
        [...assignments].map(([id, a]) => ({
          id,
          address: addresses.get(id) as string,
          device: devices.get(id) ?? 'cpu',
          ...(transports.has(id) ? { collective: transports.get(id) } : {}),
          stage: a.stageIndex,
          tpRank: a.shard.tpRank,
          layerStart: a.shard.layerStart,
          layerEnd: a.shard.layerEnd,
          state: lost.has(id) ? 'lost' : (registry.get(id)?.state ?? 'unknown'),
          kvBlocks: reports.find((r) => r.workerId === id)?.kvBlocks ?? 0,
          ...heartbeatAge(registry.get(id)?.lastSeenMs),
          ...metricsUrl(registry.get(id)?.metricsAddress),
        })),
      healthy: () => lost.size === 0,
      stop: async () => {
        await executor.close();
        await registry.close();
      },
    };
  } catch (err) {
    await registry.close();
    throw err;
  }
}
