// deploy/grafana: the dashboards are what generate.mjs makes, importable (a Prometheus
// datasource variable, the model variable, unique ids on the grid), every panel has queries,
// and every query uses only the variables its dashboard defines, $__rate_interval in its rates,
// and only the metrics and labels the code exports; promtool parses every query too.

import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { GRAFANA } from './deploy/paths.js';
import { promqlProblems, promqlUse, promtoolParse } from './deploy/promql.js';

interface Variable {
  name: string;
  type: string;
  query?: string | { query: string };
  includeAll?: boolean;
  allValue?: string;
}
interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: { refId: string; expr: string; datasource?: { type: string; uid: string } }[];
}
interface Dashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  templating: { list: Variable[] };
  panels: Panel[];
}

const FILES = ['serving.json', 'cluster.json'];
const DATASOURCE = { type: 'prometheus', uid: `\${datasource}` };
const load = (file: string) => JSON.parse(readFileSync(join(GRAFANA, file), 'utf8')) as Dashboard;

/** Grafana's own variables that queries may use; a range gets a marker duration to find it by. */
const RATE_INTERVAL = '1337s';
const BUILT_INS: Record<string, string> = {
  __rate_interval: RATE_INTERVAL,
  __interval: '15s',
  __range: '1h',
};
const SAMPLE: Record<string, string> = { model: 'meditron-70b-awq', stage: '0' };

/** Every `$name`, `${name}` or `[[name]]` in a string. */
const variablesIn = (s: string) =>
  [...s.matchAll(/\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]/g)].map((m) => m[1] ?? m[2] ?? m[3]);

/** A query with its variables replaced as Grafana would: built-ins, then a value of each variable. */
function substitute(expr: string, variables: Variable[]): string {
  return expr.replace(/\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]/g, (whole, a, b, c) => {
    const v = (a ?? b ?? c) as string;
    if (v in BUILT_INS) return BUILT_INS[v];
    const def = variables.find((x) => x.name === v);
    if (!def) return whole;
    return def.includeAll && def.allValue ? def.allValue : (SAMPLE[v] ?? 'value');
  });
}

const variableQuery = (v: Variable) => (typeof v.query === 'string' ? v.query : (v.query?.query ?? ''));

describe.each(FILES)('deploy/grafana/%s', (file) => {
  const dashboard = load(file);
  const variables = dashboard.templating.list;
  const defined = new Set(variables.map((v) => v.name));
  const targets = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p, ...t })));

  test('is importable: uid, title, a Prometheus datasource variable and the model variable', () => {
    expect(dashboard.uid).toMatch(/^medcluster-/);
    expect(dashboard.title).toMatch(/^medcluster \/ /);
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(variables.find((v) => v.name === 'datasource')).toMatchObject({
      type: 'datasource',
      query: 'prometheus',
    });
    const model = variables.find((v) => v.name === 'model');
    expect(model?.type).toBe('query');
    expect(model && variableQuery(model)).toBe('label_values(medcluster_requests_total, model)');
  });

  test('panels have unique ids, sit on the 24-column grid without overlapping, and query the datasource variable', () => {
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const cells = new Set<string>();
    for (const p of dashboard.panels) {
      const { x, y, w, h } = p.gridPos;
      expect(x >= 0 && w > 0 && x + w <= 24 && h > 0, p.title).toBe(true);
      for (let i = x; i < x + w; i++)
        for (let j = y; j < y + h; j++) {
          expect(cells.has(`${i},${j}`), `${p.title} overlaps another panel`).toBe(false);
          cells.add(`${i},${j}`);
        }
      expect(p.datasource, p.title).toEqual(DATASOURCE);
      expect(p.targets?.length, `${p.title} has no query`).toBeGreaterThan(0);
      for (const t of p.targets ?? []) {
        expect(t.expr.trim(), `${p.title} ${t.refId}`).not.toBe('');
        expect(t.datasource, `${p.title} ${t.refId}`).toEqual(DATASOURCE);
      }
    }
  });

  test('queries use only the variables the dashboard defines, and every variable is used', () => {
    const used = new Set<string>();
    const strings = [
      ...targets.map((t) => ({ where: `${t.panel.title} ${t.refId}`, text: t.expr })),
      ...variables.map((v) => ({ where: `variable ${v.name}`, text: variableQuery(v) })),
    ];
    for (const { where, text } of strings) {
      for (const v of variablesIn(text)) {
        if (v in BUILT_INS) continue;
        expect(defined, `${where} uses $${v}`).toContain(v);
        used.add(v);
      }
    }
    used.add('datasource'); // used by every panel's datasource
    expect([...defined].filter((v) => !used.has(v))).toEqual([]);
  });

  test('every query parses and uses only exported metrics and labels, with $__rate_interval in every range', () => {
    const problems: string[] = [];
    for (const t of targets) {
      const expr = substitute(t.expr, variables);
      for (const p of promqlProblems(expr)) problems.push(`${t.panel.title} ${t.refId}: ${p}: ${t.expr}`);
      for (const r of promqlUse(expr).ranges)
        if (r !== RATE_INTERVAL)
          problems.push(`${t.panel.title} ${t.refId}: range [${r}], not $__rate_interval`);
    }
    // label_values(SELECTOR, LABEL): the selector is PromQL too.
    for (const v of variables.filter((x) => x.type === 'query')) {
      const m = /^label_values\((.+),\s*(\w+)\)$/.exec(variableQuery(v));
      expect(m, `variable ${v.name}: ${variableQuery(v)}`).not.toBeNull();
      for (const p of promqlProblems(substitute(m?.[1] ?? '', variables)))
        problems.push(`variable ${v.name}: ${p}`);
    }
    expect(problems).toEqual([]);
  });

  test('promtool parses every query', () => {
    const exprs = targets.map((t) => ({
      name: `dashboard:panel_${t.panel.id}_${t.refId}`,
      expr: substitute(t.expr, variables),
    }));
    const r = promtoolParse(exprs);
    expect(r.ok, r.output).toBe(true);
    expect(r.output).toContain(`SUCCESS: ${exprs.length} rules found`);
  });
});

describe('deploy/grafana', () => {
  test('the committed JSON is what generate.mjs makes', () => {
    const r = spawnSync(process.execPath, [join(GRAFANA, 'generate.mjs'), '--stdout'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const generated = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(Object.keys(generated).sort()).toEqual([...FILES].sort());
    for (const file of FILES)
      expect(load(file), `${file}: run node deploy/grafana/generate.mjs`).toEqual(generated[file]);
  });

  test('the checks catch a query promtool cannot parse and a metric the code does not export', () => {
    expect(promtoolParse([{ name: 'bad:query', expr: 'sum(rate(medcluster_requests_total[5m])' }]).ok).toBe(
      false,
    );
    expect(promqlProblems('sum(rate(medcluster_requests_total[5m])')[0]).toMatch(/^does not parse/);
    expect(promqlProblems('rate(medcluster_tokens_per_second_total{model="m"}[1m])')).toEqual([
      'unknown metric medcluster_tokens_per_second_total',
    ]);
    expect(promqlProblems('sum by (modle) (medcluster_requests_running)')).toEqual(['unknown label modle']);
  });
});
