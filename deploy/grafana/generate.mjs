#!/usr/bin/env node
// Writes the Grafana dashboards in this folder (serving.json, cluster.json) from the panel lists
// below, so every panel has the same datasource, layout and variables. Edit here, then run
//   node deploy/grafana/generate.mjs && npx biome format --write deploy/grafana
// The JSON is committed (Grafana imports it as is); test/src/dashboards.test.ts checks that it
// matches this file and that every query parses and uses only metrics the code exports.

import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

const DATASOURCE = { type: 'prometheus', uid: `\${datasource}` };
const M = 'model="$model"';
const W = `${M}, stage=~"$stage"`;
const RATE = '[$__rate_interval]';

const datasourceVariable = {
  name: 'datasource',
  label: 'Data source',
  type: 'datasource',
  query: 'prometheus',
  current: {},
  hide: 0,
  refresh: 1,
  regex: '',
};

const modelVariable = {
  name: 'model',
  label: 'Model',
  type: 'query',
  datasource: DATASOURCE,
  definition: 'label_values(medcluster_requests_total, model)',
  query: { query: 'label_values(medcluster_requests_total, model)', refId: 'model' },
  current: {},
  hide: 0,
  refresh: 2,
  includeAll: false,
  multi: false,
  sort: 1,
  regex: '',
};

const stageVariable = {
  name: 'stage',
  label: 'Stage',
  type: 'query',
  datasource: DATASOURCE,
  definition: `label_values(medcluster_worker_steps_total{${M}}, stage)`,
  query: { query: `label_values(medcluster_worker_steps_total{${M}}, stage)`, refId: 'stage' },
  current: {},
  hide: 0,
  refresh: 2,
  includeAll: true,
  allValue: '.*',
  multi: true,
  sort: 3,
  regex: '',
};

/** One query: [expr, legend]. */
const q = (expr, legend) => ({ expr, legend });

/**
 * p50/p90/p99 (or the given quantiles) of a histogram, summed over everything but `by`; the
 * legend names the quantile, then `label` (a legend template, e.g. 'stage {{stage}}').
 */
function quantiles(histogram, selector, { by = [], qs = [0.5, 0.9, 0.99], label = '' } = {}) {
  const labels = ['le', ...by].join(', ');
  return qs.map((p) =>
    q(
      `histogram_quantile(${p}, sum by (${labels}) (rate(${histogram}_bucket{${selector}}${RATE})))`,
      `p${Math.round(p * 100)}${label ? ` ${label}` : ''}`,
    ),
  );
}

/** The p90 of each histogram, legend by name: request phases side by side. */
const p90s = (histograms) =>
  Object.entries(histograms).map(([legend, h]) => ({ ...quantiles(h, M, { qs: [0.9] })[0], legend }));

const timeseries = (title, description, unit, queries, extra = {}) => ({
  type: 'timeseries',
  title,
  description,
  unit,
  queries,
  ...extra,
});
const stat = (title, description, unit, queries, extra = {}) => ({
  type: 'stat',
  title,
  description,
  unit,
  queries,
  w: 4,
  h: 4,
  ...extra,
});

const HEALTH_MAPPING = [
  {
    type: 'value',
    options: {
      0: { text: 'degraded', color: 'red', index: 0 },
      1: { text: 'healthy', color: 'green', index: 1 },
    },
  },
];

/** The cluster's health, first on both dashboards. */
const clusterHealth = () =>
  stat(
    'Cluster',
    'Every worker of the placement is up.',
    'none',
    [q(`min(medcluster_cluster_healthy{${M}})`, 'healthy')],
    { mappings: HEALTH_MAPPING },
  );

