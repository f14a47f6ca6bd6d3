// The coordinator's Prometheus metrics, fed by the scheduler's events (never by timers of their
// own) and, at scrape time, by the scheduler's and the cluster's state. Names follow the
// Prometheus conventions under one prefix: base units, `_seconds`, `_total`, a `model` label.
// The dashboards and alert rules in deploy/ query exactly these names.

import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { ClusterHandle } from '../cluster/cluster-handle.js';
import type { SchedulerEvent } from '../scheduler/events.js';
import type { Scheduler } from '../scheduler/scheduler.js';

export const METRIC_PREFIX = 'medcluster_';

/** Latency buckets (seconds) shared by the per-token histograms. */
const TOKEN_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5];
const REQUEST_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256];

export interface ServingMetricsOptions {
  /** The served model name (the `model` label). */
  model: string;
  scheduler: Scheduler;
  cluster: ClusterHandle;
}

export class ServingMetrics {
  readonly registry = new Registry();
  /** Last token time of each choice of each request, for inter-token latency; dropped when it ends. */
  private readonly lastToken = new Map<string, Map<number, number>>();
  private readonly unsubscribe: () => void;

  private readonly requests: Counter<'outcome'>;
  private readonly rejections: Counter<'reason'>;
  private readonly cancellations: Counter<'stage'>;
  private readonly preemptions: Counter;
  private readonly promptTokens: Counter;
  private readonly generationTokens: Counter;
  private readonly ttft: Histogram;
  private readonly itl: Histogram;
  private readonly e2e: Histogram;
  private readonly queue: Histogram;
  private readonly prefill: Histogram;
  private readonly decode: Histogram;
  private readonly stepDuration: Histogram;
  private readonly stepBatch: Histogram;
  private readonly stepTokens: Counter<'kind'>;
  private readonly stepFailures: Counter;
  private readonly httpResponses: Counter<'route' | 'status'>;

  constructor({ model, scheduler, cluster }: ServingMetricsOptions) {
    const registry = this.registry;
    registry.setDefaultLabels({ model });
    collectDefaultMetrics({ register: registry, prefix: METRIC_PREFIX });
    const name = (n: string) => `${METRIC_PREFIX}${n}`;
    const counter = <L extends string>(n: string, help: string, labelNames: L[] = []) =>
      new Counter<L>({ name: name(n), help, labelNames, registers: [registry] });
    const histogram = (n: string, help: string, buckets: number[]) =>
      new Histogram({ name: name(n), help, buckets, registers: [registry] });

    this.requests = counter(
      'requests_total',
      'Requests that ended, by outcome (a finish reason, or failed).',
      ['outcome'],
    );
    this.rejections = counter('request_rejections_total', 'Requests refused before taking anything.', [
      'reason',
    ]);
    this.cancellations = counter(
      'request_cancellations_total',
      'Requests cancelled by their client (disconnect, cancel, deadline), by how far they got.',
      ['stage'],
    );
    this.preemptions = counter(
      'preemptions_total',
      'Sequences preempted (KV blocks freed, to be recomputed).',
    );
    this.promptTokens = counter('prompt_tokens_total', 'Prompt tokens of requests that ended.');
    this.generationTokens = counter('generation_tokens_total', 'Tokens generated.');
    this.ttft = histogram(
      'time_to_first_token_seconds',
      'Arrival to the first generated token.',
      REQUEST_BUCKETS,
    );
    this.itl = histogram(
      'inter_token_latency_seconds',
      'Time between consecutive tokens of a choice.',
      TOKEN_BUCKETS,
    );
    this.e2e = histogram('request_duration_seconds', 'Arrival to the end of a request.', REQUEST_BUCKETS);
    this.queue = histogram('request_queue_seconds', 'Arrival until first scheduled.', REQUEST_BUCKETS);
    this.prefill = histogram(
      'request_prefill_seconds',
      'First scheduled until the first token.',
      REQUEST_BUCKETS,
    );
    this.decode = histogram('request_decode_seconds', 'First token until the end.', REQUEST_BUCKETS);
    this.stepDuration = histogram('step_duration_seconds', 'Wall time of one engine step.', TOKEN_BUCKETS);
    this.stepBatch = histogram('step_batch_size', 'Sequences in one engine step.', BATCH_BUCKETS);
    this.stepTokens = counter(
      'step_tokens_total',
      'Tokens computed by engine steps, prompt (and recompute) or decode.',
      ['kind'],
    );
    this.stepFailures = counter(
      'step_failures_total',
      'Engine steps that failed (their requests failed with them).',
    );
    this.httpResponses = counter('http_requests_total', 'HTTP responses by route (its pattern) and status.', [
      'route',
      'status',
    ]);

    const gauge = <L extends string>(
      n: string,
      help: string,
      collect: (g: Gauge<L>) => void,
      labelNames: L[] = [],
    ) =>
      new Gauge<L>({
        name: name(n),
        help,
        labelNames,
        registers: [registry],
        collect() {
          collect(this);
        },
      });
    gauge('requests_running', 'Sequences holding KV blocks.', (g) => g.set(scheduler.stats.running));
    gauge('requests_waiting', 'Sequences queued for admission.', (g) => g.set(scheduler.stats.waiting));
    gauge('kv_cache_blocks_used', 'KV cache blocks held by sequences.', (g) =>
      g.set(scheduler.stats.totalBlocks - scheduler.stats.freeBlocks),
    );
    gauge('kv_cache_blocks_total', 'KV cache blocks every worker holds.', (g) =>
      g.set(scheduler.stats.totalBlocks),
    );
    gauge('cluster_healthy', '1 while every worker of the placement is up.', (g) =>
      g.set(cluster.healthy() ? 1 : 0),
    );
    gauge(
      'worker_up',
      '1 while the worker is up, by worker, stage and tensor-parallel rank.',
      (g) => {
        g.reset();
        for (const w of cluster.workers()) {
          g.set(
            { worker: w.id, stage: String(w.stage), rank: String(w.tpRank) },
            w.state === 'ready' ? 1 : 0,
          );
        }
      },
      ['worker', 'stage', 'rank'],
    );
    gauge(
      'worker_heartbeat_age_seconds',
      'Seconds since the worker last sent a heartbeat (cluster mode, over NATS).',
      (g) => {
        g.reset();
        for (const w of cluster.workers()) {
          if (w.heartbeatAgeSeconds !== undefined) g.set({ worker: w.id }, w.heartbeatAgeSeconds);
        }
      },
      ['worker'],
    );
    this.unsubscribe = scheduler.observe((e) => this.record(e));
  }

