import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLoadingServer } from '../http/loading-server.js';
import { ApiKeys, ApiKeysError } from './api-keys.js';

const A = 'a'.repeat(16);
const B = 'key-b-0123456789abcdef';

describe('ApiKeys', () => {
  it('reads one key per line with comments and blank lines, or comma-separated', () => {
    const keys = ApiKeys.parse(`# team A\n${A}\n\n  ${B}  # rotated 2026-11\n`, 'test');
    expect(keys.size).toBe(2);
    expect(keys.accepts(A)).toBe(true);
    expect(keys.accepts(B)).toBe(true);
    expect(ApiKeys.parse(`${A}, ${B}`, 'env').size).toBe(2);
  });

  it('checks Authorization values: Bearer in any case, nothing else', () => {
    const keys = ApiKeys.parse(A, 'test');
    expect(keys.check(`Bearer ${A}`)).toBeUndefined();
    expect(keys.check(`bearer ${A}`)).toBeUndefined();
    expect(keys.check(`BEARER  ${A} `)).toBeUndefined();
    expect(keys.check(undefined)).toBe('missing');
    expect(keys.check('')).toBe('missing');
    for (const bad of [
      A,
      `Basic ${A}`,
      `Bearer ${A}x`,
      `Bearer ${A.slice(1)}`,
      `Bearer ${A} extra`,
      'Bearer ',
    ])
      expect(keys.check(bad), bad).toBe('invalid');
  });

  it('refuses short keys, spaces, control characters and files with no key, naming the line and not the key', () => {
    const cases: [string, RegExp][] = [
      ['short-key', /test line 1: a key must be at least 16 characters/],
      [`${A}\n${'b'.repeat(10)}x\u00e9yyyyyyyyy`, /test line 2: a key must be printable ASCII/],
      ['# only a comment\n\n', /test holds no key/],
    ];
    for (const [text, message] of cases) {
      const parse = () => ApiKeys.parse(text, 'test');
      expect(parse).toThrow(ApiKeysError);
      expect(parse).toThrow(message);
      try {
        parse();
      } catch (err) {
        expect((err as Error).message).not.toContain('short-key');
        expect((err as Error).message).not.toContain('bbbbbbbbbb');
      }
    }
  });

  it('reads a file, and says which file it could not read', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'api-keys-'));
    try {
      await writeFile(join(dir, 'keys'), `${B}\n`);
      expect(ApiKeys.fromFile(join(dir, 'keys')).accepts(B)).toBe(true);
      expect(() => ApiKeys.fromFile(join(dir, 'missing'))).toThrow(
        /--api-keys-file: cannot read .*missing \(ENOENT\)/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('the loading port with API keys, over a real socket', () => {
  const app = createLoadingServer(1 << 20, { apiKeys: ApiKeys.parse(A, 'test') });
  let base: string;
  beforeAll(async () => {
    base = await app.listen({ host: '127.0.0.1', port: 0 });
  });
  afterAll(() => app.close());

  it('asks for a key before it says "loading", but not on GET /health or a CORS preflight', async () => {
    const anonymous = await fetch(`${base}/v1/models`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect((await anonymous.json()).error.code).toBe('invalid_api_key');
    const tgi = await fetch(`${base}/generate`, { method: 'POST', body: '{}' });
    expect(tgi.status).toBe(401);
    expect(await tgi.json()).toMatchObject({ error_type: 'unauthorized' });
    const keyed = await fetch(`${base}/v1/models`, { headers: { authorization: `Bearer ${A}` } });
    expect(keyed.status).toBe(503);
    expect((await fetch(`${base}/health`)).status).toBe(503);
    expect((await fetch(`${base}/health`, { method: 'HEAD' })).status).toBe(503);
    expect((await fetch(`${base}/health?probe=1`)).status).toBe(503);
    // Only exactly /health is open.
    expect((await fetch(`${base}/healthz`)).status).toBe(401);
    expect((await fetch(`${base}/health/../v1/models`)).status).toBe(401);
    expect((await fetch(`${base}/health`, { method: 'POST' })).status).toBe(401);
    expect((await fetch(`${base}/v1/models`, { method: 'OPTIONS' })).status).not.toBe(401);
  });
});
