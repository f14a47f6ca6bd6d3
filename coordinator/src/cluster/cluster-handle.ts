// What the serving code sees of a running cluster, however it was launched: worker processes
// started by this process (`medcluster up`) or workers that joined over NATS (`medcluster
// coordinator`). Both mend a broken pipeline behind it: a lost worker is replaced (restarted
// under `up`, re-placed when it announces itself again in cluster mode), its stage's collective
// group re-formed, and `recovered` emitted once every stage answers again.

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
  /**
   * A step found the pipeline broken (a stream dropped, a step past its deadline, a stage's group
   * failed) though no worker is known lost: the cluster finds out which worker is gone or hung,
   * mends what broke, and emits `recovered`. Idempotent while it mends.
   */
  reportUnavailable(reason: string): void;
  readonly events: EventEmitter<ClusterEvents>;
  /** Closes the executor, then stops or releases the workers. */
  stop(): Promise<void>;
}
