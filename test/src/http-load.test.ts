// `medcluster up` under HTTP load, on a model whose embedding table (32017 rows, like Meditron
// 7B's) ends before ChatML's ids: streams whose clients disconnect while queued, mid-prefill
// and decoding leave no KV block used; an overload burst gets 429s while the admitted requests
// finish; `bench serve` measures it; a chat template the model cannot read is a clear 400.
// One server for the file, with one running sequence at a time and a short queue, so each
// stage can be reached by a request on purpose.

import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { runCli, startUp, stopAll } from './harness/index.js';
import { testModel } from './models.js';

let base: string;

// biome-ignore lint/suspicious/noExplicitAny: GET /cluster is checked field by field
type Json = any;

beforeAll(async () => {
  const modelDir = await testModel({ vocabRows: 32017 });
  ({ http: base } = await startUp([
    '--model',
    modelDir,
    '--max-running',
    '1',
    '--max-waiting',
    '4',
    '--max-batch-tokens',
    '16',
    '--kv-blocks',
    '256',
  ]));
});
afterAll(() => stopAll());

const cluster = async (): Promise<Json> => (await fetch(`${base}/cluster`)).json();

async function until(what: string, check: (c: Json) => boolean, timeoutMs = 60_000): Promise<Json> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const c = await cluster();
    if (check(c)) return c;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(c)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const idle = (c: Json) => c.requests_in_flight === 0 && c.kv_cache.blocks_used === 0;

function stream(path: string, body: object, signal: AbortSignal) {
  return fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
}

