import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from './args.js';
import { natsTargetFromFlags } from './nats-flags.js';

describe('natsTargetFromFlags', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nats-flags-'));
    await writeFile(join(dir, 'password'), 's3cret-pass\n');
    await writeFile(join(dir, 'token'), 'tok-123\n');
    await writeFile(join(dir, 'empty'), '\n');
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
});
