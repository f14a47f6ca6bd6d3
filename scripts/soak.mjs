#!/usr/bin/env node
// Soak: steady load on a `medcluster up` cluster of the tiny model for a while, watching the
// memory of the coordinator and of every worker, then checking that nothing is left held.
//
//   node scripts/soak.mjs                          the full run: 10 minutes, baseline at minute 2
//   node scripts/soak.mjs --duration-s 60 --warmup-s 20     the short run CI does
//
// Flags: --duration-s N (600), --warmup-s N (120: when the RSS baseline is taken), --concurrency N
// (4 clients in closed loop), --tp N (1), --pp N (2), --sample-s N (5), --max-growth-pct P (5),
// --json PATH (the report as JSON), --model DIR (default: the generated tiny model),
// --semi-space-mib N (16; 0 leaves V8 to grow it).
//
// The soak looks for leaks, so every process starts with V8's young generation at the size it
// reaches under load anyway (two semi-spaces of 16 MiB, V8's maximum on 64-bit): with V8's
// default growth, each process's RSS steps up by up to ~30 MiB once, a few minutes in, when the
// young generation doubles to that size, while its old generation stays flat.
//
// The load mixes what serving does: unary and streamed completions and chats, n = 2, seeded
// sampling, stop strings, and streams the client abandons after their first token (cancelled
// requests must free their KV blocks), each with 4-32 new tokens. RSS comes from /proc (Linux):
// the baseline is the mean of the samples in the window after the warm-up, the end the mean of
// the last window, each window a quarter of what follows the warm-up (at least one sample).
// Once the load stops, GET /cluster must show no request in flight and no KV block in use.
// Exits 1 if any process grew by more than --max-growth-pct, a block is left in use, or a request
// failed; the report is printed (and written as JSON) either way.

import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values: flags } = parseArgs({
  options: {
    'duration-s': { type: 'string', default: '600' },
    'warmup-s': { type: 'string', default: '120' },
    concurrency: { type: 'string', default: '4' },
    tp: { type: 'string', default: '1' },
    pp: { type: 'string', default: '2' },
    'sample-s': { type: 'string', default: '5' },
    'max-growth-pct': { type: 'string', default: '5' },
    'semi-space-mib': { type: 'string', default: '16' },
    json: { type: 'string' },
    model: { type: 'string' },
  },
});
const durationS = Number(flags['duration-s']);
const warmupS = Number(flags['warmup-s']);
const sampleS = Number(flags['sample-s']);
const maxGrowthPct = Number(flags['max-growth-pct']);
if (!(Number.isInteger(Number(flags['semi-space-mib'])) && Number(flags['semi-space-mib']) >= 0)) {
  console.error('soak: --semi-space-mib must be an integer >= 0');
  process.exit(2);
}
if (!(warmupS > 0 && durationS > warmupS + sampleS)) {
  console.error('soak: --duration-s must exceed --warmup-s by more than one sample');
  process.exit(2);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (line) => console.error(`soak: ${line}`);

/** Resident set size of a process, in bytes (Linux /proc). */
function rss(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : Number.NaN;
}

function childrenOf(pid) {
  try {
    return execFileSync('pgrep', ['-P', String(pid)])
      .toString()
      .trim()
      .split('\n')
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

// 1. The cluster.
const args = [
  join(root, 'coordinator/bin/medcluster.js'),
  'up',
  '--tp',
  flags.tp,
  '--pp',
  flags.pp,
  '--threads',
  '1',
  '--http-port',
  '0',
  '--grpc-port',
  '0',
  '--kv-blocks',
  '256',
  ...(flags.model ? ['--model', flags.model] : []),
];
// Node flags go to up, and from it to the workers (up starts them with its own).
const semiSpaceMib = Number(flags['semi-space-mib']);
const nodeFlags = [
  ...process.execArgv,
  ...(semiSpaceMib > 0 ? [`--min-semi-space-size=${semiSpaceMib}`] : []),
];
const up = spawn(process.execPath, [...nodeFlags, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
let upLog = '';
const base = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`up did not serve within 180 s:\n${upLog}`)), 180_000);
  up.stderr.on('data', (d) => {
    upLog = (upLog + d).slice(-20_000);
    const m = /HTTP APIs .* on (http:\/\/127\.0\.0\.1:\d+)/.exec(upLog);
    if (m) {
      clearTimeout(timer);
      resolve(m[1]);
    }
  });
  up.once('exit', (code) => reject(new Error(`up exited (${code}):\n${upLog}`)));
});
const processes = [{ name: 'coordinator', pid: up.pid }];
for (const [i, pid] of childrenOf(up.pid).entries()) processes.push({ name: `worker ${i}`, pid });
log(`cluster at ${base}: ${processes.map((p) => `${p.name} pid ${p.pid}`).join(', ')}`);

// 2. Steady load until the end.
const PROMPTS = [
  'The patient presented with',
  'Differential diagnosis of chest pain includes',
  'Question: What causes iron-deficiency anemia?\nAnswer:',
  'Discharge summary: a 64-year-old man admitted for',
  'Metformin is contraindicated when',
];
const counts = { requests: 0, failed: 0, cancelled: 0, tokens: 0 };
const failures = [];
// A failed request is logged as it happens (stderr, which a failing CI run prints), not only counted.
const fail = (what) => {
  counts.failed++;
  failures.push(what);
  log(`request failed: ${what}`);
};
let running = true;
let seq = 0;

