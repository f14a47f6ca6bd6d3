// A worker's own Prometheus metrics, served on its --metrics-port with /health (the process is
// alive) and /ready (its shard is loaded and it takes steps; a loading worker is alive but not
// ready). Every series carries model, worker, stage and rank labels once a shard is assigned.
// The names are the ones deploy/'s dashboards and alert rules query.

import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { Collective } from '../engine/types.js';

const PREFIX = 'medcluster_';
const STEP_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12,
];
const STATES = ['idle', 'loading', 'ready', 'failed', 'leaving'] as const;
export type WorkerMetricState = (typeof STATES)[number];

/** What the metrics read from the worker at scrape time. */
export interface WorkerMetricsSource {
  state(): WorkerMetricState;
  kvBlocks(): number | undefined;
}

export class WorkerMetrics {
  readonly registry = new Registry();
  private readonly stepSeconds: Histogram;
  private readonly steps: Counter;
  private readonly stepFailures: Counter;
  private readonly activationBytes: Counter<'direction'>;
  private readonly transferSeconds: Histogram;
  private readonly collectiveSeconds: Histogram<'op'>;
  private readonly idleSeconds: Counter;
  private readonly loadBytes: Gauge;
  private readonly loadBytesTotal: Gauge;
  /** When the worker last became idle (no step queued), on the monotonic clock in seconds. */
  private idleSince?: number;

  constructor(workerId: string, source: WorkerMetricsSource) {
    const registry = this.registry;
    registry.setDefaultLabels({ worker: workerId });
    collectDefaultMetrics({ register: registry, prefix: PREFIX });
    const name = (n: string) => `${PREFIX}worker_${n}`;
    this.stepSeconds = new Histogram({
      name: name('step_seconds'),
      help: 'Time this worker spent computing one step (its layers), from the step to its output.',
      buckets: STEP_BUCKETS,
      registers: [registry],
    });
    this.steps = new Counter({ name: name('steps_total'), help: 'Steps completed.', registers: [registry] });
    this.stepFailures = new Counter({
      name: name('step_failures_total'),
      help: 'Steps that failed on this worker.',
      registers: [registry],
    });
    this.activationBytes = new Counter({
      name: name('activation_bytes_total'),
      help: 'Hidden-state bytes received from the previous stage or sent to the next.',
      labelNames: ['direction'],
      registers: [registry],
    });
    this.transferSeconds = new Histogram({
      name: name('activation_transfer_seconds'),
      help: "Time to hand a step's hidden states to the next stage and get its result, less that stage's compute.",
      buckets: STEP_BUCKETS,
      registers: [registry],
    });
    this.collectiveSeconds = new Histogram({
      name: name('collective_seconds'),
      help: 'Time waited on one tensor-parallel collective through the host.',
      labelNames: ['op'],
      buckets: STEP_BUCKETS,
      registers: [registry],
    });
    this.idleSeconds = new Counter({
      name: name('idle_seconds_total'),
      help: 'Time with no step to run since the shard was loaded (pipeline bubbles, no traffic).',
      registers: [registry],
    });
    this.loadBytes = new Gauge({
      name: name('load_bytes'),
      help: 'Shard bytes loaded so far.',
      registers: [registry],
    });
    this.loadBytesTotal = new Gauge({
      name: name('load_bytes_total'),
      help: 'Shard bytes to load.',
      registers: [registry],
    });
    new Gauge({
      name: name('state'),
      help: '1 for the lifecycle state the worker is in.',
      labelNames: ['state'],
      registers: [registry],
      collect() {
        const now = source.state();
        for (const s of STATES) this.set({ state: s }, s === now ? 1 : 0);
      },
    });
    new Gauge({
      name: name('kv_cache_blocks'),
      help: 'KV cache blocks this worker allocated.',
      registers: [registry],
      collect() {
        const blocks = source.kvBlocks();
        if (blocks !== undefined) this.set(blocks);
      },
    });
  }

  /** Labels every series with the assignment once the worker has one. */
  assigned(labels: { model: string; stage: number; rank: number; worker: string }): void {
    this.registry.setDefaultLabels({
      model: labels.model,
      worker: labels.worker,
      stage: String(labels.stage),
      rank: String(labels.rank),
    });
  }

  loadProgress(loaded: number, total: number): void {
    this.loadBytes.set(loaded);
    this.loadBytesTotal.set(total);
  }

  /** A step starts (the queue was idle until now) or the worker becomes idle. */
  busy(now: number): void {
    if (this.idleSince !== undefined) this.idleSeconds.inc(Math.max(0, now - this.idleSince));
    this.idleSince = undefined;
  }

  idle(now: number): void {
    this.idleSince ??= now;
  }

  step(seconds: number, ok: boolean): void {
    if (ok) {
      this.steps.inc();
      this.stepSeconds.observe(seconds);
    } else this.stepFailures.inc();
  }

  activation(direction: 'sent' | 'received', bytes: number): void {
    this.activationBytes.inc({ direction }, bytes);
  }

  transfer(seconds: number): void {
    this.transferSeconds.observe(Math.max(0, seconds));
  }

  collective(op: 'all_reduce' | 'all_gather', seconds: number): void {
    this.collectiveSeconds.observe({ op }, seconds);
  }
}

/**
 * `collective` with the time each call waits through the host recorded (grpc transport). A
 * device transport only queues its calls, so there is nothing to time from the host: it is
 * returned as it is.
 */
export function timedCollective(collective: Collective, metrics: WorkerMetrics): Collective {
  if (collective.transport !== 'grpc') return collective;
  const timed = async <T>(op: 'all_reduce' | 'all_gather', call: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    try {
      return await call();
    } finally {
      metrics.collective(op, (performance.now() - started) / 1000);
    }
  };
  return {
    get rank() {
      return collective.rank;
    },
    get size() {
      return collective.size;
    },
    get transport() {
      return collective.transport;
    },
    get grpcBytes() {
      return collective.grpcBytes;
    },
    allReduceSum: (x) => timed('all_reduce', () => collective.allReduceSum(x)),
    allGatherCols: (x, widths) => timed('all_gather', () => collective.allGatherCols(x, widths)),
    close: () => collective.close(),
  };
}

/** Serves /metrics, /health and /ready on `port` (0 picks one); resolves with the bound port. */
export async function serveWorkerMetrics(
  metrics: WorkerMetrics,
  source: WorkerMetricsSource,
  host: string,
  port: number,
): Promise<{ port: number; close(): Promise<void> }> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/metrics') {
      metrics.registry.metrics().then(
        (body) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(err.message),
      );
    } else if (path === '/health') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end(`alive (${source.state()})\n`);
    } else if (path === '/ready') {
      const state = source.state();
      res.writeHead(state === 'ready' ? 200 : 503, { 'content-type': 'text/plain' }).end(`${state}\n`);
    } else {
      res
        .writeHead(404, { 'content-type': 'text/plain' })
        .end('not found: try /metrics, /health or /ready\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
