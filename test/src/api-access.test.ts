// Access control of `medcluster up` with every protection on: API keys (from
// $MEDCLUSTER_API_KEYS), TLS on the public ports and mutual TLS between the coordinator and its
// workers, all from certificates that scripts/dev-ca.sh makes in a temporary directory. Real
// processes and sockets: HTTPS and gRPC-over-TLS clients without a key, with a wrong one and with
// a right one; probes that stay open; a worker port that refuses clients without a certificate
// from the internal CA. tp = 2, so the collective's rank-to-rank stream runs over mutual TLS too.

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { InferenceClient, loadWorkerProto } from '@medcluster/proto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type DevCa, makeDevCa, reflectedServices, startUp, stopAll } from './harness/index.js';
import { testModel } from './models.js';

const KEY = 'test-key-0123456789abcdef0123456789';
const OTHER_KEY = 'test-key-second-0123456789abcdef';
const WRONG_KEY = 'wrong-key-0123456789abcdef012345';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One HTTPS request that trusts `ca` only. */
function https(
  url: string,
  ca: Buffer,
  {
    method = 'GET',
    headers = {},
    body,
  }: { method?: string; headers?: Record<string, string>; body?: unknown } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { method, headers, ca }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        text += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    if (body !== undefined) req.end(JSON.stringify(body));
    else req.end();
  });
}

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

