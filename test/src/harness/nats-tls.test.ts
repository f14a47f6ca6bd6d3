// nats-server with a tls block (verify: true: clients need a certificate of its CA), and
// connectNats against it with the internal CA and certificate: a member of the CA connects, with
// credentials too, and reconnects through a restart; a client of another CA, one presenting
// another CA's certificate, one with no certificate, and one without TLS are refused at once
// with the reason; a TLS client against a plain nats-server is refused at once too. No message
// carries key material.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  connectNats,
  InternalTls,
  NatsConnectError,
  type NatsTarget,
  parseNatsUrl,
} from '@medcluster/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DevCa, makeDevCa, privateKeyLines } from './certificates.js';
import { type NatsServerHandle, startNatsServer } from './nats-server.js';

/** The error connectNats rejects with, and how long it took. */
async function refusal(target: NatsTarget, name: string): Promise<{ message: string; ms: number }> {
  const started = Date.now();
  try {
    const nc = await connectNats(target, name);
    await nc.close();
  } catch (err) {
    expect(err).toBeInstanceOf(NatsConnectError);
    return { message: (err as Error).message, ms: Date.now() - started };
  }
  throw new Error(`${name} connected`);
}

describe('nats-server with TLS and verify: true', () => {
  let dir: string;
  let pki: DevCa;
  let other: DevCa;
  let server: NatsServerHandle;
  let plain: NatsServerHandle;
  const load = (ca: string, cert: { cert: string; key: string }) =>
    InternalTls.load({ ca, cert: cert.cert, key: cert.key }).natsTls();

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nats-tls-'));
    [pki, other] = await Promise.all([makeDevCa(join(dir, 'pki')), makeDevCa(join(dir, 'other'))]);
    // The node certificate is the server's too: dev-ca.sh issues it for serving and for clients.
    [server, plain] = await Promise.all([
      startNatsServer({
        tls: { cert: pki.node.cert, key: pki.node.key, ca: pki.ca, verify: true },
        authorization: { users: [{ user: 'worker', password: 'pw-0123456789' }] },
      }),
      startNatsServer(),
    ]);
  });
  afterAll(async () => {
    await Promise.all([server?.stop(), plain?.stop()]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('a certificate of its CA connects, with credentials, by nats:// and tls://, and reconnects after a restart', async () => {
    const tls = load(pki.ca, pki.node);
    const auth = { user: 'worker', pass: 'pw-0123456789' };
    const nc = await connectNats({ servers: server.url, auth, tls }, 'member');
    try {
      const echo = async (text: string) => {
        const sub = nc.subscribe('hello', { max: 1 });
        nc.publish('hello', text);
        for await (const m of sub) expect(m.string()).toBe(text);
      };
      await echo('over TLS');
      const statuses = nc.status();
      await server.restart(200);
      for await (const s of statuses) if (s.type === 'reconnect') break; // over TLS again
      await echo('over TLS, after a restart');
      expect(nc.info?.tls_required).toBe(true);
    } finally {
      await nc.close();
    }
    // A tls:// URL by a name the certificate holds; credentials in it, as before.
    const byScheme = parseNatsUrl(`tls://worker:pw-0123456789@localhost:${server.port}`);
    expect(byScheme).toEqual({ servers: `tls://localhost:${server.port}`, auth, tls: {} });
    await (await connectNats({ ...byScheme, tls }, 'by-tls-url')).close();
    // Credentials still count over TLS.
    const { message } = await refusal(
      { servers: server.url, auth: { ...auth, pass: 'guess' }, tls },
      'guesser',
    );
    expect(message).toMatch(/refused guesser \(authorization violation\)/);
  });

  it('refuses another CA, a certificate it did not issue, none, and no TLS: at once, with the reason', async () => {
    const cases: [string, NatsTarget, RegExp][] = [
      [
        'other-ca',
        { servers: server.url, tls: load(other.ca, other.node) },
        /^NATS at nats:\/\/127\.0\.0\.1:\d+: its certificate did not verify against --internal-ca \S+other\/ca\.crt \((unable to verify the first certificate|self.signed certificate)/,
      ],
      [
        'foreign-cert',
        { servers: server.url, tls: load(pki.ca, other.node) },
        /^NATS at nats:\/\/127\.0\.0\.1:\d+ ended the TLS handshake with foreign-cert \(TLS alert: bad certificate\): with verify: true it takes only certificates issued by its ca_file/,
      ],
      [
        'no-cert',
        { servers: server.url, tls: { ca: load(pki.ca, pki.node).ca } },
        /ended the TLS handshake with no-cert \(TLS alert: bad certificate\): it may require a client certificate \(verify: true\): give --internal-ca, --internal-cert and --internal-key/,
      ],
      [
        'no-tls',
        { servers: server.url },
        /^NATS at nats:\/\/127\.0\.0\.1:\d+ requires TLS, and its certificate did not verify against Node's default CAs/,
      ],
      [
        'tls-to-plain',
        { servers: plain.url, tls: load(pki.ca, pki.node) },
        /^NATS at nats:\/\/127\.0\.0\.1:\d+ does not offer TLS, and tls-to-plain connects to NATS over TLS only \(internal TLS is configured: --internal-ca \S+pki\/ca\.crt\): give nats-server a tls block/,
      ],
      [
        'tls-url-to-plain',
        { ...parseNatsUrl(plain.url.replace('nats://', 'tls://')) },
        /does not offer TLS, and tls-url-to-plain connects to NATS over TLS only \(a tls:\/\/ URL\)/,
      ],
    ];
    const keyLines = (
      await Promise.all([pki.node.key, other.node.key].map((file) => privateKeyLines(file)))
    ).flat();
    const results = await Promise.all(cases.map(([who, target]) => refusal(target, who)));
    for (const [i, [who, , pattern]] of cases.entries()) {
      const { message, ms } = results[i];
      expect(message, who).toMatch(pattern);
      // nats.js alone would retry a refused certificate for its 20 s connect timeout.
      expect(ms, `${who}: ${message}`).toBeLessThan(5000);
      for (const line of keyLines) expect(message.includes(line), who).toBe(false);
    }
    expect(server.output()).toMatch(/TLS handshake error/);
  });
});
