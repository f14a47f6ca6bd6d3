// Fuzzed HTTP bodies against a running `medcluster up`, over real sockets, on every route that
// takes one (OpenAI: /v1/chat/completions, /v1/completions; TGI: /generate, /generate_stream,
// /): random bytes, truncated JSON, valid bodies with a field given a value of the wrong type,
// odd top-level values (deep nesting, duplicate keys, lone surrogates, __proto__), bodies over
// the size limit (just over, and 4x over while the sender still writes), and requests cut off
// mid-body on the socket. Each case must get a response within its deadline, a 4xx in its API's
// error convention (or a 200 when the mutation happened to stay valid), never a 5xx or a dropped
// connection; every kind of 4xx the routes document is reached; and afterwards the server still
// serves, with no request or KV block left over.
// MEDCLUSTER_FUZZ_CASES sets the cases per route (default 160).

import { connect } from 'node:net';
import { rng } from '@medcluster/kernels/testing';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type CliProcess, startUp, stopAll } from './harness/index.js';
import { testModel } from './models.js';

// biome-ignore lint/suspicious/noExplicitAny: fuzzed JSON is any shape
type Json = any;

const BODY_LIMIT = 1 << 20;
const CASES = Number(process.env.MEDCLUSTER_FUZZ_CASES ?? 160);

let base = '';
let port = 0;
let up: CliProcess;

beforeAll(async () => {
  const modelDir = await testModel();
  ({
    up,
    httpPort: port,
    http: base,
  } = await startUp([
    '--model',
    modelDir,
    // A mutation that stays valid generates at most a few tokens.
    '--default-max-tokens',
    '3',
    '--http-max-body-bytes',
    String(BODY_LIMIT),
  ]));
});
afterAll(() => stopAll());

interface Route {
  path: string;
  style: 'openai' | 'tgi';
  valid: Json;
}

const ROUTES: Route[] = [
  {
    path: '/v1/chat/completions',
    style: 'openai',
    valid: {
      model: 'meditron-70b-awq',
      messages: [{ role: 'user', content: 'What causes anemia?' }],
      max_tokens: 1,
      temperature: 0.5,
      stop: ['\n'],
      logprobs: true,
      top_logprobs: 2,
    },
  },
  {
    path: '/v1/completions',
    style: 'openai',
    valid: { prompt: 'The patient presented with', max_tokens: 1, n: 2, logprobs: 1, seed: 3, stream: false },
  },
  {
    path: '/generate',
    style: 'tgi',
    valid: {
      inputs: 'The patient',
      parameters: { max_new_tokens: 1, top_k: 5, do_sample: true, details: true },
    },
  },
  {
    path: '/generate_stream',
    style: 'tgi',
    valid: { inputs: 'The patient', parameters: { max_new_tokens: 1, stop: ['.'] } },
  },
  {
    path: '/',
    style: 'tgi',
    valid: { inputs: 'The patient', parameters: { max_new_tokens: 1 }, stream: false },
  },
];

/** Deterministic: the same cases every run (a failure names its case number). */
/** kernels' seeded generator, with the draws the fuzzer makes. */
function prng(seed: number) {
  const next = rng(seed);
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)],
  };
}
type Rand = ReturnType<typeof prng>;

/** Values of every JSON type and the edges of each. */
const WRONG: Json[] = [
  null,
  true,
  false,
  0,
  -1,
  0.5,
  1e308,
  -1e308,
  2 ** 53,
  '',
  'x',
  'NaN',
  '-Infinity',
  '\u0000',
  'y'.repeat(2000),
  [],
  [1, 'a', null],
  [[[]]],
  {},
  { a: { b: {} } },
  { role: 'user' },
];

/** Every path to a value inside `v` (object keys and array indices). */
function paths(v: Json, at: (string | number)[] = []): (string | number)[][] {
  if (v === null || typeof v !== 'object') return [at];
  const keys = Array.isArray(v) ? v.map((_, i) => i) : Object.keys(v);
  return [at, ...keys.flatMap((k) => paths(v[k], [...at, k]))];
}

