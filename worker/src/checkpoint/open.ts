// openCheckpoint: read the configs, validate every safetensors header and the index, then check that
// every tensor the config implies is present with the right dtype and shape. Nothing is trusted before
// it is checked, and no tensor data is read.

import { readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { parseConfig } from './config.js';
import { CheckpointError } from './errors.js';
import { expectedTensors, shapeProblems } from './layout.js';
import { readSafetensorsHeader } from './safetensors.js';
import type { Checkpoint, LlamaConfig, TensorEntry } from './types.js';

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';
const EMBED = 'model.embed_tokens.weight';

async function readJson(path: string, required: boolean): Promise<unknown | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    if (!required && (cause as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CheckpointError(`${basename(path)}: cannot read ${path}`, { cause });
  }
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new CheckpointError(`${basename(path)}: not valid JSON (${(cause as Error).message})`, { cause });
  }
}

/** The weight_map of the index: tensor name -> shard file name (a plain name inside the checkpoint dir). */
function parseIndex(json: unknown): Map<string, string> {
  const map = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw new CheckpointError(`${INDEX_FILE}: missing "weight_map" object`);
  }
  const out = new Map<string, string>();
  for (const [name, file] of Object.entries(map)) {
    if (typeof file !== 'string' || file === '' || basename(file) !== file) {
      throw new CheckpointError(
        `${INDEX_FILE}: weight_map entry for ${name} is ${JSON.stringify(file)}, not a file name in the checkpoint`,
      );
    }
    out.set(name, file);
  }
  return out;
}

async function readTensors(dir: string): Promise<Map<string, TensorEntry>> {
  const indexJson = await readJson(join(dir, INDEX_FILE), false);
  const weightMap = indexJson === undefined ? undefined : parseIndex(indexJson);
  const files = weightMap ? [...new Set(weightMap.values())].sort() : [SINGLE_FILE];
  const tensors = new Map<string, TensorEntry>();
  for (const file of files) {
    for (const entry of await readSafetensorsHeader(join(dir, file))) {
      const other = tensors.get(entry.name);
      if (other)
        throw new CheckpointError(`${file}: tensor ${entry.name} is also stored in ${basename(other.file)}`);
      if (weightMap && weightMap.get(entry.name) !== file) {
        const listed = weightMap.get(entry.name);
        throw new CheckpointError(
          `${file}: holds tensor ${entry.name} but ${INDEX_FILE} ${listed ? `maps it to ${listed}` : 'does not list it'}`,
        );
      }
      tensors.set(entry.name, entry);
    }
  }
  if (weightMap) {
    for (const [name, file] of weightMap) {
      if (!tensors.has(name))
        throw new CheckpointError(
          `${INDEX_FILE}: maps tensor ${name} to ${file}, but ${file} has no such tensor`,
        );
    }
  }
  return tensors;
}

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

function checkTensors(tensors: ReadonlyMap<string, TensorEntry>, config: LlamaConfig): void {
  const problems = shapeProblems(config);
  if (problems.length > 0) throw new CheckpointError(`config.json: ${problems.join('; ')}`);
  for (const want of expectedTensors(config)) {
    const got = tensors.get(want.name);
    if (!got)
      throw new CheckpointError(
        `tensor ${want.name} (${want.dtype} ${shapeText(want.shape)}) is missing from the checkpoint`,
      );
    const file = basename(got.file);
    if (got.dtype !== want.dtype) {
      throw new CheckpointError(
        `${file}: tensor ${want.name} has dtype ${got.dtype}, expected ${want.dtype}`,
      );
    }
    if (got.shape.length !== want.shape.length || got.shape.some((d, i) => d !== want.shape[i])) {
      throw new CheckpointError(
        `${file}: tensor ${want.name} has shape ${shapeText(got.shape)}, expected ${shapeText(want.shape)}`,
      );
    }
  }
}

/** Opens and fully validates a checkpoint directory. Throws CheckpointError on any inconsistency. */
export async function openCheckpoint(dir: string): Promise<Checkpoint> {
  const root = resolve(dir);
  const configJson = await readJson(join(root, 'config.json'), true);
  const quantJson = await readJson(join(root, 'quant_config.json'), false);
  const parsed = parseConfig(configJson, quantJson);
  const tensors = await readTensors(root);
  const embed = tensors.get(EMBED);
  if (!embed)
    throw new CheckpointError(`tensor ${EMBED} is missing from the checkpoint (its rows are the vocabulary)`);
  if (embed.shape.length !== 2 || embed.shape[1] !== parsed.hiddenSize) {
    throw new CheckpointError(
      `${basename(embed.file)}: tensor ${EMBED} has shape ${shapeText(embed.shape)}, expected [rows, ${parsed.hiddenSize}]`,
    );
  }
  const config: LlamaConfig = { ...parsed, vocabRows: embed.shape[0] };
  checkTensors(tensors, config);
  return {
    dir: root,
    config,
    tensors,
    tensor(name: string): TensorEntry {
      const entry = tensors.get(name);
      if (!entry) throw new CheckpointError(`tensor ${name} is not in the checkpoint at ${root}`);
      return entry;
    },
  };
}
