// Cluster mode: workers on any machines announce themselves over NATS; the coordinator waits
// for tp x pp of them, plans the placement from their inventory, sends each its assignment,
// and waits until every shard is loaded. A worker whose heartbeats stop marks the cluster
// degraded (health NOT_SERVING); steps in flight on it fail with a clear error.

import { randomUUID } from 'node:crypto';
import type { LlamaConfig } from '@medcluster/worker';
import type { NatsConnection } from 'nats';
import { WorkerRegistry } from '../control/index.js';
import { type PlacementPlan, planPlacement } from '../placement/index.js';
import type { ServedWorker } from '../server/serving-context.js';
import { assignmentsFor, firstStageAddresses, type KvGeometry } from './assignments.js';
import { PipelineExecutor } from './pipeline-executor.js';

export interface NatsClusterOptions {
  nc: NatsConnection;
  cluster: string;
  modelDir: string;
  config: LlamaConfig;
  tp: number;
  pp: number;
  kvCache: KvGeometry;
  /** How long to wait for enough workers to announce themselves. */
  workerTimeoutMs: number;
  heartbeatTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface NatsCluster {
  executor: PipelineExecutor;
  plan: PlacementPlan;
  registry: WorkerRegistry;
  workers(): ServedWorker[];
  healthy(): boolean;
  close(): Promise<void>;
}

export async function startNatsCluster(options: NatsClusterOptions): Promise<NatsCluster> {
  const log = options.log ?? (() => undefined);
  const { tp, pp } = options;
  const registry = await WorkerRegistry.start({
    nc: options.nc,
    cluster: options.cluster,
    heartbeatTimeoutMs: options.heartbeatTimeoutMs,
  });
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
    const assignments = assignmentsFor(
      plan,
      addresses,
      options.modelDir,
      options.kvCache,
      `run-${randomUUID().slice(0, 8)}`,
    );
    const inPlan = new Set(assignments.keys());
    let lost: string | undefined;
    registry.on('lost', (w) => {
      if (inPlan.has(w.id)) {
        lost = w.id;
        log(`coordinator: worker ${w.id} stopped sending heartbeats; the cluster is degraded`);
      }
    });
    await Promise.all(
      [...assignments].map(async ([id, assignment]) => {
        const { v: _v, ...spec } = assignment;
        await registry.assign(id, spec);
        log(
          `coordinator: worker ${id} ready (stage ${assignment.stageIndex}, tp rank ${assignment.shard.tpRank})`,
        );
      }),
    );
    const executor = await PipelineExecutor.connect(
      firstStageAddresses(plan, addresses),
      options.config.vocabRows,
      pp,
    );
    return {
      executor,
      plan,
      registry,
      workers: () =>
        [...assignments].map(([id, a]) => ({
          id,
          address: addresses.get(id) as string,
          device: records.find((r) => r.id === id)?.devices[0]?.kind ?? 'cpu',
          stage: a.stageIndex,
          tpRank: a.shard.tpRank,
          layerStart: a.shard.layerStart,
          layerEnd: a.shard.layerEnd,
          state: registry.get(id)?.state ?? 'unknown',
        })),
      healthy: () => lost === undefined,
      close: async () => registry.close(),
    };
  } catch (err) {
    await registry.close();
    throw err;
  }
}