function withValue(v: Json, path: (string | number)[], value: Json): Json {
  if (path.length === 0) return value;
  const copy = Array.isArray(v) ? [...v] : { ...v };
  copy[path[0]] = withValue(v[path[0]], path.slice(1), value);
  return copy;
}

function withoutKey(v: Json, path: (string | number)[]): Json {
  if (path.length === 1 && v && typeof v === 'object' && !Array.isArray(v)) {
    const { [path[0]]: _gone, ...rest } = v;
    return rest;
  }
  if (path.length === 0 || v === null || typeof v !== 'object') return v;
  const copy = Array.isArray(v) ? [...v] : { ...v };
  copy[path[0]] = withoutKey(v[path[0]], path.slice(1));
  return copy;
}

type Kind = 'random' | 'truncated' | 'mistyped' | 'missing' | 'odd' | 'oversized';
const KINDS: Kind[] = ['random', 'truncated', 'mistyped', 'mistyped', 'missing', 'odd'];

/** One fuzzed body for the route, and what kind of case it is. */
function fuzzedBody(route: Route, r: Rand, i: number): { kind: Kind; body: string } {
  const kind: Kind = i % 60 === 59 ? 'oversized' : KINDS[i % KINDS.length];
  const valid = JSON.stringify(route.valid);
  switch (kind) {
    case 'random': {
      const bytes = Array.from({ length: r.int(200) }, () =>
        r.next() < 0.7 ? String.fromCharCode(32 + r.int(95)) : String.fromCharCode(r.int(0xffff)),
      );
      return { kind, body: bytes.join('') };
    }
    case 'truncated':
      return { kind, body: valid.slice(0, r.int(valid.length)) };
    case 'mistyped': {
      const path = r.pick(paths(route.valid));
      return { kind, body: JSON.stringify(withValue(route.valid, path, r.pick(WRONG))) };
    }
    case 'missing':
      return {
        kind,
        body: JSON.stringify(withoutKey(route.valid, r.pick(paths(route.valid).filter((p) => p.length > 0)))),
      };
    case 'odd':
      return {
        kind,
        body: r.pick([
          '[]',
          '"just a string"',
          '12345',
          'null',
          'true',
          `${'['.repeat(20_000)}${']'.repeat(20_000)}`,
          `{"a":${'{"a":'.repeat(5_000)}1${'}'.repeat(5_000)}}`,
          `${valid.slice(0, -1)},"prompt":5,"inputs":5,"messages":5}`,
          '{"__proto__":{"max_tokens":1},"constructor":{"prototype":{}}}',
          `{"prompt":"\\ud800","inputs":"\\udfff","messages":[{"role":"user","content":"\\ud800"}]}`,
          `{"prompt":[${Array.from({ length: 300 }, (_, k) => k).join(',')}],"inputs":"${'word '.repeat(300)}"}`,
          `${valid}garbage`,
          ` \t\n${valid}\n `,
        ]),
      };
    case 'oversized':
      return { kind, body: JSON.stringify({ ...route.valid, prompt: 'z'.repeat(BODY_LIMIT), inputs: 'z' }) };
  }
}

const CONTENT_TYPES = ['application/json', 'text/plain', 'application/x-www-form-urlencoded', undefined];

/** The body follows its API's error convention. */
function errorShape(style: Route['style'], body: Json): boolean {
  if (style === 'openai')
    return (
      typeof body?.error?.message === 'string' && typeof body.error.type === 'string' && 'param' in body.error
    );
  return typeof body?.error === 'string' && typeof body.error_type === 'string';
}

/** Sends a body that stops after `sent` of its declared bytes, then closes: the server must cope. */
function cutOff(path: string, declared: number, sent: string): Promise<void> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1', () => {
      socket.write(
        `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${declared}\r\n\r\n${sent}`,
      );
      setTimeout(() => socket.destroy(), 50);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => resolve());
  });
}

