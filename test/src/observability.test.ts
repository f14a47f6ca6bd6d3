// A real Prometheus (the repository's scrape configuration) scrapes a running tp = 2 x pp = 2
// cluster in cluster mode (a real nats-server, a coordinator and four worker processes), while
// the test drives load that includes invalid requests, a cancellation, 429s, a preemption and,
// last, a lost worker (failed requests). Then every query of every dashboard panel, its
// variables substituted, must return data through Prometheus's HTTP API.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type RunningPrometheus, startPrometheus } from './deploy/prometheus-server.js';
import {
  type NatsServerHandle,
  REPO,
  startCli,
  startNatsServer,
  stopAll,
  waitForStderr,
} from './harness/index.js';
import { testModel } from './models.js';

const MODEL = 'meditron-70b-awq';
const CLUSTER = 'obs';

interface Panel {
  title: string;
  targets?: { expr: string }[];
}

/** Every (dashboard, panel, expression) of the shipped dashboards. */
function dashboardQueries(): { where: string; expr: string }[] {
  const out: { where: string; expr: string }[] = [];
  for (const file of ['serving.json', 'cluster.json']) {
    const d = JSON.parse(readFileSync(join(REPO, 'deploy/grafana', file), 'utf8')) as { panels: Panel[] };
    for (const p of d.panels)
      for (const t of p.targets ?? []) out.push({ where: `${file}: ${p.title}`, expr: t.expr });
  }
  return out;
}

/** The query as Grafana sends it: variables for every model and stage, a 2-minute rate window. */
const substitute = (expr: string) =>
  expr.replaceAll('$model', MODEL).replaceAll('$stage', '.*').replaceAll('$__rate_interval', '2m');

