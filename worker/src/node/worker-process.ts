// A worker process: one device, one gRPC server (Worker and Collective services), and either
// a NATS agent that waits for an assignment (cluster mode) or an assignment given at start
// (single-machine mode, where the parent reads progress as JSON lines on stdout).

import { freemem, hostname } from 'node:os';
import * as grpc from '@grpc/grpc-js';
import type { DeviceKind } from '@medcluster/kernels';
import type { Assignment } from '@medcluster/proto';
import type { NatsConnection } from 'nats';
import { addCollectiveService, type CollectiveHost } from '../collective/index.js';
import { openStageCollective, type TransportChoice } from '../collective/stage-collective.js';
import { connectNats, describeNatsConnection, type NatsTarget, WorkerAgent } from '../control/index.js';
import type { CollectiveTransport } from '../engine/types.js';
import { failpointsFromEnv } from './failpoints.js';
import { INTERNAL_GRPC_OPTIONS } from './grpc-options.js';
import type { InternalTls } from './internal-tls.js';
import type { Logger } from './log.js';
import { addWorkerService } from './stage-service.js';
import {
  serveWorkerMetrics,
  timedCollective,
  WorkerMetrics,
  type WorkerMetricsSource,
} from './worker-metrics.js';
import { type CollectiveOpener, WorkerNode } from './worker-node.js';

export interface WorkerProcessOptions {
  workerId: string;
  /** host:port to serve on (port 0 picks a free port). */
  listen: string;
  /** Address peers use to reach this worker (default: the bound listen address). */
  advertise?: string;
  device: DeviceKind;
  threads?: number;
  ordinal?: number;
  /** Memory offered for the shard, in bytes (default: this machine's free memory for CPU). */
  memoryBytes?: number;
  /** Serve /metrics, /health and /ready on this port of the listen host (0 picks one; absent: none). */
  metricsPort?: number;
  /** Cluster mode: announce over NATS and wait for an assignment. `url` carries no credentials
   * (they are in `auth`: parseNatsUrl splits them out), so it can be logged; `tls`: over TLS only. */
  nats?: { url: string; cluster: string; auth?: NatsTarget['auth']; tls?: NatsTarget['tls'] };
  /** Single-machine mode: load this at start. */
  assignment?: Assignment;
  /** Where the worker's log lines go (lifecycle; per-step lines at debug). */
  log?: Logger;
  /** Receives lifecycle events (single-machine mode prints them as JSON lines). */
  onEvent?: (event: WorkerEvent) => void;
  /** The collective transport a tp > 1 stage asks for (default: $MEDCLUSTER_COLLECTIVE, else
   * auto). Every rank of a stage must ask for the same. */
  collectiveTransport?: TransportChoice;
  /** Mutual TLS on the worker's server and on its clients (next stage, collective); absent: plaintext. */
  internalTls?: InternalTls;
}

export type WorkerEvent =
  /** metricsAddress: host:port of /metrics, /health and /ready, when served. */
  | { event: 'listening'; workerId: string; address: string; metricsAddress?: string }
  | { event: 'progress'; workerId: string; loaded: number; total: number }
  /** kvBlocks: KV cache blocks allocated (the parent's scheduler uses the least over its workers);
   * collective: the transport the stage's ranks chose (tp > 1 only). */
  | { event: 'ready'; workerId: string; kvBlocks: number; collective?: CollectiveTransport }
  | { event: 'failed'; workerId: string; error: string };

export interface RunningWorker {
  address: string;
  /** host:port of the metrics server, when one was asked for. */
  metricsAddress?: string;
  node: WorkerNode;
  stop(reason?: string): Promise<void>;
}

/** What a loaded shard reports in its ready event. */
interface Loaded {
  kvBlocks: number;
  collective?: CollectiveTransport;
}

/** Forms the stage's group on this worker's device, timed into its metrics (load and Regroup). */
function collectiveOpener(
  node: WorkerNode,
  host: CollectiveHost,
  transport: TransportChoice,
  credentials: grpc.ChannelCredentials | undefined,
): CollectiveOpener {
  return async (group) => {
    const collective = await openStageCollective({
      ...group,
      host,
      credentials,
      device: node.openDevice(),
      transport,
      log: (line) => process.emitWarning(line),
    });
    return node.metrics ? timedCollective(collective, node.metrics) : collective;
  };
}

async function loadAssignment(
  node: WorkerNode,
  openCollective: CollectiveOpener,
  assignment: Assignment,
  onProgress: (loaded: number, total: number) => void,
): Promise<Loaded> {
  const { shard } = assignment;
  node.metrics?.assigned({
    model:
      assignment.servedModelName ??
      assignment.modelDir.split('/').filter(Boolean).at(-1) ??
      assignment.modelDir,
    worker: node.options.workerId,
    stage: assignment.stageIndex,
    rank: shard.tpRank,
  });
  // The stage's device group is opened before the weights load, so that its buffers are
  // counted before the KV cache is sized from free memory.
  const collective =
    shard.tpSize > 1
      ? await openCollective({
          group: assignment.collectiveGroup,
          rank: shard.tpRank,
          size: shard.tpSize,
          peers: assignment.peers,
          connectTimeoutMs: 30_000,
          timeoutMs: assignment.deadlines?.collectiveMs,
        })
      : undefined;
  const { kvBlocks } = await node.load(assignment, collective, onProgress);
  return collective ? { kvBlocks, collective: collective.transport } : { kvBlocks };
}