  private record(e: SchedulerEvent): void {
    switch (e.type) {
      case 'admitted':
        return;
      case 'rejected':
        this.rejections.inc({ reason: e.reason.replace('-', '_') });
        return;
      case 'step':
        this.stepDuration.observe(e.duration);
        this.stepBatch.observe(e.batchSize);
        if (e.promptTokens > 0) this.stepTokens.inc({ kind: 'prompt' }, e.promptTokens);
        if (e.decodeTokens > 0) this.stepTokens.inc({ kind: 'decode' }, e.decodeTokens);
        if (e.error !== undefined) this.stepFailures.inc();
        return;
      case 'token': {
        this.generationTokens.inc();
        const choices = this.lastToken.get(e.requestId) ?? new Map<number, number>();
        this.lastToken.set(e.requestId, choices);
        const last = choices.get(e.choice);
        if (last !== undefined) this.itl.observe(e.time - last);
        choices.set(e.choice, e.time);
        return;
      }
      case 'preempted':
        this.preemptions.inc();
        return;
      case 'cancelled':
        this.cancellations.inc({ stage: e.stage });
        return;
      case 'finished': {
        this.requests.inc({ outcome: e.outcome });
        this.promptTokens.inc(e.promptTokens);
        const t = e.timing;
        this.e2e.observe(t.total);
        this.queue.observe(t.queue);
        if (e.completionTokens > 0) {
          this.ttft.observe(t.timeToFirstToken);
          this.prefill.observe(t.prefill);
          this.decode.observe(t.decode);
        }
        this.lastToken.delete(e.requestId);
        return;
      }
    }
  }

  /** One HTTP response; `route` is the route's pattern ('unmatched' for a 404), never the raw URL. */
  httpResponse(route: string, status: number): void {
    this.httpResponses.inc({ route, status: String(status) });
  }

  /** The exposition text and its content type, for a /metrics route. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  close(): void {
    this.unsubscribe();
  }
}