describe('Prometheus on a running cluster', () => {
  let nats: NatsServerHandle;
  let http: string;
  let prometheus: RunningPrometheus;
  let coordinator: ReturnType<typeof startCli>;

  beforeAll(async () => {
    const modelDir = await testModel();
    nats = await startNatsServer();
    for (let i = 0; i < 4; i++) {
      startCli([
        'worker',
        '--nats',
        nats.url,
        '--cluster',
        CLUSTER,
        '--id',
        `obs-w${i}`,
        '--listen',
        '127.0.0.1:0',
        '--threads',
        '1',
        '--metrics-port',
        '0',
      ]);
    }
    coordinator = startCli([
      'coordinator',
      '--nats',
      nats.url,
      '--cluster',
      CLUSTER,
      '--model',
      modelDir,
      '--tp',
      '2',
      '--pp',
      '2',
      '--host',
      '127.0.0.1',
      '--http-port',
      '0',
      '--grpc-port',
      '0',
      '--worker-timeout-s',
      '90',
      // Small enough for preemption and 429s under the load below.
      '--kv-blocks',
      '24',
      '--max-batch-tokens',
      '32',
      '--max-running',
      '4',
      '--max-waiting',
      '4',
      '--degraded-wait-s',
      '2',
    ]);
    const [, port] = await waitForStderr(
      coordinator.child,
      /HTTP APIs .* on http:\/\/127\.0\.0\.1:(\d+)/,
      120_000,
    );
    http = `http://127.0.0.1:${port}`;
    const cluster = (await (await fetch(`${http}/cluster`)).json()) as {
      layout: { workers: { metrics_url?: string }[] };
    };
    const workers = cluster.layout.workers.map((w) => new URL(w.metrics_url as string).host);
    expect(workers).toHaveLength(4);
    prometheus = await startPrometheus({ coordinator: [`127.0.0.1:${port}`], workers }, { interval: '1s' });
  });
  afterAll(async () => {
    await prometheus?.stop();
    await stopAll();
    await nats?.stop();
  });

  const completion = (prompt: string, extra: object = {}, signal?: AbortSignal) =>
    fetch(`${http}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt, max_tokens: 8, temperature: 0, ...extra }),
      signal,
    });

  test('every dashboard query returns data after load with errors, a cancellation, 429s, a preemption and a lost worker', async () => {
    const long = (i: number) =>
      `Case ${i}: ${'the patient reports worsening chest pain and dyspnea; '.repeat(8)}`;
    // A cancellation: a stream the client abandons once its first token arrived.
    const abort = new AbortController();
    const stream = await completion(long(99), { stream: true, max_tokens: 200 }, abort.signal);
    expect(stream.status).toBe(200);
    const reader = stream.body?.getReader();
    let seen = '';
    while (!seen.includes('"text"')) seen += new TextDecoder().decode((await reader?.read())?.value);
    abort.abort();
    // Preemption: four running requests of ~100 prompt tokens need more than the 24 blocks.
    const load = Array.from({ length: 8 }, (_, i) => completion(long(i)));
    // 429s: a burst past the waiting queue.
    const burst = Array.from({ length: 10 }, (_, i) => completion(`Burst ${i}: the differential`));
    // Invalid requests.
    const invalid = [completion('x', { temperature: -1 }), completion('x', { max_tokens: 'many' })];
    const statuses = (await Promise.all([...load, ...burst, ...invalid])).map((r) => r.status);
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThan(4);
    expect(statuses).toContain(429);
    expect(statuses).toContain(400);
    // Last, a lost worker: a stream that has started fails, queued requests time out degraded.
    const streaming = completion(long(7), { stream: true, max_tokens: 300 }).then(async (r) => {
      const reader = r.body?.getReader();
      if (!reader) return;
      while (!(await reader.read()).done);
    });
    await new Promise((r) => setTimeout(r, 1500));
    const { execFileSync } = await import('node:child_process');
    for (const pid of execFileSync('pgrep', [
      '-f',
      `worker --nats ${nats.url} --cluster ${CLUSTER} --id obs-w3`,
    ])
      .toString()
      .trim()
      .split('\n'))
      process.kill(Number(pid), 'SIGKILL');
    await streaming.catch(() => undefined);
    const queued = await completion('After the loss: the plan');
    expect(queued.status).toBe(503);
    // Let Prometheus take a few more scrapes, then ask every panel.
    await new Promise((r) => setTimeout(r, 4000));
    const empty: string[] = [];
    for (const { where, expr } of dashboardQueries()) {
      const q = substitute(expr);
      const data = await prometheus.api<{ result: unknown[] }>(`query?query=${encodeURIComponent(q)}`);
      if (data.result.length === 0) empty.push(`${where}: ${q}`);
    }
    expect(empty, 'dashboard queries with no data').toEqual([]);
    // The facts the load was meant to produce are in Prometheus.
    const value = async (q: string) =>
      Number(
        (
          await prometheus.api<{ result: { value: [number, string] }[] }>(
            `query?query=${encodeURIComponent(q)}`,
          )
        ).result[0]?.value[1] ?? 0,
      );
    expect(await value(`sum(medcluster_preemptions_total{model="${MODEL}"})`)).toBeGreaterThan(0);
    expect(
      await value(`sum(medcluster_request_rejections_total{model="${MODEL}",reason="queue_full"})`),
    ).toBeGreaterThan(0);
    expect(await value(`sum(medcluster_request_cancellations_total{model="${MODEL}"})`)).toBeGreaterThan(0);
    expect(await value(`sum(medcluster_requests_total{model="${MODEL}",outcome="failed"})`)).toBeGreaterThan(
      0,
    );
    expect(await value(`sum(medcluster_http_requests_total{model="${MODEL}",status="400"})`)).toBeGreaterThan(
      0,
    );
    expect(await value(`count(medcluster_worker_steps_total{model="${MODEL}"})`)).toBeGreaterThanOrEqual(3);
    expect(await value(`min(medcluster_cluster_healthy{model="${MODEL}"})`)).toBe(0);
  });
});