describe('medcluster up under HTTP load', () => {
  test('streams cancelled by disconnecting queued, mid-prefill and decoding hold no KV blocks once traffic stops', async () => {
    const before = (await cluster()).totals.requests_cancelled;
    const a = new AbortController();
    const b = new AbortController();
    const c = new AbortController();
    try {
      await cancelAtEachStage(a, b, c);
    } finally {
      for (const x of [a, b, c]) x.abort();
    }
    const end = await until('idle', idle);
    expect(end.totals.requests_cancelled).toEqual({
      queued: before.queued + 1,
      prefill: before.prefill + 1,
      decode: before.decode + 1,
    });
    expect(end.kv_cache).toMatchObject({ blocks_used: 0, blocks_total: 256, blocks_free: 256 });
    expect(end).toMatchObject({ sequences_running: 0, sequences_waiting: 0 });
  });

  /** A decodes in the one running slot; B and C wait behind it; C's long prompt prefills in many 16-token steps. */
  async function cancelAtEachStage(a: AbortController, b: AbortController, c: AbortController) {
    const before = (await cluster()).totals.requests_cancelled;
    const resA = await stream(
      '/v1/completions',
      { prompt: 'A', max_tokens: 2000, ignore_eos: true },
      a.signal,
    );
    const reader = (resA.body as ReadableStream<Uint8Array>).getReader();
    reader.closed.catch(() => undefined); // the abort below errors the body: that is the point
    await reader.read(); // its first token: A is decoding
    // Each body is read to its end (an error, once its client leaves), so nothing is left unhandled.
    const drained = (res: Promise<Response>) => res.then((r) => r.text()).catch(() => undefined);
    const resB = drained(stream('/v1/completions', { prompt: 'B', max_tokens: 50 }, b.signal));
    await until('B queued', (s) => s.sequences_waiting === 1);
    const long = 'The patient presented with fever and a productive cough. '.repeat(60);
    const resC = drained(
      stream('/generate_stream', { inputs: long, parameters: { max_new_tokens: 50 } }, c.signal),
    );
    await until('C queued', (s) => s.sequences_waiting === 2);

    b.abort();
    await until('B cancelled while queued', (s) => s.totals.requests_cancelled.queued === before.queued + 1);
    a.abort();
    await until(
      'A cancelled while decoding',
      (s) => s.totals.requests_cancelled.decode === before.decode + 1,
    );
    // C is scheduled once A is gone: leave while its prompt is still being prefilled.
    await until('C running', (s) => s.sequences_running === 1 && s.sequences_waiting === 0);
    c.abort();
    await until('C cancelled mid-prefill', (s) => s.totals.requests_cancelled.prefill === before.prefill + 1);
    await Promise.all([resB, resC]);
  }

  test('an overload burst gets 429s in each convention while the admitted requests finish', async () => {
    const body = (i: number) =>
      i % 2 === 0
        ? ['/v1/completions', { prompt: `Case ${i}:`, max_tokens: 6, ignore_eos: true }]
        : ['/generate', { inputs: `Case ${i}:`, parameters: { max_new_tokens: 6 } }];
    const results = await Promise.all(
      Array.from({ length: 14 }, async (_, i) => {
        const [path, payload] = body(i) as [string, object];
        const res = await fetch(`${base}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(payload),
        });
        return { path, status: res.status, json: (await res.json()) as Json };
      }),
    );
    const refused = results.filter((r) => r.status === 429);
    const served = results.filter((r) => r.status === 200);
    expect(refused.length).toBeGreaterThan(0);
    expect(served.length).toBeGreaterThanOrEqual(5); // one running and four waiting fit
    expect(refused.length + served.length).toBe(results.length);
    for (const r of refused) {
      if (r.path === '/generate')
        expect(r.json).toMatchObject({
          error_type: 'overloaded',
          error: expect.stringMatching(/retry later/),
        });
      else
        expect(r.json.error).toMatchObject({
          code: 'queue_full',
          message: expect.stringMatching(/retry later/),
        });
    }
    for (const r of served) {
      if (r.path === '/generate') expect(r.json.generated_text).toEqual(expect.any(String));
      else expect(r.json.usage.completion_tokens).toBe(6);
    }
    const end = await until('idle', idle);
    expect(end.totals.requests_rejected['queue-full']).toBeGreaterThanOrEqual(refused.length);
  });

  test('`bench serve` measures the server and writes its JSON report', async () => {
    const out = `/tmp/medcluster-bench-serve-${process.pid}.json`;
    const run = await runCli(
      [
        'bench',
        'serve',
        '--url',
        base,
        '--requests',
        '6',
        '--concurrency',
        '2',
        '--prompt-tokens',
        '24-40',
        '--output-tokens',
        '6',
        '--json',
        out,
      ],
      120_000,
    );
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/bench serve: 6\/6 done, 0 failed/);
    expect(run.stdout).toMatch(/Successful requests: +6/);
    const { readFile, rm } = await import('node:fs/promises');
    const report = JSON.parse(await readFile(out, 'utf8'));
    await rm(out, { force: true });
    expect(report).toMatchObject({ completed: 6, failed: 0, total_output_tokens: 36 });
    expect(report.total_input_tokens).toBeGreaterThanOrEqual(6 * 24);
    for (const key of ['ttft_ms', 'itl_ms', 'tpot_ms', 'e2e_ms']) {
      expect(report[key].p50).toBeGreaterThan(0);
      expect(report[key].p99).toBeGreaterThanOrEqual(report[key].p50);
    }
    expect(report.output_throughput).toBeGreaterThan(0);
  });

  test("a chat template whose tokens are past the model's rows is a 400; plain prompts still work", async () => {
    const res = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'Hello' }] }),
    });
    expect(res.status).toBe(400);
    const { error } = (await res.json()) as Json;
    expect(error).toMatchObject({ type: 'invalid_request_error', param: 'messages' });
    expect(error.message).toMatch(/"<\|im_start\|>" \(id 32017\), outside the model's 32017 embedding rows/);
    const tgi = await fetch(`${base}/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ inputs: '<|im_start|>user' }),
    });
    expect(tgi.status).toBe(422);
    expect(((await tgi.json()) as Json).error).toMatch(/^inputs contains the special token "<\|im_start\|>"/);
    const ok = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'Question: what causes anemia?\nAnswer:', max_tokens: 4 }),
    });
    expect(ok.status).toBe(200);
    expect(idle(await cluster())).toBe(true);
  });
});
