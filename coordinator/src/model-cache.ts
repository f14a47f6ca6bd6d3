// Generated checkpoints used when no --model is given (`npm start`, benchmarks, tests):
// made once with the project's own deterministic generator and kept in a cache folder.

import { existsSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { makeModel } from '@medcluster/worker';

export interface GeneratedModel {
  preset: 'tiny' | 'llama-2-70b';
  seed: number;
  layers?: number;
  vocabRows?: number;
}

export const TINY_MODEL: GeneratedModel = { preset: 'tiny', seed: 0 };

export function defaultModelCache(): string {
  return process.env.MEDCLUSTER_MODEL_CACHE ?? join(homedir(), '.cache', 'medcluster', 'models');
}

/** Path of a generated checkpoint, generating it on first use (safe against concurrent callers). */
export async function ensureGeneratedModel(
  model: GeneratedModel = TINY_MODEL,
  cache = defaultModelCache(),
): Promise<string> {
  const { preset, seed, layers, vocabRows } = model;
  const dir = join(
    cache,
    `${preset}-seed${seed}${layers ? `-layers${layers}` : ''}${vocabRows ? `-vocab${vocabRows}` : ''}`,
  );
  if (existsSync(join(dir, '.complete'))) return dir;
  console.error(`medcluster: generating the ${preset} model in ${dir} (first use only)`);
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  await makeModel({ out: tmp, preset, seed, layers, vocabRows });
  await writeFile(join(tmp, '.complete'), '');
  if (existsSync(join(dir, '.complete'))) {
    await rm(tmp, { recursive: true, force: true }); // another process finished first
  } else {
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  }
  return dir;
}
