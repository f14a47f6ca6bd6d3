// A load generator for any OpenAI-compatible server (`medcluster bench serve`): streams
// completions or chat completions at a fixed concurrency or a Poisson request rate, with
// prompt and output lengths drawn from ranges, and measures what a client sees:
//   TTFT  send -> first chunk that carries text
//   ITL   gaps between successive chunks that carry text (one per token on this server)
//   TPOT  (end-to-end - TTFT) / (output tokens - 1), per request
//   E2E   send -> end of the stream
// plus request and token throughput over the whole run. Token counts come from the stream's
// usage chunk (stream_options.include_usage) where the server sends one.
//
// Prompts are random token ids by default (exact lengths; OpenAI's completions take a list of
// ids, and so do vLLM and this server), or text of medical words for servers and for chat,
// whose true length is then read from the usage.

import { setTimeout as sleep } from 'node:timers/promises';
import { rng } from '@medcluster/kernels/testing';

export interface LengthRange {
  min: number;
  max: number;
}

export interface ServeLoadOptions {
  /** The server, e.g. http://127.0.0.1:8080 (a trailing /v1 is fine). */
  url: string;
  /** Model name to send; the first of GET /v1/models when absent. */
  model?: string;
  endpoint: 'completions' | 'chat';
  requests: number;
  /** Most requests in flight (default: 1 without --rate, unbounded with it). */
  concurrency?: number;
  /** Requests per second, Poisson arrivals (default: as fast as concurrency allows). */
  rate?: number;
  promptTokens: LengthRange;
  outputTokens: LengthRange;
  ignoreEos: boolean;
  prompt: 'ids' | 'text';
  temperature: number;
  seed: number;
  /** Requests sent (at the same concurrency) before the measured run, e.g. to warm up graphs. */
  warmup: number;
  /** Per-request limit. */
  timeoutMs: number;
  onProgress?: (p: LoadProgress) => void;
}

export interface LoadProgress {
  done: number;
  failed: number;
  inFlight: number;
  total: number;
  outputTokens: number;
  elapsedS: number;
}

interface RequestRecord {
  ok: boolean;
  error?: string;
  promptTokens: number;
  outputTokens: number;
  ttftMs: number;
  itlMs: number[];
  e2eMs: number;
}