const serving = {
  uid: 'medcluster-serving',
  title: 'medcluster / Serving',
  description: 'Throughput, latency, queue, KV cache and errors of one medcluster coordinator.',
  variables: [datasourceVariable, modelVariable],
  panels: [
    clusterHealth(),
    stat('Generated tokens/s', 'Tokens sampled per second, every request and choice.', 'short', [
      q(`sum(rate(medcluster_generation_tokens_total{${M}}${RATE}))`, 'tokens/s'),
    ]),
    stat('Running', 'Sequences holding KV blocks.', 'short', [
      q(`sum(medcluster_requests_running{${M}})`, 'running'),
    ]),
    stat('Waiting', 'Sequences queued for admission.', 'short', [
      q(`sum(medcluster_requests_waiting{${M}})`, 'waiting'),
    ]),
    stat('KV cache used', 'Share of the KV cache blocks held by sequences.', 'percentunit', [
      q(`sum(medcluster_kv_cache_blocks_used{${M}}) / sum(medcluster_kv_cache_blocks_total{${M}})`, 'used'),
    ]),
    stat('p99 time to first token', 'Arrival to first token, queueing included.', 's', [
      q(
        `histogram_quantile(0.99, sum by (le) (rate(medcluster_time_to_first_token_seconds_bucket{${M}}${RATE})))`,
        'p99',
      ),
    ]),
    timeseries(
      'Throughput (tokens/s)',
      'Generated tokens, and the tokens engine steps computed: prompt (including recomputation after preemption) and decode.',
      'short',
      [
        q(`sum(rate(medcluster_generation_tokens_total{${M}}${RATE}))`, 'generated'),
        q(`sum by (kind) (rate(medcluster_step_tokens_total{${M}}${RATE}))`, 'computed: {{kind}}'),
      ],
    ),
    timeseries(
      'Requests ended (/s)',
      'Requests that ended, by outcome (a finish reason, or failed).',
      'reqps',
      [q(`sum by (outcome) (rate(medcluster_requests_total{${M}}${RATE}))`, '{{outcome}}')],
    ),
    timeseries(
      'Time to first token',
      'Arrival to the first generated token.',
      's',
      quantiles('medcluster_time_to_first_token_seconds', M),
    ),
    timeseries(
      'Inter-token latency',
      'Time between consecutive tokens of a choice.',
      's',
      quantiles('medcluster_inter_token_latency_seconds', M),
    ),
    timeseries(
      'Request duration',
      'Arrival to the end of a request.',
      's',
      quantiles('medcluster_request_duration_seconds', M),
    ),
    timeseries(
      'Request phases (p90)',
      'Queue: arrival to first scheduled; prefill: to the first token; decode: first token to the end.',
      's',
      p90s({
        queue: 'medcluster_request_queue_seconds',
        prefill: 'medcluster_request_prefill_seconds',
        decode: 'medcluster_request_decode_seconds',
      }),
    ),
    timeseries(
      'Running and waiting requests',
      'Sequences holding KV blocks, and sequences queued.',
      'short',
      [
        q(`sum(medcluster_requests_running{${M}})`, 'running'),
        q(`sum(medcluster_requests_waiting{${M}})`, 'waiting'),
      ],
    ),
    timeseries(
      'KV cache usage',
      'Share of the KV cache blocks in use. Near 1 the scheduler preempts the newest sequences.',
      'percentunit',
      [q(`sum(medcluster_kv_cache_blocks_used{${M}}) / sum(medcluster_kv_cache_blocks_total{${M}})`, 'used')],
      { max: 1, min: 0 },
    ),
    timeseries(
      'Error rate',
      'Share of the requests that ended as failed (a step failed: a worker died, a stream dropped).',
      'percentunit',
      [
        q(
          `sum(rate(medcluster_requests_total{${M}, outcome="failed"}${RATE})) / sum(rate(medcluster_requests_total{${M}}${RATE}))`,
          'failed',
        ),
      ],
      { min: 0 },
    ),
    timeseries(
      'Rejections and cancellations (/s)',
      'Requests refused before taking anything (invalid, queue full = 429, closing), and requests cancelled by their client, by how far they got.',
      'reqps',
      [
        q(`sum by (reason) (rate(medcluster_request_rejections_total{${M}}${RATE}))`, 'rejected: {{reason}}'),
        q(
          `sum by (stage) (rate(medcluster_request_cancellations_total{${M}}${RATE}))`,
          'cancelled: {{stage}}',
        ),
      ],
    ),
    timeseries('HTTP responses (/s)', 'Responses of the HTTP server, by route and status.', 'reqps', [
      q(`sum by (route, status) (rate(medcluster_http_requests_total{${M}}${RATE}))`, '{{route}} {{status}}'),
    ]),
    timeseries(
      'Preemptions and step failures (/s)',
      'Sequences preempted (KV blocks freed, recomputed later), and engine steps that failed.',
      'short',
      [
        q(`sum(rate(medcluster_preemptions_total{${M}}${RATE}))`, 'preemptions'),
        q(`sum(rate(medcluster_step_failures_total{${M}}${RATE}))`, 'step failures'),
      ],
    ),
    timeseries(
      'Engine step duration',
      'Wall time of one engine step, through every stage.',
      's',
      quantiles('medcluster_step_duration_seconds', M, { qs: [0.5, 0.99] }),
    ),
    timeseries(
      'Step batch size',
      'Sequences in one engine step.',
      'short',
      quantiles('medcluster_step_batch_size', M, { qs: [0.5, 0.99] }),
    ),
    timeseries('Coordinator memory', 'Resident memory of the coordinator process.', 'bytes', [
      q(`sum by (instance) (medcluster_process_resident_memory_bytes{${M}, worker=""})`, '{{instance}}'),
    ]),
    timeseries('Coordinator CPU', 'CPU seconds per second of the coordinator process.', 'percentunit', [
      q(
        `sum by (instance) (rate(medcluster_process_cpu_seconds_total{${M}, worker=""}${RATE}))`,
        '{{instance}}',
      ),
    ]),
  ],
};