describe('fuzzed HTTP bodies', () => {
  test(
    'every route answers every case with a clear 4xx (or a 200), never a 5xx, a crash or a hang; the server keeps serving',
    async () => {
      const r = prng(20261201);
      const report: string[] = [];
      const reached = new Set<number>();
      for (const route of ROUTES) {
        const statuses = new Map<number, number>();
        for (let i = 0; i < CASES; i++) {
          const { kind, body } = fuzzedBody(route, r, i);
          const type = r.pick(CONTENT_TYPES);
          const what = `${route.path} case ${i} (${kind}): ${body.slice(0, 160)}`;
          let res: Response;
          try {
            res = await fetch(`${base}${route.path}`, {
              method: 'POST',
              headers: type ? { 'content-type': type } : {},
              body,
              signal: AbortSignal.timeout(20_000),
            });
          } catch (err) {
            throw new Error(`${what}: no response (${(err as Error).message})`);
          }
          const text = await res.text();
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
          reached.add(res.status);
          expect(res.status, what).toBeLessThan(500);
          if (res.status !== 200) {
            expect([400, 413, 422, 429], what).toContain(res.status);
            expect(errorShape(route.style, JSON.parse(text)), `${what}: ${text.slice(0, 300)}`).toBe(true);
          }
          if (kind === 'oversized') expect(res.status, what).toBe(413);
        }
        // Bodies cut off on the socket: fewer bytes than their Content-Length, then a close.
        const valid = JSON.stringify(route.valid);
        for (let k = 0; k < 10; k++)
          await cutOff(route.path, valid.length + 1 + k * 100, valid.slice(0, r.int(valid.length)));
        // Bodies 4x over the limit: most of one is still being written when the 413 goes out, and
        // its sender must read the 413, not a reset (the server reads the rest and discards it).
        const far = JSON.stringify({ ...route.valid, prompt: 'z'.repeat(4 * BODY_LIMIT), inputs: 'z' });
        for (let k = 0; k < 8; k++) {
          const what = `${route.path} far oversized ${k}`;
          const res = await fetch(`${base}${route.path}`, { method: 'POST', body: far }).catch(
            (err: Error) => {
              throw new Error(`${what}: no response (${err.message}: ${(err.cause as Error)?.message})`);
            },
          );
          expect(res.status, what).toBe(413);
          expect(errorShape(route.style, await res.json()), what).toBe(true);
        }
        report.push(
          `${route.path} ${CASES} (+10 cut off): ${[...statuses]
            .sort(([a], [b]) => a - b)
            .map(([s, n]) => `${s}x${n}`)
            .join(' ')}`,
        );
      }
      // Every rejection the routes document was reached: OpenAI's 400, TGI's 422, and 413.
      for (const status of [400, 413, 422, 200])
        expect(reached, `status ${status} reached`).toContain(status);
      // Still serving, nothing left over.
      expect(up.child.exitCode).toBeNull();
      const ok = await fetch(`${base}/v1/completions`, {
        method: 'POST',
        body: JSON.stringify({ prompt: 'Still serving?', max_tokens: 2 }),
      });
      expect(ok.status).toBe(200);
      expect(((await ok.json()) as Json).usage.completion_tokens).toBe(2);
      let cluster: Json;
      for (let k = 0; k < 50; k++) {
        cluster = await (await fetch(`${base}/cluster`)).json();
        if (cluster.requests_in_flight === 0 && cluster.kv_cache.blocks_used === 0) break;
        await new Promise((res) => setTimeout(res, 100));
      }
      expect(cluster.requests_in_flight).toBe(0);
      expect(cluster.kv_cache.blocks_used).toBe(0);
      expect(up.stderr()).not.toMatch(/internal error|medcluster http: POST/);
      console.log(
        `HTTP fuzz: ${ROUTES.length} routes x ${CASES} cases, 0 crashes, 0 hangs, 0 5xx\n  ${report.join('\n  ')}`,
      );
    },
    Math.max(120_000, CASES * 500),
  ); // a larger MEDCLUSTER_FUZZ_CASES gets the time it needs
});