async function once(client) {
  const i = seq++;
  const prompt = `${PROMPTS[i % PROMPTS.length]} (${client}.${i})`;
  const maxTokens = 4 + ((i * 7) % 29);
  const kind = i % 6; // 0 unary completion, 1 streamed, 2 chat, 3 n=2 seeded, 4 abandoned stream, 5 stop string
  const chat = kind === 2;
  const stream = kind === 1 || kind === 4;
  const body = chat
    ? { messages: [{ role: 'user', content: prompt }], max_tokens: maxTokens }
    : {
        prompt,
        max_tokens: maxTokens,
        stream,
        ...(kind === 3 ? { n: 2, temperature: 0.8, seed: i } : {}),
        ...(kind === 5 ? { stop: ['.', '\n'] } : {}),
      };
  const abort = new AbortController();
  const res = await fetch(`${base}/v1/${chat ? 'chat/completions' : 'completions'}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: abort.signal,
  });
  counts.requests++;
  if (res.status !== 200) {
    fail(`${res.status} ${(await res.text()).slice(0, 200)}`);
    return;
  }
  if (!stream) {
    const json = await res.json();
    counts.tokens += json.usage.completion_tokens;
    return;
  }
  const reader = res.body.getReader();
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ done: true }));
    if (done) break;
    const text = new TextDecoder().decode(value);
    if (text.includes('"error"')) fail(text.slice(0, 200));
    counts.tokens += (text.match(/"text":/g) ?? []).length;
    if (kind === 4 && text.includes('"text":')) {
      counts.cancelled++;
      abort.abort();
      break;
    }
  }
}

const clients = Array.from({ length: Number(flags.concurrency) }, async (_, c) => {
  while (running) {
    await once(c).catch((err) => {
      if (err.name === 'AbortError') return;
      fail(String(err.message));
    });
  }
});

// 3. Memory samples, every --sample-s, until the end.
const samples = []; // { t, rss: [per process] }
const started = performance.now();
while ((performance.now() - started) / 1000 < durationS) {
  await sleep(sampleS * 1000);
  const t = (performance.now() - started) / 1000;
  samples.push({ t, rss: processes.map((p) => rss(p.pid)) });
  const mib = samples
    .at(-1)
    .rss.map((b) => (b / 2 ** 20).toFixed(1))
    .join(' / ');
  log(`${t.toFixed(0)} s: ${counts.requests} requests, ${counts.failed} failed; RSS MiB ${mib}`);
}
running = false;
await Promise.all(clients);

// 4. Nothing held once the load stops.
let cluster;
for (let i = 0; i < 100; i++) {
  cluster = await (await fetch(`${base}/cluster`)).json();
  if (cluster.requests_in_flight === 0 && cluster.kv_cache.blocks_used === 0) break;
  await sleep(100);
}

// 5. The report.
const after = samples.filter((s) => s.t >= warmupS);
const window = Math.max(1, Math.floor(after.length / 4));
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const report = {
  durationS,
  warmupS,
  concurrency: Number(flags.concurrency),
  layout: { tp: Number(flags.tp), pp: Number(flags.pp) },
  nodeFlags,
  requests: counts.requests,
  failed: counts.failed,
  cancelledByClient: counts.cancelled,
  tokens: counts.tokens,
  kvBlocksInUseAfter: cluster.kv_cache.blocks_used,
  requestsInFlightAfter: cluster.requests_in_flight,
  processes: processes.map((p, i) => {
    const baseline = mean(after.slice(0, window).map((s) => s.rss[i]));
    const end = mean(after.slice(-window).map((s) => s.rss[i]));
    return {
      name: p.name,
      baselineMiB: Number((baseline / 2 ** 20).toFixed(1)),
      endMiB: Number((end / 2 ** 20).toFixed(1)),
      growthPct: Number((((end - baseline) / baseline) * 100).toFixed(2)),
    };
  }),
  failures: failures.slice(0, 10),
};
up.kill('SIGTERM');
await new Promise((r) => up.once('exit', r));

const problems = [
  ...report.processes
    .filter((p) => !(p.growthPct < maxGrowthPct))
    .map((p) => `${p.name} grew ${p.growthPct}%`),
  ...(report.kvBlocksInUseAfter !== 0 ? [`${report.kvBlocksInUseAfter} KV blocks still in use`] : []),
  ...(report.failed !== 0 ? [`${report.failed} requests failed`] : []),
];
console.log(
  `soak: ${durationS} s at ${report.concurrency} clients (tp=${flags.tp}, pp=${flags.pp}; node ${nodeFlags.join(' ') || 'defaults'}): ${report.requests} requests, ` +
    `${report.failed} failed, ${report.cancelledByClient} abandoned by their client, ${report.tokens} tokens; ` +
    `RSS from ${warmupS} s to the end: ${report.processes.map((p) => `${p.name} ${p.baselineMiB} -> ${p.endMiB} MiB (${p.growthPct >= 0 ? '+' : ''}${p.growthPct}%)`).join(', ')}; ` +
    `KV blocks in use after: ${report.kvBlocksInUseAfter}${problems.length ? `; FAILED: ${problems.join('; ')}` : ''}`,
);
if (flags.json) writeFileSync(flags.json, `${JSON.stringify(report, null, 2)}\n`);
process.exitCode = problems.length ? 1 : 0;
