import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { deviceFlag, envNameOf, parseFlags, UsageError } from './args.js';

const OPTIONS = {
  tp: { type: 'string', default: '1' },
  'max-batch-tokens': { type: 'string', default: '512' },
  'ignore-eos': { type: 'boolean' },
  help: { type: 'boolean' },
} as const;

function config(json: unknown): string {
  const file = join(mkdtempSync(join(tmpdir(), 'medcluster-config-')), 'settings.json');
  writeFileSync(file, typeof json === 'string' ? json : JSON.stringify(json));
  return file;
}

describe('settings from flags, the environment and a file', () => {
  test('the command line wins over the environment, the environment over the file, the file over defaults', () => {
    const file = config({ tp: 4, 'max-batch-tokens': 1024, 'ignore-eos': true });
    const env = { MEDCLUSTER_TP: '2', MEDCLUSTER_CONFIG: file };
    expect(parseFlags(['--tp', '8'], OPTIONS, 'usage', { env })).toMatchObject({
      tp: '8',
      'max-batch-tokens': '1024',
      'ignore-eos': true,
    });
    expect(parseFlags([], OPTIONS, 'usage', { env })).toMatchObject({ tp: '2', 'max-batch-tokens': '1024' });
    expect(parseFlags(['--config', file], OPTIONS, 'usage', { env: {} })).toMatchObject({ tp: '4' });
    expect(parseFlags([], OPTIONS, 'usage', { env: {} })).toMatchObject({
      tp: '1',
      'max-batch-tokens': '512',
    });
    expect(parseFlags([], OPTIONS, 'usage', { env: { MEDCLUSTER_IGNORE_EOS: 'false' } })['ignore-eos']).toBe(
      false,
    );
    expect(envNameOf('max-batch-tokens')).toBe('MEDCLUSTER_MAX_BATCH_TOKENS');
  });

  test('without sources only the command line counts', () => {
    expect(parseFlags([], OPTIONS, 'usage').tp).toBe('1');
    expect(() => parseFlags(['--config', 'x.json'], OPTIONS, 'usage')).toThrow(UsageError);
  });

  test('bad settings are refused at start, naming where they came from', () => {
    const bad = (argv: string[], env: Record<string, string>) => () =>
      parseFlags(argv, OPTIONS, 'usage', { env });
    expect(bad(['--config', config({ tpp: 2 })], {})).toThrow(/unknown setting "tpp"/);
    expect(bad(['--config', config('{ not json')], {})).toThrow(/--config .*settings\.json: /);
    expect(bad(['--config', config([1, 2])], {})).toThrow(/must be a JSON object/);
    expect(bad(['--config', config({ tp: { n: 2 } })], {})).toThrow(
      /settings\.json: tp must be a string or a number/,
    );
    expect(bad([], { MEDCLUSTER_IGNORE_EOS: 'maybe' })).toThrow(
      /MEDCLUSTER_IGNORE_EOS must be true or false/,
    );
    expect(bad(['--config', '/nonexistent/settings.json'], {})).toThrow(
      /--config \/nonexistent\/settings\.json: ENOENT/,
    );
    expect(bad(['--tpp', '2'], {})).toThrow(/Unknown option '--tpp'/);
  });
});

describe('--device', () => {
  test('is cpu or cuda; anything else is a usage error that names it', () => {
    expect(deviceFlag('cpu')).toBe('cpu');
    expect(deviceFlag('cuda')).toBe('cuda');
    expect(() => deviceFlag('gpu')).toThrow(UsageError);
    expect(() => deviceFlag('gpu')).toThrow('--device must be cpu or cuda, got gpu');
  });
});
