// `medcluster up` as a user runs it: a coordinator and tp x pp worker processes on this machine,
// queried through the public gRPC API by the CLI client and by a grpc-js client.

import * as grpc from '@grpc/grpc-js';
import { inferenceClient } from '@medcluster/coordinator';
import { loadHealthProto } from '@medcluster/proto';
import { freePort } from '@medcluster/worker';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { runCli, startCli, stopAll, waitForStderr } from './harness/index.js';
import { testModel } from './models.js';

type Client = ReturnType<typeof inferenceClient>;

function unary<Req, Res>(client: Client, method: string, request: Req): Promise<Res> {
  return new Promise((resolve, reject) =>
    (
      client as unknown as Record<string, (r: Req, cb: (e: grpc.ServiceError | null, v: Res) => void) => void>
    )[method](request, (err, value) => (err ? reject(err) : resolve(value))),
  );
}

describe('medcluster up (tp=2 x pp=2) and its public gRPC API', () => {
  let modelDir: string;
  let address: string;
  let client: Client;
  let up: ReturnType<typeof startCli>;

  beforeAll(async () => {
    modelDir = await testModel();
    const port = await freePort();
    up = startCli([
      'up',
      '--model',
      modelDir,
      '--tp',
      '2',
      '--pp',
      '2',
      '--grpc-port',
      String(port),
      '--threads',
      '1',
    ]);
    await waitForStderr(up.child, /medcluster: serving .* on 127\.0\.0\.1:\d+/, 90_000);
    address = `127.0.0.1:${port}`;
    client = inferenceClient(address);
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

  test('Generate reports usage and finish reason; concurrent requests are batched and all finish', async () => {
    const requests = Array.from({ length: 6 }, (_, i) =>
      unary<
        object,
        {
          text: string;
          tokenIds: number[];
          finishReason: string;
          usage: { promptTokens: number; completionTokens: number };
        }
      >(client, 'Generate', { text: `Case ${i}: the patient`, maxTokens: 5, temperature: { value: 0 } }),
    );
    const results = await Promise.all(requests);
    for (const r of results) {
      expect(r.tokenIds).toHaveLength(r.usage.completionTokens);
      expect(['FINISH_REASON_LENGTH', 'FINISH_REASON_EOS', 'FINISH_REASON_STOP']).toContain(r.finishReason);
      expect(r.usage.promptTokens).toBeGreaterThan(3);
    }
    expect(results.some((r) => r.finishReason === 'FINISH_REASON_LENGTH')).toBe(true);
  });

  test('Tokenize and GetModelInfo describe the served model', async () => {
    const tokens = await unary<object, { ids: number[]; pieces: string[] }>(client, 'Tokenize', {
      text: 'Hello world',
      addBos: true,
    });
    expect(tokens.ids).toEqual([1, 15043, 3186]);
    expect(tokens.pieces).toEqual(['<s>', '▁Hello', '▁world']);
    const info = await unary<
      object,
      { vocabRows: number; tp: number; pp: number; workers: unknown[]; config: { numLayers: number } }
    >(client, 'GetModelInfo', {});
    expect(info).toMatchObject({ vocabRows: 32019, tp: 2, pp: 2, config: { numLayers: 4 } });
    expect(info.workers).toHaveLength(4);
  });

  test('bad requests get INVALID_ARGUMENT with a clear message, and the server keeps serving', async () => {
    const bad = async (request: object) => {
      const err = await unary(client, 'Generate', request).catch((e: grpc.ServiceError) => e);
      expect((err as grpc.ServiceError).code).toBe(grpc.status.INVALID_ARGUMENT);
      return (err as grpc.ServiceError).details;
    };
    expect(await bad({})).toMatch(/no prompt/);
    expect(await bad({ text: '' })).toMatch(/empty/);
    expect(await bad({ tokenIds: { ids: [1, 32019] } })).toMatch(
      /token id 32019 is outside the model's 32019 embedding rows/,
    );
    expect(await bad({ text: 'word '.repeat(5000), maxTokens: 10 })).toMatch(/exceeds the context of 4096/);
    expect(await bad({ text: 'hi', topP: { value: 0 } })).toMatch(/top_p/);
    const ok = await unary<object, { tokenIds: number[] }>(client, 'Generate', {
      text: 'still there?',
      maxTokens: 2,
    });
    expect(ok.tokenIds.length).toBeGreaterThan(0);
  });

  test('health reports SERVING', async () => {
    const { grpc: pkg } = loadHealthProto();
    const health = new pkg.health.v1.Health(address, grpc.credentials.createInsecure());
    const status = await new Promise<{ status: string }>((resolve, reject) =>
      health.Check({ service: '' }, (err: grpc.ServiceError | null, res?: { status: string }) =>
        err ? reject(err) : resolve(res as { status: string }),
      ),
    );
    health.close();
    expect(status.status).toBe('SERVING');
  });
});

describe('a worker that dies mid-request', () => {
  test('fails the requests it held with a clear error; the coordinator stays up and says it is degraded', async () => {
    const modelDir = await testModel();
    const port = await freePort();
    const up = startCli([
      'up',
      '--model',
      modelDir,
      '--pp',
      '2',
      '--grpc-port',
      String(port),
      '--threads',
      '1',
    ]);
    await waitForStderr(up.child, /medcluster: serving/, 90_000);
    const address = `127.0.0.1:${port}`;
    const client = inferenceClient(address);
    try {
      const info = await unary<object, { workers: { id: string }[] }>(client, 'GetModelInfo', {});
      expect(info.workers).toHaveLength(2);
      const pids = await import('node:child_process').then(({ execFileSync }) =>
        execFileSync('pgrep', ['-f', `worker --id w1 --listen`]).toString().trim().split('\n').map(Number),
      );
      const pending = unary(client, 'Generate', { text: 'A long answer:', maxTokens: 3000 }).catch(
        (e: grpc.ServiceError) => e,
      );
      await new Promise((r) => setTimeout(r, 300));
      for (const pid of pids) process.kill(pid, 'SIGKILL');
      const err = (await pending) as grpc.ServiceError;
      expect(err.code, err.details).toBe(grpc.status.UNAVAILABLE);
      expect(err.details).toMatch(/step failed/);
      // The coordinator is still up: it answers, and health says NOT_SERVING.
      const { grpc: pkg } = loadHealthProto();
      const health = new pkg.health.v1.Health(address, grpc.credentials.createInsecure());
      const status = await new Promise<{ status: string }>((resolve, reject) =>
        health.Check({ service: '' }, (e: grpc.ServiceError | null, res?: { status: string }) =>
          e ? reject(e) : resolve(res as { status: string }),
        ),
      );
      health.close();
      expect(status.status).toBe('NOT_SERVING');
      const again = (await unary(client, 'Generate', { text: 'x', maxTokens: 2 }).catch(
        (e) => e,
      )) as grpc.ServiceError;
      expect(again.code).toBe(grpc.status.UNAVAILABLE);
    } finally {
      client.close();
      await stopAll();
    }
  });
});