describe('medcluster up with API keys, TLS and internal mutual TLS', () => {
  let dir: string;
  let pki: DevCa;
  let ca: Buffer;
  let base: string;
  let grpcAddress: string;
  let tlsCredentials: grpc.ChannelCredentials;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'medcluster-access-'));
    pki = await makeDevCa(join(dir, 'pki'));
    ca = await readFile(pki.ca);
    tlsCredentials = grpc.credentials.createSsl(ca);
    const modelDir = await testModel();
    ({ http: base, grpc: grpcAddress } = await startUp(
      [
        ...['--model', modelDir, '--tp', '2'],
        ...['--tls-cert', pki.server.cert, '--tls-key', pki.server.key],
        ...['--internal-ca', pki.ca, '--internal-cert', pki.node.cert, '--internal-key', pki.node.key],
      ],
      { env: { MEDCLUSTER_API_KEYS: `${KEY},${OTHER_KEY}` }, tls: true },
    ));
  });
  afterAll(async () => {
    await stopAll();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('HTTP: no key or a wrong key is 401 with WWW-Authenticate, in each API convention', async () => {
    const calls: [string, string, unknown?][] = [
      ['GET', '/v1/models'],
      ['POST', '/v1/completions', { prompt: 'The patient', max_tokens: 2 }],
      ['POST', '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }] }],
      ['POST', '/generate', { inputs: 'The patient', parameters: { max_new_tokens: 2 } }],
      ['GET', '/info'],
      ['GET', '/cluster'],
      ['GET', '/metrics'],
      ['GET', '/no-such-route'],
    ];
    for (const [method, path, body] of calls) {
      for (const headers of [
        {},
        bearer(WRONG_KEY),
        { authorization: `Basic ${btoa(`u:${KEY}`)}` },
        { authorization: KEY },
      ]) {
        const r = await https(`${base}${path}`, ca, { method, headers, body });
        expect(r.status, `${method} ${path} ${JSON.stringify(headers)}`).toBe(401);
        expect(r.headers['www-authenticate']).toMatch(/^Bearer/);
        const error = JSON.parse(r.body);
        if (path.startsWith('/v1/')) {
          expect(error.error).toMatchObject({ type: 'invalid_request_error', code: 'invalid_api_key' });
        } else {
          expect(error).toMatchObject({ error_type: 'unauthorized' });
        }
        // The refusal never echoes what was sent.
        expect(r.body).not.toContain(WRONG_KEY);
        expect(r.body).not.toContain(KEY);
      }
    }
    const missing = JSON.parse((await https(`${base}/v1/models`, ca)).body);
    expect(missing.error.message).toMatch(/requires an API key.*Authorization: Bearer/);
  });

  test('HTTP: a right key (either configured one) is served; GET /health and CORS preflights need none', async () => {
    for (const key of [KEY, OTHER_KEY]) {
      const models = await https(`${base}/v1/models`, ca, { headers: bearer(key) });
      expect(models.status, models.body).toBe(200);
    }
    const completion = await https(`${base}/v1/completions`, ca, {
      method: 'POST',
      headers: { ...bearer(KEY), 'content-type': 'application/json' },
      body: { prompt: 'The patient presented with', max_tokens: 4 },
    });
    expect(completion.status, completion.body).toBe(200);
    expect(JSON.parse(completion.body).usage.completion_tokens).toBeGreaterThan(0);
    // The scheme is case-insensitive, as RFC 7235 says.
    const lower = await https(`${base}/info`, ca, { headers: { authorization: `bearer ${KEY}` } });
    expect(lower.status).toBe(200);
    expect((await https(`${base}/health`, ca)).status).toBe(200);
    const preflight = await https(`${base}/v1/chat/completions`, ca, {
      method: 'OPTIONS',
      headers: {
        origin: 'https://example.org',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization, content-type',
      },
    });
    expect(preflight.status).toBe(204);
    expect(String(preflight.headers['access-control-allow-headers'])).toMatch(/authorization/i);
    // A page reads a 401 too: it carries the CORS headers.
    const refused = await https(`${base}/v1/models`, ca, { headers: { origin: 'https://example.org' } });
    expect(refused.status).toBe(401);
    expect(refused.headers['access-control-allow-origin']).toBe('*');
  });

  test('HTTP: the port speaks TLS only, with the dev CA’s certificate for 127.0.0.1', async () => {
    await expect(fetch(`${base.replace('https:', 'http:')}/health`)).rejects.toThrow();
    // Without the CA the certificate does not verify.
    await expect(https(`${base}/health`, Buffer.from(''))).rejects.toThrow(
      /self.signed|unable to verify|certificate/i,
    );
  });

  test('gRPC: no key or a wrong key is UNAUTHENTICATED; health stays open; a right key is served', async () => {
    const anonymous = new InferenceClient(grpcAddress, { credentials: tlsCredentials });
    const wrong = new InferenceClient(grpcAddress, { credentials: tlsCredentials, apiKey: WRONG_KEY });
    const right = new InferenceClient(grpcAddress, { credentials: tlsCredentials, apiKey: KEY });
    try {
      for (const client of [anonymous, wrong]) {
        await expect(client.generate({ text: 'The patient', maxTokens: 2 })).rejects.toMatchObject({
          code: grpc.status.UNAUTHENTICATED,
        });
        await expect(client.getModelInfo()).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
        await expect(client.tokenize({ text: 'hi' })).rejects.toMatchObject({
          code: grpc.status.UNAUTHENTICATED,
        });
        const stream = async () => {
          for await (const _ of client.generateStream({ text: 'The patient', maxTokens: 2 })) {
            // no message may arrive
          }
        };
        await expect(stream()).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
        expect((await client.healthCheck()).status).toBe('SERVING');
        expect((await client.healthCheck('medcluster.v1.Inference')).status).toBe('SERVING');
      }
      const reply = await right.generate({ text: 'The patient presented with', maxTokens: 4 });
      expect(reply.tokenIds.length).toBeGreaterThan(0);
      let streamed = 0;
      for await (const m of right.generateStream({ text: 'Aspirin is', maxTokens: 3 }))
        streamed += m.tokenIds.length;
      expect(streamed).toBeGreaterThan(0);
      expect((await right.getModelInfo()).tp).toBe(2);
    } finally {
      for (const c of [anonymous, wrong, right]) c.close();
    }
  });

  test('gRPC: reflection needs the key; a plaintext client cannot connect', async () => {
    await expect(reflectedServices(grpcAddress, tlsCredentials)).rejects.toMatchObject({
      code: grpc.status.UNAUTHENTICATED,
    });
    expect(await reflectedServices(grpcAddress, tlsCredentials, KEY)).toEqual(
      expect.arrayContaining(['medcluster.v1.Inference', 'grpc.health.v1.Health']),
    );
    const plaintext = new InferenceClient(grpcAddress, { apiKey: KEY });
    try {
      await expect(plaintext.healthCheck('', { timeoutMs: 3000 })).rejects.toMatchObject({
        code: expect.any(Number),
      });
    } finally {
      plaintext.close();
    }
  });

  test('a worker port refuses clients without a certificate from the internal CA', async () => {
    const cluster = JSON.parse((await https(`${base}/cluster`, ca, { headers: bearer(KEY) })).body);
    const address: string = cluster.layout.workers[0].address;
    expect(address).toMatch(/^127\.0\.0\.1:\d+$/);
    const other = await makeDevCa(join(dir, 'other-pki'));
    const [otherKey, otherCert, nodeKey, nodeCert] = await Promise.all(
      [other.node.key, other.node.cert, pki.node.key, pki.node.cert].map((f) => readFile(f)),
    );
    const { medcluster } = loadWorkerProto();
    /** Whether a channel with `credentials` connects (TLS handshake, client certificate, HTTP/2)
     * within `ms`. */
    const reaches = async (credentials: grpc.ChannelCredentials, ms: number) => {
      const client = new medcluster.worker.v1.Worker(address, credentials);
      try {
        return await new Promise<boolean>((resolve) =>
          client.waitForReady(Date.now() + ms, (err) => resolve(err === undefined || err === null)),
        );
      } finally {
        client.close();
      }
    };
    // Refused ones never connect: each waits out its 3 s, side by side.
    const refused = await Promise.all([
      reaches(grpc.credentials.createInsecure(), 3000),
      reaches(grpc.credentials.createSsl(ca), 3000),
      reaches(grpc.credentials.createSsl(ca, otherKey, otherCert), 3000),
    ]);
    expect(refused, 'plaintext; TLS without a client certificate; one from another CA').toEqual([
      false,
      false,
      false,
    ]);
    // The control: the internal CA's certificate connects (with room for a busy machine).
    expect(await reaches(grpc.credentials.createSsl(ca, nodeKey, nodeCert), 20_000)).toBe(true);
  });
});
