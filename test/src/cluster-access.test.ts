// Access control in cluster mode, over real processes: a nats-server that requires TLS with a
// client certificate of the internal CA (verify: true) and users with passwords, a `medcluster
// coordinator` with API keys, TLS on its public ports and internal mutual TLS, and `medcluster
// worker` processes. NATS refuses, with a clear error and at once, a worker without
// credentials or with a wrong password, one whose certificate comes from another CA (or has
// expired), and one without TLS; a worker and a coordinator configured for TLS refuse a
// plain-TCP NATS. A worker that NATS admits but whose certificate does not name the address it
// advertises is refused by the coordinator and never placed; workers with valid certificates
// join (pp = 2, so the stage-to-stage link runs over mutual TLS too) and the cluster serves
// callers with a key. Last, with every secret in use and logs at debug, no process wrote a
// key, a password or a private key's bytes.

import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { InferenceClient } from '@medcluster/proto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  type CliResult,
  type DevCa,
  issueExpired,
  makeDevCa,
  type NatsServerHandle,
  privateKeyLines,
  runCli,
  startCli,
  startNatsServer,
  stopAll,
} from './harness/index.js';
import { testModel } from './models.js';

const secret = () => randomBytes(16).toString('hex');
const COORDINATOR_PASSWORD = secret();
const WORKER_PASSWORD = secret();
const WRONG_PASSWORD = secret();
const API_KEY = `mc-${secret()}`;
const WRONG_KEY = `mc-${secret()}`;
const CLUSTER = 'secured';

type Started = ReturnType<typeof startCli>;

