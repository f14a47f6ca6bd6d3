// The access flags: API keys from a file or the environment, public TLS and internal mutual
// TLS files, checked at start with messages that name the flag and the file.

import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from './args.js';
import { internalTlsFromFlags } from './internal-tls-flags.js';
import { SERVE_FLAGS, serveSettingsFromFlags } from './serve-flags.js';

const KEY = 'k'.repeat(20);

/** The serving settings from these flags over the defaults, as parseFlags gives them. */
function settings(flags: Record<string, string>, env: Record<string, string>) {
  const defaults = Object.fromEntries(
    Object.entries(SERVE_FLAGS).flatMap(([k, v]) => ('default' in v ? [[k, v.default]] : [])),
  );
  return serveSettingsFromFlags({ ...defaults, ...flags }, env);
}

describe('access flags', () => {
  let dir: string;
  let a: string;
  let b: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'access-flags-'));
    const script = resolve(dirname(fileURLToPath(import.meta.url)), '../../../scripts/dev-ca.sh');
    a = join(dir, 'a');
    b = join(dir, 'b');
    for (const d of [a, b]) execFileSync('bash', [script, d, '--days', '1'], { stdio: 'ignore' });
    await writeFile(join(dir, 'keys'), `${KEY}\n`);
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('API keys come from --api-keys-file or $MEDCLUSTER_API_KEYS, not both; neither leaves the APIs open', () => {
    expect(settings({}, {}).apiKeys).toBeUndefined();
    expect(settings({ 'api-keys-file': join(dir, 'keys') }, {}).apiKeys?.accepts(KEY)).toBe(true);
    expect(settings({}, { MEDCLUSTER_API_KEYS: `${KEY},${'m'.repeat(16)}` }).apiKeys?.size).toBe(2);
    const both = () => settings({ 'api-keys-file': join(dir, 'keys') }, { MEDCLUSTER_API_KEYS: KEY });
    expect(both).toThrow(UsageError);
    expect(both).toThrow(/not both/);
    expect(() => settings({}, { MEDCLUSTER_API_KEYS: 'short' })).toThrow(
      /\$MEDCLUSTER_API_KEYS line 1: a key must be at least 16 characters/,
    );
  });

  it('--tls-cert and --tls-key go together and must be a pair', () => {
    const tls = settings({ 'tls-cert': join(a, 'server.crt'), 'tls-key': join(a, 'server.key') }, {}).tls;
    expect(tls?.cert.toString()).toMatch(/BEGIN CERTIFICATE/);
    expect(tls?.problem).toBeUndefined();
    expect(() => settings({ 'tls-cert': join(a, 'server.crt') }, {})).toThrow(/go together/);
    expect(() =>
      settings({ 'tls-cert': join(a, 'server.crt'), 'tls-key': join(b, 'server.key') }, {}),
    ).toThrow(/--tls-key .*b\/server\.key is not the private key of --tls-cert .*a\/server\.crt/);
    expect(() =>
      settings({ 'tls-cert': join(a, 'server.key'), 'tls-key': join(a, 'server.key') }, {}),
    ).toThrow(/--tls-cert: .*server\.key is not a PEM certificate/);
    expect(() => settings({ 'tls-cert': join(a, 'nope.crt'), 'tls-key': join(a, 'server.key') }, {})).toThrow(
      /--tls-cert: cannot read .*nope\.crt \(ENOENT\)/,
    );
  });

  it('the internal files go three together; a certificate of another CA is reported at start', () => {
    expect(internalTlsFromFlags({})).toBeUndefined();
    expect(() => internalTlsFromFlags({ 'internal-ca': join(a, 'ca.crt') })).toThrow(/all three or none/);
    const own = internalTlsFromFlags({
      'internal-ca': join(a, 'ca.crt'),
      'internal-cert': join(a, 'node.crt'),
      'internal-key': join(a, 'node.key'),
    });
    expect(own?.ownCertificateProblems()).toEqual([]);
    const foreign = internalTlsFromFlags({
      'internal-ca': join(a, 'ca.crt'),
      'internal-cert': join(b, 'node.crt'),
      'internal-key': join(b, 'node.key'),
    });
    expect(foreign?.ownCertificateProblems()).toEqual([
      expect.stringMatching(/was not issued by --internal-ca/),
    ]);
    const later = new Date(Date.now() + 3 * 86_400_000);
    expect(own?.ownCertificateProblems(later)).toEqual([expect.stringMatching(/node\.crt expired at/)]);
    expect(() =>
      internalTlsFromFlags({
        'internal-ca': join(a, 'ca.crt'),
        'internal-cert': join(a, 'node.crt'),
        'internal-key': join(b, 'node.key'),
      }),
    ).toThrow(/--internal-key .* is not the private key of --internal-cert/);
  });
});
