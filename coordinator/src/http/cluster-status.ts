// GET /cluster: what the server is doing now (sequences running and waiting, KV blocks used of
// the total, the cluster's layout) and what it did since it started (counts kept from the
// scheduler's events). Keys are snake_case like the rest of the HTTP APIs.

import type { SchedulerEvent } from '../scheduler/events.js';
import type { HttpContext } from './http-context.js';

export class ClusterActivity {
  private readonly started = performance.now();
  private readonly unsubscribe: () => void;
  private readonly totals = {
    requests_admitted: 0,
    requests_finished: {} as Record<string, number>,
    requests_rejected: {} as Record<string, number>,
    requests_cancelled: { queued: 0, prefill: 0, decode: 0 } as Record<string, number>,
    preemptions: 0,
    prompt_tokens: 0,
    generated_tokens: 0,
    steps: 0,
    failed_steps: 0,
  };
  private inFlight = 0;

  constructor(observe: HttpContext['scheduler']['observe']) {
    this.unsubscribe = observe((e) => this.count(e));
  }

  private count(e: SchedulerEvent): void {
    const t = this.totals;
    const bump = (map: Record<string, number>, key: string) => {
      map[key] = (map[key] ?? 0) + 1;
    };
    switch (e.type) {
      case 'admitted':
        t.requests_admitted++;
        t.prompt_tokens += e.promptTokens;
        this.inFlight++;
        break;
      case 'rejected':
        bump(t.requests_rejected, e.reason);
        break;
      case 'cancelled':
        bump(t.requests_cancelled, e.stage);
        break;
      case 'preempted':
        t.preemptions++;
        break;
      case 'token':
        t.generated_tokens++;
        break;
      case 'step':
        t.steps++;
        if (e.error !== undefined) t.failed_steps++;
        break;
      case 'finished':
        bump(t.requests_finished, e.outcome);
        this.inFlight--;
        break;
    }
  }

  snapshot(ctx: HttpContext) {
    const stats = ctx.scheduler.stats;
    const { cluster } = ctx.serving;
    return {
      model: ctx.serving.modelName,
      healthy: ctx.serving.healthy(),
      uptime_s: Math.round(performance.now() - this.started) / 1000,
      requests_in_flight: this.inFlight,
      sequences_running: stats.running,
      sequences_waiting: stats.waiting,
      steps_in_flight: stats.stepsInFlight,
      kv_cache: {
        block_size: cluster.kvGeometry.blockSize,
        blocks_total: stats.totalBlocks,
        blocks_used: stats.totalBlocks - stats.freeBlocks,
        blocks_free: stats.freeBlocks,
      },
      limits: {
        max_context: ctx.scheduler.limits.maxContext,
        max_batch_tokens: ctx.scheduler.limits.maxBatchTokens,
        max_running: ctx.scheduler.limits.maxRunning,
        max_waiting: ctx.scheduler.limits.maxWaiting,
      },
      layout: {
        tp: cluster.tp,
        pp: cluster.pp,
        workers: cluster.workers().map((w) => ({
          id: w.id,
          address: w.address,
          device: w.device,
          stage: w.stage,
          tp_rank: w.tpRank,
          layers: [w.layerStart, w.layerEnd],
          state: w.state,
          kv_blocks: w.kvBlocks,
          ...(w.heartbeatAgeSeconds === undefined ? {} : { heartbeat_age_s: w.heartbeatAgeSeconds }),
        })),
      },
      chat_template: ctx.prompts.chatTemplateSource,
      totals: this.totals,
    };
  }

  close(): void {
    this.unsubscribe();
  }
}