export async function startWorker(options: WorkerProcessOptions): Promise<RunningWorker> {
  const emit = options.onEvent ?? (() => undefined);
  const { workerId } = options;
  const transport =
    options.collectiveTransport ??
    (process.env.MEDCLUSTER_COLLECTIVE as TransportChoice | undefined) ??
    'auto';
  const tls = options.internalTls;
  const credentials = tls?.channelCredentials();
  if (tls) {
    options.log?.info(`internal mutual TLS: ${tls.describe()}`);
    // Peers will refuse this certificate: say so here, where the operator looks for this worker.
    for (const problem of tls.ownCertificateProblems()) options.log?.error(`internal TLS: ${problem}`);
  }
  const nodeOptions = {
    workerId,
    device: options.device,
    threads: options.threads,
    ordinal: options.ordinal,
    log: options.log,
    credentials,
    failpoints: failpointsFromEnv(),
  };
  // Read at scrape time, once `node` exists.
  const metricsSource: WorkerMetricsSource = { state: () => node.state, kvBlocks: () => node.kvBlocks };
  const metrics: WorkerMetrics | undefined =
    options.metricsPort === undefined ? undefined : new WorkerMetrics(workerId, metricsSource);
  const node: WorkerNode = new WorkerNode(nodeOptions, metrics);
  void node.deviceLost.then((error) => emit({ event: 'failed', workerId, error }));
  const server = new grpc.Server(INTERNAL_GRPC_OPTIONS);
  const host = addCollectiveService(server);
  const openCollective = collectiveOpener(node, host, transport, credentials);
  addWorkerService(server, node, openCollective);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      options.listen,
      tls?.serverCredentials() ?? grpc.ServerCredentials.createInsecure(),
      (err, p) => (err ? reject(err) : resolve(p)),
    ),
  );
  const bindHost = options.listen.slice(0, options.listen.lastIndexOf(':'));
  const advertisedHost = bindHost === '0.0.0.0' ? hostname() : bindHost;
  const address = options.advertise ?? `${advertisedHost}:${port}`;
  const metricsServer =
    metrics && options.metricsPort !== undefined
      ? await serveWorkerMetrics(metrics, metricsSource, bindHost, options.metricsPort)
      : undefined;
  const metricsAddress = metricsServer
    ? `${(options.advertise ?? address).slice(0, (options.advertise ?? address).lastIndexOf(':'))}:${metricsServer.port}`
    : undefined;
  emit({ event: 'listening', workerId, address, ...(metricsAddress ? { metricsAddress } : {}) });
  const progress = (loaded: number, total: number) => metrics?.loadProgress(loaded, total);

  let nc: NatsConnection | undefined;
  let agent: WorkerAgent | undefined;
  if (options.nats) {
    // connectNats reconnects for ever: steps need no NATS, so a worker outlives any NATS outage.
    const target = { servers: options.nats.url, auth: options.nats.auth, tls: options.nats.tls };
    try {
      nc = await connectNats(target, `medcluster-worker-${workerId}`);
      options.log?.info(`connected to ${describeNatsConnection(target)}`);
    } catch (err) {
      // Nothing else may keep the process alive: the CLI reports the error and exits.
      server.forceShutdown();
      await metricsServer?.close();
      throw err;
    }
    const memoryBytes = options.memoryBytes ?? freemem();
    agent = await WorkerAgent.start({
      nc,
      cluster: options.nats.cluster,
      workerId,
      grpcAddress: address,
      ...(metricsAddress ? { metricsAddress } : {}),
      devices: [{ kind: options.device, index: options.ordinal ?? 0, name: options.device, memoryBytes }],
      memoryBytes,
      onAssignment: async (assignment, reporter) => {
        const loaded = await loadAssignment(node, openCollective, assignment, (loaded, total) => {
          progress(loaded, total);
          reporter.progress(loaded, total);
        });
        emit({ event: 'ready', workerId, ...loaded });
        return loaded;
      },
    });
  } else if (options.assignment) {
    loadAssignment(node, openCollective, options.assignment, (loaded, total) => {
      progress(loaded, total);
      emit({ event: 'progress', workerId, loaded, total });
    })
      .then((loaded) => emit({ event: 'ready', workerId, ...loaded }))
      .catch((err: Error) => emit({ event: 'failed', workerId, error: err.message }));
  }

  return {
    address,
    ...(metricsAddress ? { metricsAddress } : {}),
    node,
    async stop(reason = 'shutting down') {
      await agent?.leave(reason).catch(() => undefined);
      await nc?.drain().catch(() => undefined);
      await node.close().catch(() => undefined);
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      await metricsServer?.close();
    },
  };
}
