// Checkpoints for tests: generated once per machine into the repository's .models folder
// (gitignored) and shared by every test file.

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureGeneratedModel, type GeneratedModel } from '@medcluster/coordinator';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CACHE = process.env.MEDCLUSTER_TEST_MODELS ?? join(REPO, '.models');

export function testModel(model: Partial<GeneratedModel> = {}): Promise<string> {
  return ensureGeneratedModel({ preset: 'tiny', seed: 0, ...model }, CACHE);
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export async function safetensorsDigests(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).filter((f) => f.endsWith('.safetensors')).sort()) {
    out[f] = await sha256File(join(dir, f));
  }
  return out;
}