/** Resolves with the first match of `pattern` in `text()`, polling; rejects after timeoutMs. */
async function waitForText(
  text: () => string,
  pattern: RegExp,
  timeoutMs: number,
): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = pattern.exec(text());
    if (m) return m;
    if (Date.now() > deadline)
      throw new Error(
        `nothing matched ${pattern} in ${timeoutMs} ms; the text ends:\n${text().slice(-3000)}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
}

function https(
  url: string,
  ca: Buffer,
  {
    method = 'GET',
    headers = {},
    body,
  }: { method?: string; headers?: Record<string, string>; body?: unknown } = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { method, headers, ca }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        text += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

describe('cluster mode with NATS credentials, API keys, TLS and internal mutual TLS', () => {
  let dir: string;
  let pki: DevCa;
  let other: DevCa;
  let expired: { cert: string; key: string };
  let ca: Buffer;
  let nats: NatsServerHandle;
  let plainNats: NatsServerHandle;
  let modelDir: string;
  let coordinator: Started;
  let httpBase: string;
  let passwordFile: string;
  let wrongPasswordFile: string;
  const workers = new Map<string, Started>();
  const oneShots: CliResult[] = [];

  /** `medcluster worker` on 127.0.0.1 with these extra flags. */
  const workerArgs = (id: string, extra: string[], { natsUrl = nats.url, listen = '127.0.0.1:0' } = {}) => [
    ...['worker', '--nats', natsUrl, '--cluster', CLUSTER, '--id', id, '--listen', listen],
    ...['--threads', '1', '--log-level', 'debug', ...extra],
  ];
  const natsLogin = () => ['--nats-user', 'worker', '--nats-password-file', passwordFile];
  const internal = (c: { ca: string; cert: string; key: string }) => [
    ...['--internal-ca', c.ca, '--internal-cert', c.cert, '--internal-key', c.key],
  ];
  const valid = () => internal({ ca: pki.ca, ...pki.node });
  /** runCli, and how long it ran (a timed-out run also ends with code 1). */
  const timedRun = async (args: string[]) => {
    const started = Date.now();
    const result = await runCli(args, 60_000);
    oneShots.push(result);
    return { ...result, ms: Date.now() - started };
  };
  const startWorker = (id: string, extra: string[], where?: Parameters<typeof workerArgs>[2]) => {
    const w = startCli(workerArgs(id, extra, where));
    workers.set(id, w);
    return w;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'medcluster-cluster-access-'));
    [pki, other] = await Promise.all([makeDevCa(join(dir, 'pki')), makeDevCa(join(dir, 'other-pki'))]);
    expired = await issueExpired(pki, 'expired');
    ca = await readFile(pki.ca);
    const keysFile = join(dir, 'api-keys');
    await writeFile(keysFile, `# clients\n${API_KEY}\n`, { mode: 0o600 });
    passwordFile = join(dir, 'worker-password');
    await writeFile(passwordFile, `${WORKER_PASSWORD}\n`, { mode: 0o600 });
    wrongPasswordFile = join(dir, 'wrong-password');
    await writeFile(wrongPasswordFile, `${WRONG_PASSWORD}\n`, { mode: 0o600 });
    [nats, plainNats] = await Promise.all([
      startNatsServer({
        // The node certificate serves NATS too: dev-ca.sh issues it for servers and clients.
        tls: { cert: pki.node.cert, key: pki.node.key, ca: pki.ca, verify: true },
        authorization: {
          users: [
            { user: 'coordinator', password: COORDINATOR_PASSWORD },
            { user: 'worker', password: WORKER_PASSWORD },
          ],
        },
      }),
      startNatsServer(),
    ]);
    modelDir = await testModel();
    coordinator = startCli([
      ...['coordinator', '--cluster', CLUSTER, '--model', modelDir, '--tp', '1', '--pp', '2'],
      // The password in the URL: the way that shows in a process list, so it must not show in logs.
      // tls:// by name here; the workers use nats://127.0.0.1, TLS all the same.
      ...['--nats', `tls://coordinator:${COORDINATOR_PASSWORD}@localhost:${nats.port}`],
      ...['--host', '127.0.0.1', '--grpc-port', '0', '--http-port', '0', '--kv-blocks', '256'],
      ...['--worker-timeout-s', '240', '--log-level', 'debug', '--api-keys-file', keysFile],
      ...['--tls-cert', pki.server.cert, '--tls-key', pki.server.key, ...valid()],
    ]);
    const [, port] = await waitForText(coordinator.stderr, /HTTP port (\d+) answers 503/, 60_000);
    httpBase = `https://127.0.0.1:${port}`;
  });
  afterAll(async () => {
    await stopAll();
    await Promise.all([nats?.stop(), plainNats?.stop()]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('NATS refuses a worker without credentials, and one with a wrong password, with a clear error', async () => {
    const [none, wrong] = await Promise.all([
      timedRun(workerArgs('no-credentials', valid())),
      timedRun(
        workerArgs('wrong-password', [
          ...valid(),
          ...['--nats-user', 'worker'],
          '--nats-password-file',
          wrongPasswordFile,
        ]),
      ),
    ]);
    expect(none.code, none.stderr).toBe(1);
    expect(none.stderr).toMatch(
      /NATS at nats:\/\/127\.0\.0\.1:\d+ refused medcluster-worker-no-credentials \(authorization violation\): it requires credentials: give --nats-user/,
    );
    expect(wrong.code, wrong.stderr).toBe(1);
    expect(wrong.stderr).toMatch(
      /refused medcluster-worker-wrong-password \(authorization violation\): check the credentials \(user 'worker' and a password\)/,
    );
  });

  test('NATS refuses, at once, a worker of another CA, with a certificate it did not issue or that expired, or without TLS', async () => {
    const [otherCa, foreign, stale, noTls] = await Promise.all([
      // Consistent with itself: its own CA and certificate. It does not trust NATS's certificate.
      timedRun(workerArgs('other-ca', [...natsLogin(), ...internal({ ca: other.ca, ...other.node })])),
      // Trusts the right CA but presents another's certificate: NATS (verify: true) refuses it.
      timedRun(workerArgs('foreign', [...natsLogin(), ...internal({ ca: pki.ca, ...other.node })])),
      timedRun(workerArgs('expired', [...natsLogin(), ...internal({ ca: pki.ca, ...expired })])),
      timedRun(workerArgs('no-tls', natsLogin())),
    ]);
    const port = String(nats.port);
    const cases: [typeof otherCa, RegExp][] = [
      [
        otherCa,
        new RegExp(
          `NATS at nats://127\\.0\\.0\\.1:${port}: its certificate did not verify against --internal-ca \\S+other-pki/ca\\.crt \\((unable to verify the first certificate|self.signed certificate)`,
        ),
      ],
      [
        foreign,
        /NATS at nats:\/\/127\.0\.0\.1:\d+ ended the TLS handshake with medcluster-worker-foreign \(TLS alert: bad certificate\): with verify: true it takes only certificates issued by its ca_file/,
      ],
      [stale, /ended the TLS handshake with medcluster-worker-expired \(TLS alert: bad certificate\)/],
      [
        noTls,
        /NATS at nats:\/\/127\.0\.0\.1:\d+ requires TLS, and its certificate did not verify against Node's default CAs/,
      ],
    ];
    for (const [run, message] of cases) {
      expect(run.code, run.stderr).toBe(1);
      expect(run.stderr).toMatch(message);
      // nats.js alone would retry a refused client certificate for 20 s, then say TIMEOUT.
      expect(run.ms, run.stderr).toBeLessThan(15_000);
    }
    // The expired worker also says so where it runs.
    expect(stale.stderr).toMatch(/internal TLS: --internal-cert \S+expired\.crt expired at/);
    expect(nats.output()).toMatch(/TLS handshake error/);
  });

  test('a worker and a coordinator with internal TLS refuse a plain-TCP NATS, at once', async () => {
    const [worker, coordinatorRun] = await Promise.all([
      timedRun(workerArgs('plain-nats', valid(), { natsUrl: plainNats.url })),
      timedRun([
        ...['coordinator', '--cluster', 'plain', '--model', modelDir, '--nats', plainNats.url],
        ...['--host', '127.0.0.1', '--grpc-port', '0', '--http-port', '0', ...valid()],
      ]),
    ]);
    for (const [run, name] of [
      [worker, 'medcluster-worker-plain-nats'],
      [coordinatorRun, 'medcluster-coordinator'],
    ] as const) {
      expect(run.code, run.stderr).toBe(1);
      expect(run.stderr).toMatch(
        new RegExp(
          `NATS at nats://127\\.0\\.0\\.1:${plainNats.port} does not offer TLS, and ${name} connects to NATS over TLS only \\(internal TLS is configured: --internal-ca \\S+pki/ca\\.crt\\): give nats-server a tls block`,
        ),
      );
      expect(run.ms, run.stderr).toBeLessThan(15_000);
    }
  });

  test('the coordinator refuses a worker whose certificate does not name the address it advertises', async () => {
    // NATS admits it (its certificate is of the CA); the coordinator dials 127.0.0.2, which the
    // certificate does not name (localhost, 127.0.0.1, ::1, this host).
    const misnamed = startWorker('misnamed', [...natsLogin(), ...valid()], { listen: '127.0.0.2:0' });
    await waitForText(
      coordinator.stderr,
      /refused worker misnamed: could not verify its certificate against --internal-ca \(127\.0\.0\.2:\d+: Hostname\/IP does not match certificate's altnames/,
      60_000,
    );
    expect(misnamed.stderr()).toMatch(/connected to NATS at \S+ over TLS/);
    // Not joined: the cluster still waits for two workers, and the port still says so.
    expect((await https(`${httpBase}/health`, ca)).status).toBe(503);
    expect((await https(`${httpBase}/v1/models`, ca)).status).toBe(401);
    expect(
      (await https(`${httpBase}/v1/models`, ca, { headers: { authorization: `Bearer ${API_KEY}` } })).status,
    ).toBe(503);
    expect(coordinator.stderr()).not.toMatch(/coordinator: worker misnamed ready/);
  });

  test('workers with valid certificates join, and the cluster serves callers with a key over TLS', async () => {
    for (const id of ['valid-0', 'valid-1']) startWorker(id, [...natsLogin(), ...valid()]);
    const [, grpcPort] = await waitForText(
      coordinator.stderr,
      /serving .* on 127\.0\.0\.1:(\d+) \(TLS\)/,
      120_000,
    );
    const auth = { authorization: `Bearer ${API_KEY}` };
    const completion = await https(`${httpBase}/v1/completions`, ca, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: { prompt: 'The patient presented with', max_tokens: 4 },
    });
    expect(completion.status, completion.body).toBe(200);
    expect(JSON.parse(completion.body).usage.completion_tokens).toBeGreaterThan(0);
    const refused = await https(`${httpBase}/v1/completions`, ca, {
      method: 'POST',
      headers: { authorization: `Bearer ${WRONG_KEY}` },
      body: { prompt: 'x', max_tokens: 1 },
    });
    expect(refused.status).toBe(401);
    expect((await https(`${httpBase}/health`, ca)).status).toBe(200);
    // The placement holds the valid workers only, one per stage.
    const cluster = JSON.parse((await https(`${httpBase}/cluster`, ca, { headers: auth })).body);
    expect(cluster.layout.workers.map((w: { id: string }) => w.id).sort()).toEqual(['valid-0', 'valid-1']);
    const credentials = grpc.credentials.createSsl(ca);
    const client = new InferenceClient(`127.0.0.1:${grpcPort}`, { credentials, apiKey: API_KEY });
    const stranger = new InferenceClient(`127.0.0.1:${grpcPort}`, { credentials, apiKey: WRONG_KEY });
    try {
      expect((await client.generate({ text: 'Aspirin is', maxTokens: 4 })).tokenIds.length).toBeGreaterThan(
        0,
      );
      await expect(stranger.generate({ text: 'Aspirin is', maxTokens: 4 })).rejects.toMatchObject({
        code: grpc.status.UNAUTHENTICATED,
      });
    } finally {
      client.close();
      stranger.close();
    }
  });

  test('no process wrote a key, a password or a private key', async () => {
    const keyFiles = [
      join(pki.dir, 'ca.key'),
      pki.node.key,
      pki.server.key,
      join(other.dir, 'ca.key'),
      other.node.key,
      expired.key,
    ];
    const secrets: [string, string][] = [
      ['the API key', API_KEY],
      ['the wrong API key a caller sent', WRONG_KEY],
      ["the coordinator's NATS password", COORDINATOR_PASSWORD],
      ["the workers' NATS password", WORKER_PASSWORD],
      ['a wrong NATS password', WRONG_PASSWORD],
    ];
    for (const file of keyFiles)
      for (const line of await privateKeyLines(file)) secrets.push([`a line of ${file}`, line]);
    const outputs: [string, string][] = [
      ['coordinator stderr', coordinator.stderr()],
      ['coordinator stdout', coordinator.stdout()],
      ['nats-server', nats.output()],
      ...[...workers].flatMap(([id, w]): [string, string][] => [
        [`worker ${id} stderr`, w.stderr()],
        [`worker ${id} stdout`, w.stdout()],
      ]),
      ...oneShots.flatMap((r, i): [string, string][] => [
        [`refused worker ${i} stderr`, r.stderr],
        [`refused worker ${i} stdout`, r.stdout],
      ]),
    ];
    // The logs are there to be searched: requests, refusals and the workers' steps at debug.
    expect(coordinator.stderr()).toMatch(/refused worker misnamed/);
    expect(workers.get('valid-0')?.stderr()).toMatch(/internal mutual TLS: certificate/);
    const overTls =
      /connected to NATS at \S+ over TLS \(its certificate checked against --internal-ca \S+pki\/ca\.crt, presenting this process's certificate\)/;
    expect(workers.get('valid-0')?.stderr()).toMatch(overTls);
    expect(coordinator.stderr()).toMatch(overTls);
    for (const [where, text] of outputs)
      for (const [what, value] of secrets) expect(text.includes(value), `${what} in ${where}`).toBe(false);
  });
});
