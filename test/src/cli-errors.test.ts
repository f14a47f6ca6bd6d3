// What a user sees when the input is bad: a clear message and a non-zero exit, never a crash
// (no stack trace, nothing on stdout).

import { cp, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { runCli } from './harness/index.js';
import { testModel } from './models.js';

describe('medcluster on bad input', () => {
  let broken: string;

  beforeAll(async () => {
    broken = await mkdtemp(join(tmpdir(), 'medcluster-broken-'));
    await cp(await testModel(), broken, { recursive: true });
    await truncate(join(broken, 'model-00002-of-00002.safetensors'), 1_000_000);
  });
  afterAll(async () => rm(broken, { recursive: true, force: true }));

  test('a truncated checkpoint is named, with the tensor that does not fit', async () => {
    const r = await runCli(['generate', '--model', broken, '--prompt', 'hi', '--max-tokens', '2']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/model-00002-of-00002\.safetensors.*(truncated|past the end|ends at byte)/);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  test('a missing model directory and unknown flags are reported plainly', async () => {
    const missing = await runCli(['generate', '--model', join(broken, 'nope'), '--prompt', 'hi']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/nope/);
    const flag = await runCli(['generate', '--modle', 'x']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/Unknown option '--modle'/);
    const command = await runCli(['serve']);
    expect(command.code).toBe(2);
    expect(command.stderr).toMatch(/unknown command 'serve'/);
  });

  test('settings from a file or the environment are checked at start like flags', async () => {
    const file = join(broken, 'settings.json');
    await writeFile(file, JSON.stringify({ 'max-batch-tokenz': 64 }));
    const unknown = await runCli(['up', '--config', file]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown setting "max-batch-tokenz"/);
    const env = await runCli(['up', '--model', broken], 20_000, { MEDCLUSTER_MAX_RUNNING: 'lots' });
    expect(env.code).toBe(2);
    expect(env.stderr).toMatch(/--max-running must be an integer, got lots/);
    const help = await runCli(['coordinator', '--help']);
    expect(help.stdout).toMatch(/MEDCLUSTER_<FLAG>/);
  });
});
