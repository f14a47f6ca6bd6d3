// PromQL checks shared by the dashboard and alert rule tests: a parse with the PromQL grammar
// of the Prometheus release CI installs (@prometheus-io/lezer-promql 0.42 = Prometheus 2.42),
// the metric and label names an expression uses, and promtool's own parse of a set of
// expressions (a rules file of recording rules through `promtool check rules`).

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parser } from '@prometheus-io/lezer-promql';
import { stringify } from 'yaml';
import { LABEL_NAMES, METRIC_NAMES } from './metrics.js';
import { run } from './tools.js';

export interface PromqlUse {
  /** Parse errors, as the text around each error node; empty when the expression parses. */
  errors: string[];
  metrics: string[];
  labels: string[];
  /** The duration of every range selector (`foo[5m]`), as written. */
  ranges: string[];
}

/** What one PromQL expression uses, from its syntax tree. */
export function promqlUse(expr: string): PromqlUse {
  const use: PromqlUse = { errors: [], metrics: [], labels: [], ranges: [] };
  const text = (from: number, to: number) => expr.slice(from, to);
  const cursor = parser.parse(expr).cursor();
  do {
    const node = cursor.node;
    if (node.type.isError) {
      use.errors.push(`at ${node.from}: '${text(Math.max(0, node.from - 20), node.to + 20)}'`);
    } else if (node.name === 'VectorSelector') {
      const id = node.getChild('Identifier');
      if (id) use.metrics.push(text(id.from, id.to));
    } else if (node.name === 'LabelMatcher') {
      const name = node.getChild('LabelName');
      const value = node.getChild('StringLiteral');
      if (name && text(name.from, name.to) === '__name__' && value) {
        use.metrics.push(JSON.parse(text(value.from, value.to)) as string);
      }
    } else if (node.name === 'LabelName') {
      const label = text(node.from, node.to);
      if (label !== '__name__') use.labels.push(label);
    } else if (node.name === 'MatrixSelector' || node.name === 'SubqueryExpr') {
      const duration = node.getChild('Duration');
      if (duration) use.ranges.push(text(duration.from, duration.to));
    }
  } while (cursor.next());
  return use;
}

/** Everything wrong with an expression against the exported metric and label names. */
export function promqlProblems(expr: string): string[] {
  const use = promqlUse(expr);
  return [
    ...use.errors.map((e) => `does not parse (${e})`),
    ...(use.metrics.length === 0 ? ['selects no metric'] : []),
    ...use.metrics.filter((m) => !METRIC_NAMES.has(m)).map((m) => `unknown metric ${m}`),
    ...use.labels.filter((l) => !LABEL_NAMES.has(l)).map((l) => `unknown label ${l}`),
  ];
}

/**
 * promtool's verdict on expressions: 2.42 has no PromQL-only check, so they go through
 * `promtool check rules` as recording rules. Returns promtool's output when it refuses them.
 */
export function promtoolParse(exprs: { name: string; expr: string }[]): { ok: boolean; output: string } {
  const dir = mkdtempSync(join(tmpdir(), 'medcluster-promql-'));
  try {
    const rules = exprs.map(({ name, expr }) => ({ record: name, expr }));
    const file = join(dir, 'queries.rules.yml');
    writeFileSync(file, stringify({ groups: [{ name: 'queries', rules }] }));
    const r = run('promtool', ['check', 'rules', file]);
    return { ok: r.code === 0, output: `${r.stdout}${r.stderr}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
