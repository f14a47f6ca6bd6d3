// `medcluster up` as a user runs it: a coordinator and tp x pp worker processes on this machine,
// queried through the public gRPC API by the CLI client, the project's TypeScript client and a
// Python client generated from proto/ with grpcio-tools.

import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type * as grpc from '@grpc/grpc-js';
import { InferenceClient, type inferenceV1 } from '@medcluster/proto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  REPO,
  reflectedServices,
  runCli,
  startCli,
  startUp,
  stopAll,
  waitForStderr,
} from './harness/index.js';
import { testModel } from './models.js';

const run = promisify(execFile);
/** Debian's interpreter: python3-grpcio and python3-grpc-tools load only there. */
const PYTHON = '/usr/bin/python3';

const INVALID_ARGUMENT = 3;

describe('medcluster up (tp=2 x pp=2) and its public gRPC API', () => {
  let modelDir: string;
  let address: string;
  let client: InferenceClient;

  beforeAll(async () => {
    modelDir = await testModel();
    ({ grpc: address } = await startUp(['--model', modelDir, '--tp', '2', '--pp', '2']));
    client = new InferenceClient(address);
  });
  afterAll(async () => {
    client?.close();
    await stopAll();
  });

  test('`medcluster generate --server` prints what one process generates', async () => {
    const prompt = 'The patient presented with';
    const [remote, local] = await Promise.all([
      runCli(['generate', '--server', address, '--prompt', prompt, '--max-tokens', '8']),
      runCli(['generate', '--model', modelDir, '--prompt', prompt, '--max-tokens', '8']),
    ]);
    expect(remote.code, remote.stderr).toBe(0);
    expect(local.code, local.stderr).toBe(0);
    expect(remote.stdout.length).toBeGreaterThan(1);
    expect(remote.stdout).toBe(local.stdout);
  });

  test('Generate reports usage, timing and finish reason; concurrent requests are batched and all finish', async () => {
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) => client.generate({ text: `Case ${i}: the patient`, maxTokens: 5 })),
    );
    for (const r of results) {
      expect(r.tokenIds).toHaveLength(r.usage?.completionTokens as number);
      expect(['FINISH_REASON_LENGTH', 'FINISH_REASON_EOS']).toContain(r.finishReason);
      expect(r.usage?.promptTokens).toBeGreaterThan(3);
      const t = r.timing as inferenceV1.Timing__Output;
      expect(t.totalMs).toBeGreaterThan(0);
      expect(t.timeToFirstTokenMs).toBeCloseTo(t.queueMs + t.prefillMs, 6);
      expect(t.totalMs).toBeCloseTo(t.timeToFirstTokenMs + t.decodeMs, 6);
    }
    expect(results.some((r) => r.finishReason === 'FINISH_REASON_LENGTH')).toBe(true);
  });

  test('the stream carries exactly the unary ids and text', async () => {
    const request = { text: 'The differential diagnosis includes', maxTokens: 24 };
    const unary = await client.generate(request);
    const ids: number[] = [];
    let text = '';
    for await (const m of client.generateStream(request)) {
      ids.push(...m.tokenIds);
      text += m.text;
    }
    expect(ids).toEqual(unary.tokenIds);
    expect(text).toBe(unary.text);
  });

  test('a seeded request samples the same tokens alone and batched; n = 4 gives four continuations', async () => {
    const request = {
      text: 'Symptoms of anemia include',
      maxTokens: 12,
      temperature: { value: 1 },
      seed: { value: 2024 },
    };
    const alone = await client.generate(request);
    const [batched] = await Promise.all([
      client.generate(request),
      client.generate({ ...request, seed: { value: 7 } }),
      client.generate({ text: 'Another prompt entirely', maxTokens: 12, temperature: { value: 0.8 } }),
    ]);
    expect(batched.tokenIds).toEqual(alone.tokenIds);
    const four = await client.generate({ ...request, n: { value: 4 } });
    expect(four.choices).toHaveLength(4);
    expect(new Set(four.choices.map((c) => c.tokenIds.join())).size).toBe(4);
    expect(four.usage?.completionTokens).toBe(four.choices.reduce((n, c) => n + c.tokenIds.length, 0));
  });

  test('Tokenize and GetModelInfo describe the served model by its served name', async () => {
    const tokens = await client.tokenize({ text: 'Hello world', addBos: true });
    expect(tokens.ids).toEqual([1, 15043, 3186]);
    expect(tokens.pieces).toEqual(['<s>', '▁Hello', '▁world']);
    const info = await client.getModelInfo();
    expect(info).toMatchObject({ modelName: 'meditron-70b-awq', vocabRows: 32019, tp: 2, pp: 2 });
    expect(info.config?.numLayers).toBe(4);
    expect(info.workers).toHaveLength(4);
  });

  test('bad requests get INVALID_ARGUMENT naming the field, and the server keeps serving', async () => {
    const bad = async (request: inferenceV1.GenerateRequest) => {
      const err = (await client.generate(request).catch((e) => e)) as grpc.ServiceError;
      expect(err.code, err.details).toBe(INVALID_ARGUMENT);
      return err.details;
    };
    expect(await bad({})).toMatch(/^prompt/);
    expect(await bad({ text: '' })).toMatch(/empty/);
    expect(await bad({ tokenIds: { ids: [1, 32019] } })).toMatch(
      /token id 32019 is outside the model's 32019 embedding rows/,
    );
    expect(await bad({ text: 'word '.repeat(5000), maxTokens: 10 })).toMatch(/exceeds the context of 4096/);
    expect(await bad({ text: 'hi', temperature: { value: Number.NaN } })).toMatch(/^temperature/);
    expect(await bad({ text: 'hi', topP: { value: 0 } })).toMatch(/^top_p/);
    expect(await bad({ text: 'hi', n: { value: 0 } })).toMatch(/^n must be/);
    expect(await bad({ text: 'hi', stop: new Array(17).fill('.') })).toMatch(/^stop:/);
    const ok = await client.generate({ text: 'still there?', maxTokens: 2 });
    expect(ok.tokenIds.length).toBeGreaterThan(0);
  });

  test('every worker serves /health, /ready and its own metrics, labelled with its place', async () => {
    const info = await client.getModelInfo();
    await client.generate({ text: 'Warm the pipeline up', maxTokens: 3 });
    for (const w of info.workers) {
      expect(w.metricsUrl, w.id).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      const base = w.metricsUrl.replace(/\/metrics$/, '');
      expect((await fetch(`${base}/health`)).status).toBe(200);
      expect((await fetch(`${base}/ready`)).status).toBe(200);
      const text = await (await fetch(w.metricsUrl)).text();
      const labels = `stage="${w.stage}",rank="${w.tpRank}"`;
      expect(text).toMatch(new RegExp(`medcluster_worker_steps_total\\{[^}]*${labels}[^}]*\\} [1-9]`));
      expect(text).toMatch(/medcluster_worker_state\{[^}]*state="ready"[^}]*\} 1/);
      expect(text).toMatch(/medcluster_worker_kv_cache_blocks\{[^}]*\} [1-9]/);
      expect(text).toMatch(/medcluster_worker_load_bytes_total\{[^}]*\} [1-9]/);
      const direction = w.stage === 0 ? 'sent' : 'received';
      expect(text).toMatch(
        new RegExp(`medcluster_worker_activation_bytes_total\\{[^}]*direction="${direction}"[^}]*\\} [1-9]`),
      );
      expect(w.kvBlocks).toBeGreaterThan(0);
      // tp = 2 on CPU: every rank's all-reduces go through the host, and are timed.
      expect(text).toMatch(/medcluster_worker_collective_seconds_count\{[^}]*op="all_reduce"[^}]*\} [1-9]/);
    }
  });

  test('health reports SERVING, and reflection lists the public services', async () => {
    expect((await client.healthCheck('')).status).toBe('SERVING');
    expect((await client.healthCheck('medcluster.v1.Inference')).status).toBe('SERVING');
    expect(await reflectedServices(address)).toEqual(
      expect.arrayContaining(['medcluster.v1.Inference', 'grpc.health.v1.Health']),
    );
  });

  test('a Python client generated from proto/ streams the ids and text Generate returns', async () => {
    const out = await mkdtemp(join(tmpdir(), 'medcluster-py-'));
    try {
      // Exactly the README's commands.
      await run(
        PYTHON,
        [
          '-m',
          'grpc_tools.protoc',
          '-I',
          'proto',
          `--python_out=${out}`,
          `--grpc_python_out=${out}`,
          'proto/medcluster/v1/inference.proto',
        ],
        { cwd: REPO, timeout: 60_000 },
      );
      const prompt = 'Treatment of community-acquired pneumonia';
      const { stdout } = await run(
        PYTHON,
        ['proto/examples/python/generate.py', address, prompt, '--max-tokens', '16', '--json'],
        { cwd: REPO, env: { ...process.env, PYTHONPATH: out }, timeout: 120_000 },
      );
      const streamed = JSON.parse(stdout.trim().split('\n').at(-1) as string);
      const unary = await client.generate({ text: prompt, maxTokens: 16, temperature: { value: 0 } });
      expect(streamed.token_ids).toEqual(unary.tokenIds);
      expect(streamed.text).toBe(unary.text);
      expect(streamed.finish_reason).toBe(unary.finishReason);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});

describe('medcluster up under load with a cache too small for it', () => {
  test('64 staggered requests longer than a step, with preemption, each get exactly their solo tokens', async () => {
    const modelDir = await testModel();
    // 40 blocks of 16 = 640 positions, against 64 requests of ~50-90 prompt tokens + 8 generated.
    const { grpc: address, up } = await startUp([
      '--model',
      modelDir,
      '--pp',
      '2',
      '--kv-blocks',
      '40',
      '--max-batch-tokens',
      '32',
      '--max-running',
      '64',
    ]);
    const client = new InferenceClient(address);
    try {
      const prompts = Array.from(
        { length: 64 },
        (_, i) =>
          `Case ${i}: a ${20 + i}-year-old patient presents with ${['fever', 'cough', 'chest pain', 'fatigue'][i % 4]} ` +
          `for ${i + 2} days, ${'and worsening symptoms '.repeat(1 + (i % 5))}. Assessment:`,
      );
      const request = (text: string) => ({ text, maxTokens: 8, temperature: { value: 0 } });
      const concurrent = await Promise.all(
        prompts.map(
          (p, i) =>
            new Promise<inferenceV1.GenerateResponse__Output>((resolve, reject) =>
              setTimeout(() => client.generate(request(p)).then(resolve, reject), i * 15),
            ),
        ),
      );
      for (const r of concurrent) expect(r.usage?.promptTokens).toBeGreaterThan(32);
      const preemptions = (up.stderr().match(/preempted/g) ?? []).length;
      expect(preemptions, 'the cache was meant to be too small for the load').toBeGreaterThan(0);
      // Then each request alone, one at a time.
      for (const [i, p] of prompts.entries()) {
        const solo = await client.generate(request(p));
        expect(concurrent[i].tokenIds, `request ${i}`).toEqual(solo.tokenIds);
        expect(concurrent[i].text).toBe(solo.text);
      }
    } finally {
      client.close();
      await stopAll();
    }
  });
});

describe('medcluster up configured from the environment', () => {
  test('MEDCLUSTER_CONFIG and MEDCLUSTER_<FLAG> set up, and its workers do not inherit them', async () => {
    const modelDir = await testModel();
    const dir = await mkdtemp(join(tmpdir(), 'medcluster-settings-'));
    try {
      // `tp` is up's setting alone: a worker reading this file would refuse it and never start.
      const config = join(dir, 'settings.json');
      await writeFile(config, JSON.stringify({ tp: 2, threads: 1, 'kv-blocks': 64 }));
      const up = startCli(['up'], {
        env: {
          MEDCLUSTER_CONFIG: config,
          MEDCLUSTER_MODEL: modelDir,
          MEDCLUSTER_GRPC_PORT: '0',
          MEDCLUSTER_HTTP_PORT: '0',
        },
      });
      const [, port] = await waitForStderr(up.child, /serving .* on 127\.0\.0\.1:(\d+)/, 90_000);
      const client = new InferenceClient(`127.0.0.1:${port}`);
      try {
        const info = await client.getModelInfo();
        expect(info.workers.map((w) => w.tpRank).sort()).toEqual([0, 1]);
        const reply = await client.generate({ text: 'The patient', maxTokens: 3, temperature: { value: 0 } });
        expect(reply.tokenIds).toHaveLength(3);
      } finally {
        client.close();
      }
    } finally {
      await stopAll();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('structured logs', () => {
  test("each request's id follows it through every stage and rank, and no line names two requests", async () => {
    const modelDir = await testModel();
    const { grpc: address, up } = await startUp([
      '--model',
      modelDir,
      '--tp',
      '2',
      '--pp',
      '2',
      '--log-format',
      'json',
      '--log-level',
      'debug',
    ]);
    const client = new InferenceClient(address);
    try {
      const ids = ['req-alpha-7f3a', 'req-beta-91c2'];
      await Promise.all(
        ids.map((requestId, i) =>
          client.generate({ text: `Case ${i}: chest pain`, maxTokens: 4, requestId }),
        ),
      );
      await new Promise((r) => setTimeout(r, 200)); // let the last lines reach the pipe
      const lines = up
        .stderr()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(
        lines.every(
          (l) => typeof l.time === 'string' && typeof l.level === 'string' && typeof l.msg === 'string',
        ),
      ).toBe(true);
      const workers = new Set(lines.map((l) => l.worker).filter((w) => w !== undefined));
      expect(workers).toEqual(new Set(['w0', 'w1', 'w2', 'w3']));
      for (const id of ids) {
        const mine = lines.filter((l) => l.requestId === id);
        expect(new Set(mine.map((l) => l.worker ?? 'coordinator')), id).toEqual(
          new Set(['coordinator', 'w0', 'w1', 'w2', 'w3']),
        );
        expect(mine.some((l) => l.msg === 'request finished')).toBe(true);
      }
      const raw = up.stderr().split('\n');
      expect(raw.filter((l) => l.includes(ids[0]) && l.includes(ids[1]))).toEqual([]);
    } finally {
      client.close();
      await stopAll();
    }
  });
});

describe('a worker killed mid-stream', () => {
  test.each([
    { layout: ['--pp', '2'], stage: 'stage 1 (w1)' },
    { layout: ['--tp', '2'], stage: 'stage 0 (w0, w1)' },
  ])(
    '$layout: streamed requests fail fast and retryable, the others re-run; $stage comes back and serving resumes',
    async ({ layout, stage }) => {
      const modelDir = await testModel();
      const { grpc: address, up } = await startUp(['--model', modelDir, ...layout, '--max-running', '2']);
      const client = new InferenceClient(address);
      try {
        const info = await client.getModelInfo();
        expect(info.workers).toHaveLength(2);
        // Two streams hold the two running slots; three requests queue behind them.
        const streams = [0, 1].map(async (i) => {
          const got: number[] = [];
          try {
            for await (const m of client.generateStream({ text: `Case ${i}: a long answer`, maxTokens: 400 }))
              got.push(...m.tokenIds);
            return { got, error: undefined };
          } catch (e) {
            return { got, error: e as grpc.ServiceError, at: performance.now() };
          }
        });
        const queuedPrompts = [
          'Queued one: the patient',
          'Queued two: the history',
          'Queued three: the exam',
        ];
        const queued = queuedPrompts.map((text) => client.generate({ text, maxTokens: 6 }).catch((e) => e));
        // Let the streams get going, then kill stage 1's worker outright.
        await new Promise((r) => setTimeout(r, 800));
        // Only this up's worker: other checkouts' tests may run their own w1 at the same time.
        const { stdout } = await run('pgrep', ['-P', String(up.child.pid), '-f', 'worker --id w1 --listen']);
        const killedAt = performance.now();
        for (const pid of stdout.trim().split('\n').map(Number)) process.kill(pid, 'SIGKILL');
        const ended = await Promise.all(streams);
        for (const s of ended) {
          expect(s.got.length, 'the stream had tokens before the kill').toBeGreaterThan(0);
          expect(s.error?.code, s.error?.details).toBe(14); // UNAVAILABLE
          expect(s.error?.details).toMatch(
            /(worker w1 exited \(SIGKILL\)|a worker was lost: .*127\.0\.0\.1:\d+).*retry/,
          );
          expect((s.at as number) - killedAt, 'kill -9 to the stream error (ms)').toBeLessThan(5000);
        }
        expect((await client.healthCheck('')).status).toBe('NOT_SERVING');
        // The queued requests had streamed nothing: they run once w1 is back, with their solo tokens.
        const results = (await Promise.all(queued)) as inferenceV1.GenerateResponse__Output[];
        for (const r of results) expect(r.tokenIds?.length, String(r)).toBeGreaterThan(0);
        let servingAt = 0;
        for (let i = 0; i < 200 && !servingAt; i++) {
          if ((await client.healthCheck('')).status === 'SERVING') servingAt = performance.now();
          else await new Promise((r) => setTimeout(r, 100));
        }
        expect(servingAt, 'health came back to SERVING').toBeGreaterThan(0);
        expect(servingAt - killedAt, 'kill -9 to serving again (ms)').toBeLessThan(60_000);
        for (const [i, text] of queuedPrompts.entries()) {
          const solo = await client.generate({ text, maxTokens: 6 });
          expect(results[i].tokenIds).toEqual(solo.tokenIds);
        }
        expect(up.stderr()).toContain(`restarting ${stage}`);
        const after = await client.getModelInfo();
        expect(after.workers.map((w) => w.state)).toEqual(['ready', 'ready']);
        console.log(
          `worker loss (${layout.join(' ')}): kill -9 to stream errors ${Math.max(...ended.map((s) => (s.at as number) - killedAt)).toFixed(0)} ms, ` +
            `to serving again ${(servingAt - killedAt).toFixed(0)} ms; 2 streamed requests failed, 3 queued ones re-ran`,
        );
      } finally {
        client.close();
        await stopAll();
      }
    },
  );
});
