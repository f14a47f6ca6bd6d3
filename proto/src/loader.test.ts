import { existsSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { HealthHandlers } from '../generated/grpc/health/v1/Health.js';
import type { HealthCheckResponse } from '../generated/grpc/health/v1/HealthCheckResponse.js';
import type { GenerateRequest__Output } from '../generated/medcluster/v1/GenerateRequest.js';
import type { GenerateResponse__Output } from '../generated/medcluster/v1/GenerateResponse.js';
import type { InferenceHandlers } from '../generated/medcluster/v1/Inference.js';
import type { StageMessage__Output } from '../generated/medcluster/worker/v1/StageMessage.js';
import type { StageResult, StageResult__Output } from '../generated/medcluster/worker/v1/StageResult.js';
import { loadHealthProto, loadInferenceProto, loadWorkerProto } from './loader.js';
import { protoPaths } from './paths.js';

const servers: grpc.Server[] = [];
const clients: grpc.Client[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((r) => s.tryShutdown(() => r()))));
});

async function listen(server: grpc.Server): Promise<string> {
  servers.push(server);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return `127.0.0.1:${port}`;
}

describe('proto loaders', () => {
  it('resolves the .proto files independently of the cwd', () => {
    for (const path of Object.values(protoPaths())) expect(existsSync(path)).toBe(true);
  });

  it('round-trips a health Check and a Watch over a real socket', async () => {
    const { grpc: g } = loadHealthProto();
    const server = new grpc.Server();
    const health: HealthHandlers = {
      Check: (call, cb) => {
        if (call.request.service === 'medcluster.v1.Inference') cb(null, { status: 'SERVING' });
        else cb({ code: grpc.status.NOT_FOUND, details: `unknown service ${call.request.service}` });
      },
      Watch: (call) => {
        call.write({ status: 'NOT_SERVING' });
        call.write({ status: 'SERVING' });
        call.end();
      },
    };
    server.addService(g.health.v1.Health.service, health);
    const address = await listen(server);
    const client = new g.health.v1.Health(address, grpc.credentials.createInsecure());
    clients.push(client);
    const ok = await new Promise<HealthCheckResponse>((resolve, reject) =>
      client.Check({ service: 'medcluster.v1.Inference' }, (err, res) =>
        err || !res ? reject(err) : resolve(res),
      ),
    );
    expect(ok.status).toBe('SERVING');
    const missing = await new Promise<grpc.ServiceError>((resolve) =>
      client.Check({ service: 'nope' }, (err) => resolve(err as grpc.ServiceError)),
    );
    expect(missing.code).toBe(grpc.status.NOT_FOUND);
    const watched: string[] = [];
    await new Promise<void>((resolve, reject) => {
      const stream = client.Watch({ service: '' });
      stream.on('data', (m: { status: string }) => watched.push(m.status));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    expect(watched).toEqual(['NOT_SERVING', 'SERVING']);
  });

  it('round-trips Generate with a oneof prompt and wrapper-typed sampling fields', async () => {
    const { medcluster } = loadInferenceProto();
    const seen: GenerateRequest__Output[] = [];
    const server = new grpc.Server();
    const inference: Pick<InferenceHandlers, 'Generate'> = {
      Generate: (call, cb) => {
        seen.push(call.request);
        cb(null, {
          text: ' fever',
          tokenIds: [17, 4],
          finishReason: 'FINISH_REASON_LENGTH',
          usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 },
          timing: { totalMs: 1.5 },
          requestId: call.request.requestId,
        });
      },
    };
    server.addService(medcluster.v1.Inference.service, inference);
    const address = await listen(server);
    const client = new medcluster.v1.Inference(address, grpc.credentials.createInsecure());
    clients.push(client);
    const call = (req: Parameters<typeof client.Generate>[0]) =>
      new Promise<GenerateResponse__Output>((resolve, reject) =>
        client.Generate(req, (err, res) => (err || !res ? reject(err) : resolve(res))),
      );
    const res = await call({
      tokenIds: { ids: [1, 450, 2] },
      maxTokens: 2,
      temperature: { value: 0 },
      seed: { value: 42 },
      requestId: 'r1',
    });
    expect(res).toMatchObject({
      text: ' fever',
      tokenIds: [17, 4],
      finishReason: 'FINISH_REASON_LENGTH',
      requestId: 'r1',
    });
    expect(res.usage?.totalTokens).toBe(5);
    await call({ text: 'Fever is', stop: ['\n'] });
    expect(seen[0].prompt).toBe('tokenIds');
    expect(seen[0].tokenIds?.ids).toEqual([1, 450, 2]);
    // Presence: temperature 0 is set (greedy), top_p is absent.
    expect(seen[0].temperature).toEqual({ value: 0 });
    expect(seen[0].topP).toBeNull();
    expect(seen[0].seed).toEqual({ value: 42 });
    expect(seen[1].prompt).toBe('text');
    expect(seen[1].text).toBe('Fever is');
    expect(seen[1].temperature).toBeNull();
    expect(seen[1].stop).toEqual(['\n']);
  });

  it('round-trips a Worker Stage step with its activation bytes, and a StepError', async () => {
    const { medcluster } = loadWorkerProto();
    const server = new grpc.Server();
    server.addService(medcluster.worker.v1.Worker.service, {
      Stage: (call: grpc.ServerDuplexStream<StageMessage__Output, StageResult>) => {
        call.on('data', (m: StageMessage__Output) => {
          const stepId = m.step?.stepId ?? 0;
          if (m.activation === null) {
            call.write({ stepId, error: { code: 'INVALID_STEP', message: 'no activation', seqIds: [] } });
            return;
          }
          const { data, shape, dtype } = m.activation;
          const doubled = new Float32Array(new Uint8Array(data).buffer).map((x) => x * 2);
          call.write({
            stepId,
            output: { activation: { dtype, shape, data: Buffer.from(doubled.buffer) } },
            computeMs: 0.25,
          });
        });
        call.on('end', () => call.end());
      },
    });
    const address = await listen(server);
    const client = new medcluster.worker.v1.Worker(address, grpc.credentials.createInsecure());
    clients.push(client);
    const stream = client.Stage();
    const results: StageResult__Output[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (r: StageResult__Output) => results.push(r));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    const hidden = new Float32Array([1.5, -2, 3.25, 0]);
    stream.write({
      step: {
        stepId: 7,
        seqs: [{ seqId: 's1', startPos: 0, numTokens: 2, tokenIds: [1, 2], blockTable: [0], logitRows: 1 }],
      },
      activation: { dtype: 'DTYPE_FLOAT32', shape: [2, 2], data: Buffer.from(hidden.buffer) },
    });
    stream.write({ step: { stepId: 8, seqs: [] } });
    stream.end();
    await done;
    expect(results.map((r) => [r.stepId, r.outcome])).toEqual([
      [7, 'output'],
      [8, 'error'],
    ]);
    const out = results[0].output?.activation;
    expect(out?.shape).toEqual([2, 2]);
    expect(out?.dtype).toBe('DTYPE_FLOAT32');
    expect(Array.from(new Float32Array(new Uint8Array(out?.data ?? []).buffer))).toEqual([3, -4, 6.5, 0]);
    expect(results[1].error?.code).toBe('INVALID_STEP');
  });

  it('exposes the Collective service and every Worker RPC', () => {
    const { medcluster } = loadWorkerProto();
    expect(Object.keys(medcluster.worker.v1.Worker.service).sort()).toEqual([
      'GetStatus',
      'Regroup',
      'Stage',
    ]);
    expect(medcluster.worker.v1.Collective.service.Exchange.requestStream).toBe(true);
    expect(medcluster.worker.v1.Collective.service.Exchange.responseStream).toBe(true);
  });
});
