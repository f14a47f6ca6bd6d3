// The coordinator's metrics against a scheduler driven by a scripted executor: each fact the
// scheduler reports shows up once, under the documented name.

import { EventEmitter } from 'node:events';
import { finishStep, GREEDY, type SeqStep, type StepOutput } from '@medcluster/worker';
import { describe, expect, test } from 'vitest';
import type { ClusterEvents, ClusterHandle } from '../cluster/cluster-handle.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import type { StepExecutor } from '../scheduler/executor.js';
import { type GenerationRequest, Scheduler } from '../scheduler/scheduler.js';
import { ServingMetrics } from './serving-metrics.js';

class NextTokenExecutor implements StepExecutor {
  readonly vocabRows = 50;
  readonly maxInFlight = 1;
  async execute(seqs: SeqStep[]): Promise<StepOutput> {
    await new Promise((r) => setTimeout(r, 2));
    const rows = seqs.filter((s) => s.logitRows > 0);
    const out = new Float32Array(rows.length * this.vocabRows);
    rows.forEach((s, r) => {
      out[r * this.vocabRows + (((s.tokens as number[])[s.numTokens - 1] + 1) % this.vocabRows)] = 1;
    });
    return finishStep(seqs, out, this.vocabRows);
  }
  async close() {}
}

function cluster(executor: StepExecutor): ClusterHandle {
  return {
    executor,
    kvGeometry: { numBlocks: 8, blockSize: 4 },
    tp: 1,
    pp: 1,
    workers: () => [
      {
        id: 'w0',
        address: 'a',
        device: 'cpu',
        stage: 0,
        tpRank: 0,
        layerStart: 0,
        layerEnd: 4,
        state: 'ready',
        kvBlocks: 8,
        heartbeatAgeSeconds: 0.5,
      },
      {
        id: 'w1',
        address: 'b',
        device: 'cpu',
        stage: 1,
        tpRank: 0,
        layerStart: 4,
        layerEnd: 8,
        state: 'lost',
        kvBlocks: 8,
      },
    ],
    healthy: () => false,
    events: new EventEmitter<ClusterEvents>(),
    stop: async () => {},
  };
}

/** The value of one sample of the exposition text (labels in any order). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries(
      (m[2] ?? '')
        .split(',')
        .filter(Boolean)
        .map((kv) => kv.split('=').map((x) => x.replace(/^"|"$/g, ''))),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}

describe('ServingMetrics', () => {
  test('counts what the scheduler reports, under the documented names', async () => {
    const executor = new NextTokenExecutor();
    const scheduler = new Scheduler(executor, new BlockAllocator(8, 4), {
      maxBatchTokens: 8,
      maxRunning: 1,
      maxWaiting: 1,
      maxContext: 32,
      eosTokenId: 2,
    });
    const metrics = new ServingMetrics({ model: 'm', scheduler, cluster: cluster(executor) });
    let n = 0;
    const req = (extra: Partial<GenerationRequest> = {}): GenerationRequest => ({
      requestId: `r${n++}`,
      promptIds: [5, 6, 7],
      maxTokens: 4,
      n: 1,
      sampling: { ...GREEDY, stopTokenIds: [2] },
      ...extra,
    });
    const abort = new AbortController();
    const done = scheduler.submit(req()); // runs at once
    const cancelled = scheduler.submit(req({ signal: abort.signal })); // waits
    await expect(scheduler.submit(req())).rejects.toThrow(/capacity/); // queue of 1 is full
    await expect(scheduler.submit(req({ maxTokens: 0 }))).rejects.toThrow(/max_tokens/);
    abort.abort();
    await Promise.all([done, cancelled]);
    const { body, contentType } = await metrics.scrape();
    expect(contentType).toMatch(/text\/plain/);
    const m = { model: 'm' };
    expect(sample(body, 'medcluster_requests_total', { ...m, outcome: 'length' })).toBe(1);
    expect(sample(body, 'medcluster_requests_total', { ...m, outcome: 'cancelled' })).toBe(1);
    expect(sample(body, 'medcluster_request_rejections_total', { ...m, reason: 'queue_full' })).toBe(1);
    expect(sample(body, 'medcluster_request_rejections_total', { ...m, reason: 'invalid' })).toBe(1);
    expect(sample(body, 'medcluster_request_cancellations_total', { ...m, stage: 'queued' })).toBe(1);
    expect(sample(body, 'medcluster_generation_tokens_total', m)).toBe(4);
    expect(sample(body, 'medcluster_prompt_tokens_total', m)).toBe(6);
    expect(sample(body, 'medcluster_time_to_first_token_seconds_count', m)).toBe(1);
    expect(sample(body, 'medcluster_inter_token_latency_seconds_count', m)).toBe(3);
    expect(sample(body, 'medcluster_request_duration_seconds_count', m)).toBe(2);
    expect(sample(body, 'medcluster_step_batch_size_count', m)).toBe(4);
    expect(sample(body, 'medcluster_step_tokens_total', { ...m, kind: 'prompt' })).toBe(3);
    expect(sample(body, 'medcluster_step_tokens_total', { ...m, kind: 'decode' })).toBe(3);
    expect(sample(body, 'medcluster_kv_cache_blocks_used', m)).toBe(0);
    expect(sample(body, 'medcluster_kv_cache_blocks_total', m)).toBe(8);
    expect(sample(body, 'medcluster_requests_running', m)).toBe(0);
    expect(sample(body, 'medcluster_cluster_healthy', m)).toBe(0);
    expect(sample(body, 'medcluster_worker_up', { ...m, worker: 'w0', stage: '0', rank: '0' })).toBe(1);
    expect(sample(body, 'medcluster_worker_up', { ...m, worker: 'w1' })).toBe(0);
    expect(sample(body, 'medcluster_worker_heartbeat_age_seconds', { ...m, worker: 'w0' })).toBe(0.5);
    expect(sample(body, 'medcluster_process_resident_memory_bytes', m)).toBeGreaterThan(0);
    metrics.close();
  });
});
