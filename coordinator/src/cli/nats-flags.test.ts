import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from './args.js';
import { internalTlsFromFlags } from './internal-tls-flags.js';
import { natsTargetFromFlags } from './nats-flags.js';

describe('natsTargetFromFlags', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nats-flags-'));
    await writeFile(join(dir, 'password'), 's3cret-pass\n');
    await writeFile(join(dir, 'token'), 'tok-123\n');
    await writeFile(join(dir, 'empty'), '\n');
    const script = resolve(dirname(fileURLToPath(import.meta.url)), '../../../scripts/dev-ca.sh');
    execFileSync('bash', [script, join(dir, 'pki'), '--days', '1'], { stdio: 'ignore' });
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('takes credentials out of the URL: user and password, or a token', () => {
    expect(natsTargetFromFlags({ nats: 'nats://host:4222' })).toEqual({ servers: 'nats://host:4222' });
    expect(natsTargetFromFlags({ nats: 'nats://alice:p%40ss@host:4222' })).toEqual({
      servers: 'nats://host:4222',
      auth: { user: 'alice', pass: 'p@ss' },
    });
    expect(natsTargetFromFlags({ nats: 'nats://tok@a:4222,nats://tok@b:4222' })).toEqual({
      servers: 'nats://a:4222,nats://b:4222',
      auth: { token: 'tok' },
    });
    expect(natsTargetFromFlags({ nats: 'host:4222' })?.servers).toBe('nats://host:4222');
  });

  it('reads a password or a token from a file (its first line)', () => {
    const password = join(dir, 'password');
    expect(
      natsTargetFromFlags({ nats: 'nats://h:1', 'nats-user': 'w', 'nats-password-file': password }),
    ).toEqual({
      servers: 'nats://h:1',
      auth: { user: 'w', pass: 's3cret-pass' },
    });
    expect(natsTargetFromFlags({ nats: 'nats://h:1', 'nats-token-file': join(dir, 'token') })?.auth).toEqual({
      token: 'tok-123',
    });
  });

  it('refuses two ways at once, half a pair, empty or missing files, and never repeats a secret', () => {
    const password = join(dir, 'password');
    const cases: [Parameters<typeof natsTargetFromFlags>[0], RegExp][] = [
      [{ nats: 'nats://u:pw@h:1', 'nats-token-file': join(dir, 'token') }, /give NATS credentials one way/],
      [{ nats: 'nats://h:1', 'nats-user': 'w' }, /--nats-user and --nats-password-file go together/],
      [{ nats: 'nats://h:1', 'nats-token-file': join(dir, 'empty') }, /--nats-token-file: .*empty is empty/],
      [
        { nats: 'nats://h:1', 'nats-creds': join(dir, 'nope.creds') },
        /--nats-creds: cannot read .*nope\.creds \(ENOENT\)/,
      ],
      [{ 'nats-user': 'w', 'nats-password-file': password }, /--nats-user needs --nats/],
      [{ nats: 'nats://a:one@h:1,nats://a:two@h:2' }, /the URLs carry different credentials/],
      [{ nats: 'nats://u:secretpw@[bad' }, /is not a URL/],
    ];
    for (const [flags, message] of cases) {
      const call = () => natsTargetFromFlags(flags);
      expect(call).toThrow(UsageError);
      expect(call).toThrow(message);
      try {
        call();
      } catch (err) {
        expect((err as Error).message).not.toMatch(/secretpw|s3cret|tok-123|one@|two@/);
      }
    }
    expect(natsTargetFromFlags({})).toBeUndefined();
  });

  it('with internal TLS, NATS is reached over TLS with its CA and certificate; tls:// asks for TLS alone', () => {
    const internal = internalTlsFromFlags({
      'internal-ca': join(dir, 'pki', 'ca.crt'),
      'internal-cert': join(dir, 'pki', 'node.crt'),
      'internal-key': join(dir, 'pki', 'node.key'),
    });
    for (const url of ['nats://h:1', 'tls://h:1']) {
      const tls = natsTargetFromFlags({ nats: url }, internal)?.tls;
      expect(tls?.ca?.name).toBe(`--internal-ca ${join(dir, 'pki', 'ca.crt')}`);
      expect(tls?.ca?.pem).toMatch(/^-----BEGIN CERTIFICATE-----/);
      expect(tls?.cert).toMatch(/^-----BEGIN CERTIFICATE-----/);
      expect(tls?.key).toMatch(/PRIVATE KEY-----/);
    }
    expect(natsTargetFromFlags({ nats: 'nats://h:1' })).toEqual({ servers: 'nats://h:1' });
    // Without internal TLS, a tls:// URL checks the server against the system's CAs.
    expect(natsTargetFromFlags({ nats: 'tls://u:pw@a:1,tls://u:pw@b:2' })).toEqual({
      servers: 'tls://a:1,tls://b:2',
      auth: { user: 'u', pass: 'pw' },
      tls: {},
    });
    // nats.js takes one TLS setting for every server.
    const mixed = () => natsTargetFromFlags({ nats: 'tls://a:1,nats://b:2' });
    expect(mixed).toThrow(UsageError);
    expect(mixed).toThrow(/--nats: give every URL tls:\/\/ or none/);
  });
});
