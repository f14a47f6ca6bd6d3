// What the serving code sees of a running cluster, however it was launched: worker processes
// started by this process (`medcluster up`) or workers that joined over NATS (`medcluster
// coordinator`). The data plane's communicator set-up and the reliability work's worker
// replacement belong behind this same shape.

import type { EventEmitter } from 'node:events';
import type { KvGeometry } from '@medcluster/proto';
import type { StepExecutor } from '../scheduler/executor.js';

/** One worker as the public API reports it (GetModelInfo, GET /cluster). */
export interface ClusterWorker {
  id: string;
  address: string;
  device: string;
  /** tp > 1: how its stage's ranks exchange tensors ("grpc", "ipc" or "nccl"), as the worker
   * reported when it was ready. */
  collective?: string;
  stage: number;
  tpRank: number;
  layerStart: number;
  layerEnd: number;
  /** Lifecycle state: "ready", "loading", "lost", "exited", ... */
  state: string;
  /** KV cache blocks the worker allocated. */
  kvBlocks: number;
  /** Seconds since its last heartbeat (cluster mode, where workers heartbeat over NATS). */
  heartbeatAgeSeconds?: number;
  /** Where Prometheus scrapes the worker (http://host:port/metrics), when it serves metrics. */
  metricsUrl?: string;
}

export interface ClusterEvents {
  /** A worker of the placement stopped (exited, or its heartbeats stopped): the cluster is degraded. */
  workerLost: [workerId: string, reason: string];
  /** Every lost worker is back and reachable: steps can run again. */
  recovered: [];
}

export interface ClusterHandle {
  /** Runs steps on the placement's first stage. */
  readonly executor: StepExecutor;
  /** The KV cache every worker holds (the least block count they allocated). */
  readonly kvGeometry: KvGeometry;
  readonly tp: number;
  readonly pp: number;
  workers(): ClusterWorker[];
  /** False while a worker of the placement is lost (until `recovered`). */
  healthy(): boolean;
  readonly events: EventEmitter<ClusterEvents>;
  /** Closes the executor, then stops or releases the workers. */
  stop(): Promise<void>;
}
