// makeModel: writes a deterministic checkpoint in Meditron-70B-AWQ's exact layout (MODEL.md).
// `tiny` quantizes real random fp16 weights with AutoAWQ's rounding; `llama-2-70b` streams random
// nibbles and fp16 values at disk speed. Same options => same bytes.

import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CheckpointError } from './errors.js';
import { FastWeightSource } from './fast-weights.js';
import { expectedTensors, tensorByteLength } from './layout.js';
import { configJson, generationConfigJson, jsonText, quantConfigJson } from './model-files.js';
import { INDEX_FILE } from './open.js';
import { type ModelSpec, type PresetName, resolveModelSpec } from './presets.js';
import { encodeSafetensorsHeader } from './safetensors.js';
import { planShards, shardFileName, writeShard } from './shards.js';
import type { TensorSource } from './tensor-source.js';
import { TinyWeightSource } from './tiny-weights.js';
import { writeTokenizerFiles } from './tokenizer-files.js';

export interface MakeModelProgress {
  /** Weight-file bytes (headers included) written so far. */
  bytesWritten: number;
  totalBytes: number;
}

export interface MakeModelOptions {
  /** Output directory; created if missing. Files of the same names are overwritten. */
  out: string;
  preset: PresetName;
  seed: number;
  layers?: number;
  hidden?: number;
  heads?: number;
  kvHeads?: number;
  intermediate?: number;
  vocabRows?: number;
  onProgress?: (progress: MakeModelProgress) => void;
}

export interface MakeModelResult {
  dir: string;
  spec: ModelSpec;
  /** Shard file names, in order. */
  shards: string[];
  tensorCount: number;
  /** Bytes of all safetensors files, headers included. */
  totalBytes: number;
}

export async function makeModel(options: MakeModelOptions): Promise<MakeModelResult> {
  if (!Number.isSafeInteger(options.seed))
    throw new CheckpointError(`seed must be an integer, got ${options.seed}`);
  const spec = resolveModelSpec(options.preset, options);
  const dir = resolve(options.out);
  await mkdir(dir, { recursive: true });

  const tensors = expectedTensors(spec);
  const shards = planShards(tensors, spec.shards);
  const names = shards.map((_, i) => shardFileName(i, shards.length));
  const weightBytes = tensors.reduce((sum, t) => sum + tensorByteLength(t.dtype, t.shape), 0);
  const source: TensorSource =
    spec.preset === 'tiny'
      ? new TinyWeightSource(options.seed, spec.quant.groupSize)
      : new FastWeightSource(options.seed, spec.quant.groupSize);

  const weightMap: Record<string, string> = {};
  shards.forEach((shard, i) => {
    for (const t of shard) weightMap[t.name] = names[i];
  });
  await writeFile(join(dir, 'config.json'), jsonText(configJson(spec)));
  await writeFile(join(dir, 'quant_config.json'), jsonText(quantConfigJson(spec)));
  await writeFile(join(dir, 'generation_config.json'), jsonText(generationConfigJson(spec)));
  await writeFile(
    join(dir, INDEX_FILE),
    jsonText({
      metadata: { total_size: weightBytes },
      weight_map: Object.fromEntries(Object.entries(weightMap).sort()),
    }),
  );
  await writeTokenizerFiles(dir);

  // Header sizes are known up front, so progress can report a true total.
  const totalBytes = shards.reduce(
    (sum, shard) => sum + encodeSafetensorsHeader(shard).bytes.length,
    weightBytes,
  );
  let bytesWritten = 0;
  for (let i = 0; i < shards.length; i++) {
    await writeShard(join(dir, names[i]), shards[i], source, (bytes) => {
      bytesWritten += bytes;
      options.onProgress?.({ bytesWritten, totalBytes });
    });
  }
  return { dir, spec, shards: names, tensorCount: tensors.length, totalBytes };
}