const cluster = {
  uid: 'medcluster-cluster',
  title: 'medcluster / Cluster',
  description: 'Per stage and worker: health, load, step time, pipeline idle time, transfers, collectives.',
  variables: [datasourceVariable, modelVariable, stageVariable],
  panels: [
    clusterHealth(),
    stat('Workers up', 'Workers of the placement the coordinator sees up.', 'short', [
      q(`sum(medcluster_worker_up{${W}})`, 'up'),
    ]),
    stat('Workers down', 'Workers of the placement the coordinator sees down.', 'short', [
      q(`sum(1 - medcluster_worker_up{${W}})`, 'down'),
    ]),
    stat('Max heartbeat age', 'Seconds since the least recent worker heartbeat.', 's', [
      q(`max(medcluster_worker_heartbeat_age_seconds{${M}})`, 'age'),
    ]),
    stat('Worker steps/s', 'Steps run per second, summed over the workers.', 'short', [
      q(`sum(rate(medcluster_worker_steps_total{${W}}${RATE}))`, 'steps/s'),
    ]),
    stat('Worker step failures/s', 'Failed steps per second, summed over the workers.', 'short', [
      q(`sum(rate(medcluster_worker_step_failures_total{${W}}${RATE}))`, 'failures/s'),
    ]),
    timeseries(
      'Worker up',
      "The coordinator's view: 1 while the worker is up and ready.",
      'short',
      [
        q(
          `max by (stage, rank, worker) (medcluster_worker_up{${W}})`,
          'stage {{stage}} rank {{rank}} {{worker}}',
        ),
      ],
      { min: 0, max: 1 },
    ),
    timeseries(
      'Workers by state',
      'Workers in each lifecycle state, as each worker reports it.',
      'short',
      [q(`sum by (state) (medcluster_worker_state{${W}})`, '{{state}}')],
      { min: 0 },
    ),
    timeseries('Heartbeat age', 'Seconds since each worker last sent a heartbeat over NATS.', 's', [
      q(`max by (worker) (medcluster_worker_heartbeat_age_seconds{${M}})`, '{{worker}}'),
    ]),
    timeseries(
      'Load progress',
      'Bytes of its shard each worker has loaded, as a share of the total.',
      'percentunit',
      [
        q(
          `max by (stage, worker) (medcluster_worker_load_bytes{${W}}) / max by (stage, worker) (medcluster_worker_load_bytes_total{${W}})`,
          'stage {{stage}} {{worker}}',
        ),
      ],
      { min: 0, max: 1 },
    ),
    timeseries(
      'Step time p50',
      "One step's time on each worker (its layers, its collectives, and the send to the next stage).",
      's',
      quantiles('medcluster_worker_step_seconds', W, {
        by: ['stage', 'worker'],
        qs: [0.5],
        label: 'stage {{stage}} {{worker}}',
      }),
    ),
    timeseries(
      'Step time p99',
      "One step's time on each worker (its layers, its collectives, and the send to the next stage).",
      's',
      quantiles('medcluster_worker_step_seconds', W, {
        by: ['stage', 'worker'],
        qs: [0.99],
        label: 'stage {{stage}} {{worker}}',
      }),
    ),
    timeseries(
      'Pipeline idle time',
      'Share of wall time each worker spent waiting with no step to run (pipeline bubbles, an empty queue).',
      'percentunit',
      [
        q(
          `sum by (stage, worker) (rate(medcluster_worker_idle_seconds_total{${W}}${RATE}))`,
          'stage {{stage}} {{worker}}',
        ),
      ],
      { min: 0 },
    ),
    timeseries('Worker steps (/s)', 'Steps each worker ran, and steps that failed.', 'short', [
      q(
        `sum by (stage, worker) (rate(medcluster_worker_steps_total{${W}}${RATE}))`,
        'stage {{stage}} {{worker}}',
      ),
      q(
        `sum by (stage, worker) (rate(medcluster_worker_step_failures_total{${W}}${RATE}))`,
        'failed: stage {{stage}} {{worker}}',
      ),
    ]),
    timeseries(
      'Activation transfer time',
      "Time to send one step's hidden states to the next stage.",
      's',
      quantiles('medcluster_worker_activation_transfer_seconds', W, {
        by: ['stage'],
        qs: [0.5, 0.99],
        label: 'stage {{stage}}',
      }),
    ),
    timeseries('Activation bytes (/s)', 'Hidden-state bytes each stage sent and received.', 'Bps', [
      q(
        `sum by (stage, direction) (rate(medcluster_worker_activation_bytes_total{${W}}${RATE}))`,
        'stage {{stage}} {{direction}}',
      ),
    ]),
    timeseries(
      'Collective time',
      'Time of one tensor-parallel collective (all-reduce after o_proj and down_proj, all-gather of the logits).',
      's',
      quantiles('medcluster_worker_collective_seconds', W, {
        by: ['op', 'stage'],
        qs: [0.5, 0.99],
        label: '{{op}} stage {{stage}}',
      }),
    ),
    timeseries(
      'Time in collectives',
      'Share of wall time each worker spent in collectives.',
      'percentunit',
      [
        q(
          `sum by (op, stage, worker) (rate(medcluster_worker_collective_seconds_sum{${W}}${RATE}))`,
          '{{op}} stage {{stage}} {{worker}}',
        ),
      ],
      { min: 0 },
    ),
    timeseries('Worker KV cache blocks', 'KV cache blocks each worker allocated.', 'short', [
      q(`max by (stage, worker) (medcluster_worker_kv_cache_blocks{${W}})`, 'stage {{stage}} {{worker}}'),
    ]),
    timeseries('Worker memory', 'Resident memory of each worker process (host memory, not GPU).', 'bytes', [
      q(
        `max by (stage, worker) (medcluster_process_resident_memory_bytes{${W}, worker!=""})`,
        'stage {{stage}} {{worker}}',
      ),
    ]),
    timeseries('Worker CPU', 'CPU seconds per second of each worker process.', 'percentunit', [
      q(
        `sum by (stage, worker) (rate(medcluster_process_cpu_seconds_total{${W}, worker!=""}${RATE}))`,
        'stage {{stage}} {{worker}}',
      ),
    ]),
  ],
};

