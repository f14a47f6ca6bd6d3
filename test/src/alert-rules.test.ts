// deploy/prometheus: the alert rules pass `promtool check rules` and `promtool test rules`,
// every alert has a case that fires it and one that leaves it quiet, the rules and their tests
// use only exported metrics; and a real Prometheus loads the shipped scrape configuration,
// discovers its targets from the file_sd files and scrapes them, with the rules loaded.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parse } from 'yaml';
import { PROMETHEUS } from './deploy/paths.js';
import {
  type RunningPrometheus,
  startPrometheus,
  writePrometheusConfig,
} from './deploy/prometheus-server.js';
import { promqlProblems } from './deploy/promql.js';
import { run } from './deploy/tools.js';

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleTest {
  input_series: { series: string; values: string }[];
  alert_rule_test: { alertname: string; eval_time: string; exp_alerts: unknown[] }[];
}

const rules = (
  parse(readFileSync(join(PROMETHEUS, 'alerts.yml'), 'utf8')) as { groups: { rules: Rule[] }[] }
).groups.flatMap((g) => g.rules);
const tests = (parse(readFileSync(join(PROMETHEUS, 'alerts.test.yml'), 'utf8')) as { tests: RuleTest[] })
  .tests;

describe('deploy/prometheus/alerts.yml', () => {
  test('passes promtool check rules', () => {
    const r = run('promtool', ['check', 'rules', join(PROMETHEUS, 'alerts.yml')]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain(`SUCCESS: ${rules.length} rules found`);
  });

  test('passes promtool test rules (alerts.test.yml)', () => {
    const r = run('promtool', ['test', 'rules', 'alerts.test.yml'], { cwd: PROMETHEUS });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('SUCCESS');
  });

  test('covers the four failures, and every alert has a case that fires it and one that leaves it quiet', () => {
    expect(rules.map((r) => r.alert).sort()).toEqual([
      'MedclusterHighErrorRate',
      'MedclusterKvCacheNearlyFull',
      'MedclusterTimeToFirstTokenHigh',
      'MedclusterWorkerDown',
    ]);
    const cases = tests.flatMap((t) => t.alert_rule_test);
    for (const { alert } of rules) {
      const mine = cases.filter((c) => c.alertname === alert);
      expect(
        mine.some((c) => c.exp_alerts.length > 0),
        `${alert} never fires in a test`,
      ).toBe(true);
      expect(
        mine.some((c) => c.exp_alerts.length === 0),
        `${alert} is never checked quiet`,
      ).toBe(true);
    }
  });

  test('rules and their test series use only exported metrics and labels; each has a severity and says why', () => {
    for (const r of rules) {
      expect(promqlProblems(r.expr), r.alert).toEqual([]);
      expect(['critical', 'warning'], r.alert).toContain(r.labels?.severity);
      expect(Object.keys(r.annotations ?? {}).sort(), r.alert).toEqual(['description', 'summary']);
      expect(r.for, r.alert).toMatch(/^\d+m$/);
    }
    for (const t of tests)
      for (const s of t.input_series) expect(promqlProblems(s.series), s.series).toEqual([]);
  });
});

describe('deploy/prometheus/prometheus.yml', () => {
  const exporters: Server[] = [];
  let prometheus: RunningPrometheus | undefined;
  const serve = async (body: string) => {
    const server = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    exporters.push(server);
    return `127.0.0.1:${(server.address() as { port: number }).port}`;
  };
  let targets: { coordinator: string[]; workers: string[] };

  beforeAll(async () => {
    // Stand-ins for the coordinator's and two worker processes' /metrics.
    targets = {
      coordinator: [
        await serve(
          'medcluster_worker_up{model="m",worker="w-0-gpu0",stage="0",rank="0"} 1\nmedcluster_requests_running{model="m"} 3\n',
        ),
      ],
      workers: [
        await serve('medcluster_worker_steps_total{model="m",worker="w-0-gpu0",stage="0",rank="0"} 7\n'),
        await serve('medcluster_worker_steps_total{model="m",worker="w-0-gpu1",stage="0",rank="1"} 7\n'),
      ],
    };
  });
  afterAll(async () => {
    await prometheus?.stop();
    await Promise.all(exporters.map((s) => new Promise((r) => s.close(r))));
  });

  test('passes promtool check config with its target files in place', () => {
    const dir = mkdtempSync(join(tmpdir(), 'medcluster-prometheus-config-'));
    try {
      const file = writePrometheusConfig(dir, targets);
      const r = run('promtool', ['check', 'config', file]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout + r.stderr).not.toMatch(/WARNING/);
      expect(r.stdout).toContain('SUCCESS: 1 rule files found');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a real Prometheus finds the targets in its file_sd files, scrapes them, and loads the alert rules', async () => {
    prometheus = await startPrometheus(targets);
    type Target = { health: string; labels: Record<string, string>; lastError: string };
    let active: Target[] = [];
    for (let i = 0; i < 100; i++) {
      active = (await prometheus.api<{ activeTargets: Target[] }>('targets?state=active')).activeTargets;
      if (active.length === 3 && active.every((t) => t.health === 'up')) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(active.map((t) => [t.labels.job, t.health, t.lastError]).sort()).toEqual([
      ['medcluster-coordinator', 'up', ''],
      ['medcluster-worker', 'up', ''],
      ['medcluster-worker', 'up', ''],
    ]);
    type Series = { metric: Record<string, string>; value: [number, string] };
    const steps = await prometheus.api<{ result: Series[] }>(
      `query?query=${encodeURIComponent('sum by (job, rank) (medcluster_worker_steps_total)')}`,
    );
    expect(steps.result.map((s) => [s.metric.job, s.metric.rank, s.value[1]]).sort()).toEqual([
      ['medcluster-worker', '0', '7'],
      ['medcluster-worker', '1', '7'],
    ]);
    // Rules report health 'ok' once they have been evaluated (every second here).
    type Loaded = { name: string; health: string };
    let loaded: Loaded[] = [];
    for (let i = 0; i < 100; i++) {
      const data = await prometheus.api<{ groups: { rules: Loaded[] }[] }>('rules');
      loaded = data.groups.flatMap((g) => g.rules);
      if (loaded.length === rules.length && loaded.every((r) => r.health === 'ok')) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(loaded.map((r) => [r.name, r.health]).sort()).toEqual(rules.map((r) => [r.alert, 'ok']).sort());
  });
});
