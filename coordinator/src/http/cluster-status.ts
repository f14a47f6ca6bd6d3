// GET /cluster: what the server is doing now (sequences running and waiting, KV blocks used of
// the total, the cluster's layout), how its recent steps went (executor time and the gap
// before each), and what it did since it started (counts kept from the scheduler's events).
// Keys are snake_case like the rest of the HTTP APIs.

import type { SchedulerEvent } from '../scheduler/events.js';
import type { HttpContext } from './http-context.js';

/** Steps GET /cluster summarizes (the most recent). */
const RECENT_STEPS = 512;

interface StepRecord {
  /** Seconds from sending the step to its result. */
  duration: number;
  /** Seconds from the previous step's result to sending this one (none while steps overlap). */
  gap?: number;
  batch: number;
  promptTokens: number;
}

function median(values: number[]): number {
  if (values.length === 0) return 0;
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

const ms = (seconds: number) => Math.round(seconds * 1e5) / 100;

/**
 * Recent steps of one kind: how long the executor took (sent to result: the workers' compute
 * and the transfers) and the gap before each (the coordinator's own time: sampling, text, the
 * APIs), as medians, so a slow served path shows which side it is slow on.
 */
function summarize(steps: StepRecord[]) {
  return {
    count: steps.length,
    batch_p50: median(steps.map((s) => s.batch)),
    step_ms_p50: ms(median(steps.map((s) => s.duration))),
    gap_before_ms_p50: ms(median(steps.flatMap((s) => (s.gap === undefined ? [] : [s.gap])))),
  };
}

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
  private readonly steps: StepRecord[] = [];
  private lastStepDone?: number;

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
        {
          const sent = e.time - e.duration;
          const last = this.lastStepDone;
          this.lastStepDone = e.time;
          const gap = last !== undefined && sent >= last ? sent - last : undefined;
          this.steps.push({ duration: e.duration, gap, batch: e.batchSize, promptTokens: e.promptTokens });
          if (this.steps.length > RECENT_STEPS) this.steps.shift();
        }
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
          ...(w.metricsUrl === undefined ? {} : { metrics_url: w.metricsUrl }),
        })),
      },
      chat_template: ctx.prompts.chatTemplateSource,
      recent_steps: {
        decode_only: summarize(this.steps.filter((st) => st.promptTokens === 0)),
        with_prompt_tokens: summarize(this.steps.filter((st) => st.promptTokens > 0)),
      },
      totals: this.totals,
    };
  }

  close(): void {
    this.unsubscribe();
  }
}