export interface Percentiles {
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export interface ServeLoadReport {
  url: string;
  model: string;
  endpoint: string;
  requests: number;
  concurrency: number | null;
  rate: number | null;
  prompt_tokens: LengthRange;
  output_tokens: LengthRange;
  ignore_eos: boolean;
  completed: number;
  failed: number;
  errors: string[];
  duration_s: number;
  total_input_tokens: number;
  total_output_tokens: number;
  request_throughput: number;
  input_throughput: number;
  output_throughput: number;
  total_token_throughput: number;
  ttft_ms: Percentiles;
  itl_ms: Percentiles;
  tpot_ms: Percentiles;
  e2e_ms: Percentiles;
}

/** Linear interpolation between closest ranks (numpy's default). */
export function percentiles(values: readonly number[]): Percentiles {
  if (values.length === 0) return { mean: 0, p50: 0, p90: 0, p99: 0, max: 0 };
  const v = [...values].sort((a, b) => a - b);
  const at = (q: number) => {
    const pos = (v.length - 1) * q;
    const lo = Math.floor(pos);
    const hi = Math.min(lo + 1, v.length - 1);
    return v[lo] + (v[hi] - v[lo]) * (pos - lo);
  };
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return {
    mean: r(v.reduce((s, x) => s + x, 0) / v.length),
    p50: r(at(0.5)),
    p90: r(at(0.9)),
    p99: r(at(0.99)),
    max: r(v[v.length - 1]),
  };
}

/** Ids of ordinary pieces of a Llama vocabulary: past the specials and the 256 byte pieces. */
const FIRST_ID = 259;
const LAST_ID = 31999;

const WORDS = (
  'patient presented with fever cough dyspnea chest pain history hypertension diabetes ' +
  'examination revealed tachycardia blood pressure laboratory findings elevated troponin ' +
  'treatment included aspirin heparin monitoring diagnosis pneumonia infection antibiotics ' +
  'symptoms improved discharge follow-up recommended imaging showed consolidation'
).split(' ');

function lengthIn(range: LengthRange, rand: () => number): number {
  return range.min + Math.floor(rand() * (range.max - range.min + 1));
}

interface Planned {
  prompt: number[] | string;
  maxTokens: number;
}

function plan(options: ServeLoadOptions, count: number, rand: () => number): Planned[] {
  return Array.from({ length: count }, () => {
    const n = lengthIn(options.promptTokens, rand);
    const prompt =
      options.prompt === 'ids'
        ? Array.from({ length: n }, () => FIRST_ID + Math.floor(rand() * (LAST_ID - FIRST_ID + 1)))
        : // About 1.5 tokens per word of this list; the usage says what it really was.
          Array.from(
            { length: Math.max(1, Math.round(n / 1.5)) },
            () => WORDS[Math.floor(rand() * WORDS.length)],
          ).join(' ');
    return { prompt, maxTokens: lengthIn(options.outputTokens, rand) };
  });
}

function apiBase(url: string): string {
  const u = url.replace(/\/+$/, '');
  return u.endsWith('/v1') ? u : `${u}/v1`;
}

/** The text a chunk carries (completions: text; chat: delta.content), '' for none. */
function chunkText(chunk: { choices?: { text?: string; delta?: { content?: string } }[] }): string {
  const c = chunk.choices?.[0];
  return c?.text ?? c?.delta?.content ?? '';
}

async function runOne(
  options: ServeLoadOptions,
  base: string,
  model: string,
  p: Planned,
): Promise<RequestRecord> {
  const chat = options.endpoint === 'chat';
  const body = {
    model,
    ...(chat
      ? { messages: [{ role: 'user', content: p.prompt as string }], max_completion_tokens: p.maxTokens }
      : { prompt: p.prompt, max_tokens: p.maxTokens }),
    max_tokens: p.maxTokens,
    temperature: options.temperature,
    ignore_eos: options.ignoreEos,
    stream: true,
    stream_options: { include_usage: true },
  };
  const start = performance.now();
  const record: RequestRecord = {
    ok: false,
    promptTokens: typeof p.prompt === 'string' ? 0 : p.prompt.length,
    outputTokens: 0,
    ttftMs: 0,
    itlMs: [],
    e2eMs: 0,
  };
  const signal = AbortSignal.timeout(options.timeoutMs);
  try {
    const res = await fetch(`${base}/${chat ? 'chat/completions' : 'completions'}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal,
    });
    if (!res.ok || !res.body) {
      record.error = `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`;
      return record;
    }
    const decoder = new TextDecoder();
    let buffer = '';
    let last = 0;
    let chunks = 0;
    let usage: { prompt_tokens?: number; completion_tokens?: number } | undefined;
    for await (const bytes of res.body as AsyncIterable<Uint8Array>) {
      const now = performance.now();
      buffer += decoder.decode(bytes, { stream: true });
      let end = buffer.indexOf('\n');
      while (end >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        end = buffer.indexOf('\n');
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message ?? JSON.stringify(chunk.error));
        if (chunk.usage) usage = chunk.usage;
        if (chunkText(chunk) === '') continue;
        chunks++;
        if (chunks === 1) record.ttftMs = now - start;
        else record.itlMs.push(now - last);
        last = now;
      }
    }
    record.e2eMs = performance.now() - start;
    record.outputTokens = usage?.completion_tokens ?? chunks;
    if (usage?.prompt_tokens !== undefined) record.promptTokens = usage.prompt_tokens;
    record.ok = chunks > 0;
    if (!record.ok) record.error = 'the stream carried no text';
  } catch (err) {
    record.error = (err as Error).message;
  }
  return record;
}

/** Runs `plans` at the options' concurrency and rate; records come back in plan order. */
async function drive(
  options: ServeLoadOptions,
  base: string,
  model: string,
  plans: Planned[],
  rand: () => number,
  progress?: (done: RequestRecord[], inFlight: number) => void,
): Promise<RequestRecord[]> {
  const limit = options.concurrency ?? (options.rate === undefined ? 1 : plans.length);
  const records: RequestRecord[] = new Array(plans.length);
  const finished: RequestRecord[] = [];
  let inFlight = 0;
  const slotFreed: (() => void)[] = [];
  const running: Promise<void>[] = [];
  for (let i = 0; i < plans.length; i++) {
    if (options.rate !== undefined && i > 0) await sleep((-Math.log(1 - rand()) / options.rate) * 1000);
    while (inFlight >= limit) await new Promise<void>((r) => slotFreed.push(r));
    inFlight++;
    running.push(
      runOne(options, base, model, plans[i]).then((r) => {
        records[i] = r;
        finished.push(r);
        inFlight--;
        progress?.(finished, inFlight);
        slotFreed.shift()?.();
      }),
    );
  }
  await Promise.all(running);
  return records;
}

export async function runServeLoad(options: ServeLoadOptions): Promise<ServeLoadReport> {
  if (options.endpoint === 'chat' && options.prompt === 'ids')
    throw new Error('chat prompts are text: use --prompt text with --endpoint chat');
  const base = apiBase(options.url);
  let model = options.model;
  if (model === undefined) {
    const res = await fetch(`${base}/models`, { signal: AbortSignal.timeout(30_000) });
    if (!res.ok) throw new Error(`GET ${base}/models answered ${res.status}; give --model`);
    model = ((await res.json()) as { data: { id: string }[] }).data[0]?.id;
    if (!model) throw new Error(`GET ${base}/models lists no model; give --model`);
  }
  const rand = rng(options.seed);
  if (options.warmup > 0) {
    const warm = await drive(
      { ...options, rate: undefined },
      base,
      model,
      plan(options, options.warmup, rand),
      rand,
    );
    const bad = warm.find((r) => !r.ok);
    if (bad) throw new Error(`a warm-up request failed: ${bad.error}`);
  }
  const plans = plan(options, options.requests, rand);
  const started = performance.now();
  let outputTokens = 0;
  let lastDone: RequestRecord[] = [];
  let lastInFlight = 0;
  const tick = () =>
    options.onProgress?.({
      done: lastDone.filter((r) => r.ok).length,
      failed: lastDone.filter((r) => !r.ok).length,
      inFlight: lastInFlight,
      total: plans.length,
      outputTokens,
      elapsedS: (performance.now() - started) / 1000,
    });
  const timer = setInterval(tick, 1000);
  let records: RequestRecord[];
  try {
    records = await drive(options, base, model, plans, rand, (done, inFlight) => {
      lastDone = done;
      lastInFlight = inFlight;
      outputTokens = done.reduce((s, r) => s + r.outputTokens, 0);
    });
  } finally {
    clearInterval(timer);
  }
  tick();
  const durationS = (performance.now() - started) / 1000;
  const ok = records.filter((r) => r.ok);
  const input = ok.reduce((s, r) => s + r.promptTokens, 0);
  const output = ok.reduce((s, r) => s + r.outputTokens, 0);
  const rate = (x: number) => Math.round((x / durationS) * 100) / 100;
  return {
    url: options.url,
    model,
    endpoint: options.endpoint,
    requests: options.requests,
    concurrency: options.concurrency ?? null,
    rate: options.rate ?? null,
    prompt_tokens: options.promptTokens,
    output_tokens: options.outputTokens,
    ignore_eos: options.ignoreEos,
    completed: ok.length,
    failed: records.length - ok.length,
    errors: [...new Set(records.filter((r) => !r.ok).map((r) => r.error ?? 'unknown'))].slice(0, 5),
    duration_s: Math.round(durationS * 1000) / 1000,
    total_input_tokens: input,
    total_output_tokens: output,
    request_throughput: rate(ok.length),
    input_throughput: rate(input),
    output_throughput: rate(output),
    total_token_throughput: rate(input + output),
    ttft_ms: percentiles(ok.map((r) => r.ttftMs)),
    itl_ms: percentiles(ok.flatMap((r) => r.itlMs)),
    tpot_ms: percentiles(
      ok.filter((r) => r.outputTokens > 1).map((r) => (r.e2eMs - r.ttftMs) / (r.outputTokens - 1)),
    ),
    e2e_ms: percentiles(ok.map((r) => r.e2eMs)),
  };
}

/** The report as a table, in vLLM's benchmark_serving layout. */
export function formatServeReport(r: ServeLoadReport): string {
  const row = (name: string, value: string | number) => `${name.padEnd(40)}${value}`;
  const rule = (title: string) => {
    const left = Math.floor((48 - title.length) / 2);
    return `${'-'.repeat(left)} ${title} ${'-'.repeat(48 - title.length - left)}`;
  };
  const block = (title: string, p: Percentiles) => [
    rule(title),
    row(`Mean ${title} (ms):`, p.mean.toFixed(2)),
    row(`Median ${title} (ms):`, p.p50.toFixed(2)),
    row(`P90 ${title} (ms):`, p.p90.toFixed(2)),
    row(`P99 ${title} (ms):`, p.p99.toFixed(2)),
  ];
  return [
    '============ Serving Benchmark Result ============',
    row('Endpoint:', `${r.url} (${r.endpoint}, model ${r.model})`),
    row(
      'Concurrency / rate:',
      `${r.concurrency ?? 'unbounded'} / ${r.rate === null ? 'as fast as possible' : `${r.rate} req/s`}`,
    ),
    row('Successful requests:', r.completed),
    row('Failed requests:', r.failed),
    row('Benchmark duration (s):', r.duration_s.toFixed(2)),
    row('Total input tokens:', r.total_input_tokens),
    row('Total generated tokens:', r.total_output_tokens),
    row('Request throughput (req/s):', r.request_throughput.toFixed(2)),
    row('Output token throughput (tok/s):', r.output_throughput.toFixed(2)),
    row('Total token throughput (tok/s):', r.total_token_throughput.toFixed(2)),
    ...block('TTFT', r.ttft_ms),
    ...block('TPOT', r.tpot_ms),
    ...block('ITL', r.itl_ms),
    ...block('E2E', r.e2e_ms),
    '==================================================',
    ...(r.errors.length > 0 ? [`errors: ${r.errors.join(' | ')}`] : []),
  ].join('\n');
}