/** Lays panels left to right, top to bottom, on Grafana's 24-column grid. */
function layout(panels) {
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  return panels.map((p, i) => {
    const w = p.w ?? 12;
    const h = p.h ?? 8;
    if (x + w > 24) {
      x = 0;
      y += rowHeight;
      rowHeight = 0;
    }
    const gridPos = { x, y, w, h };
    x += w;
    rowHeight = Math.max(rowHeight, h);
    return { ...p, id: i + 1, gridPos };
  });
}

function panelJson(p) {
  const defaults = { unit: p.unit };
  if (p.min !== undefined) defaults.min = p.min;
  if (p.max !== undefined) defaults.max = p.max;
  if (p.mappings) defaults.mappings = p.mappings;
  if (p.type === 'timeseries')
    defaults.custom = { drawStyle: 'line', lineWidth: 1, fillOpacity: 10, showPoints: 'never' };
  return {
    id: p.id,
    type: p.type,
    title: p.title,
    description: p.description,
    datasource: DATASOURCE,
    gridPos: p.gridPos,
    fieldConfig: { defaults, overrides: [] },
    options:
      p.type === 'stat'
        ? {
            reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
            colorMode: 'value',
            graphMode: 'area',
          }
        : {
            legend: { displayMode: 'list', placement: 'bottom', showLegend: true },
            tooltip: { mode: 'multi', sort: 'desc' },
          },
    targets: p.queries.map((t, i) => ({
      datasource: DATASOURCE,
      refId: String.fromCharCode(65 + i),
      expr: t.expr,
      legendFormat: t.legend,
      range: true,
    })),
  };
}

function dashboardJson(d) {
  return {
    uid: d.uid,
    title: d.title,
    description: d.description,
    tags: ['medcluster'],
    editable: true,
    graphTooltip: 1,
    schemaVersion: 39,
    version: 1,
    refresh: '30s',
    time: { from: 'now-1h', to: 'now' },
    timepicker: {},
    timezone: '',
    annotations: { list: [] },
    links: [],
    templating: { list: d.variables },
    panels: layout(d.panels).map(panelJson),
  };
}

const DASHBOARDS = { 'serving.json': serving, 'cluster.json': cluster };

// --stdout prints {file: dashboard} instead of writing (the test compares it with the files).
const dashboards = Object.fromEntries(
  Object.entries(DASHBOARDS).map(([file, d]) => [file, dashboardJson(d)]),
);
if (process.argv.includes('--stdout')) {
  process.stdout.write(`${JSON.stringify(dashboards)}\n`);
} else {
  for (const [file, json] of Object.entries(dashboards)) {
    writeFileSync(join(here, file), `${JSON.stringify(json, null, 2)}\n`);
    console.log(`wrote ${join(here, file)}`);
  }
}
