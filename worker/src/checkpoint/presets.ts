// Generator presets and the command-line overrides on top of them.

import { parseConfig } from './config.js';
import { CheckpointError } from './errors.js';
import { type CheckpointShape, shapeProblems } from './layout.js';
import { configJson } from './model-files.js';
import type { LlamaConfig } from './types.js';

export type PresetName = 'tiny' | 'llama-2-70b';

/** Everything the generator writes into config.json besides the tensors. */
export interface ModelSpec extends CheckpointShape {
  preset: PresetName;
  maxPositions: number;
  ropeTheta: number;
  rmsNormEps: number;
  bosTokenId: number;
  eosTokenId: number;
  /** Number of safetensors shards; >= 2 so sharded loading is always exercised. */
  shards: number;
}

export interface ShapeOverrides {
  layers?: number;
  hidden?: number;
  heads?: number;
  kvHeads?: number;
  intermediate?: number;
  vocabRows?: number;
}

const COMMON = {
  maxPositions: 4096,
  ropeTheta: 10000,
  rmsNormEps: 1e-5,
  bosTokenId: 1,
  eosTokenId: 2,
  quant: { groupSize: 128 },
};

/** Dimensions before headDim is derived (headDim = hidden / heads). */
const PRESETS: Record<PresetName, Omit<ModelSpec, 'headDim'>> = {
  // Small enough to run on a CPU in tests; vocabRows covers Meditron's 19 added tokens.
  tiny: {
    ...COMMON,
    preset: 'tiny',
    numLayers: 4,
    hiddenSize: 512,
    numHeads: 8,
    numKvHeads: 4,
    intermediateSize: 1536,
    vocabRows: 32019,
    shards: 2,
  },
  // MODEL.md's shapes: 80 x 23 + 3 = 1843 tensors, 36.61 GB in 4 shards.
  'llama-2-70b': {
    ...COMMON,
    preset: 'llama-2-70b',
    numLayers: 80,
    hiddenSize: 8192,
    numHeads: 64,
    numKvHeads: 8,
    intermediateSize: 28672,
    vocabRows: 32000,
    shards: 4,
  },
};

function isPreset(name: string): name is PresetName {
  return Object.hasOwn(PRESETS, name);
}

/** The preset with overrides applied; throws CheckpointError listing every problem with the result. */
export function resolveModelSpec(preset: string, overrides: ShapeOverrides = {}): ModelSpec {
  if (!isPreset(preset)) {
    throw new CheckpointError(
      `unknown preset ${JSON.stringify(preset)} (expected one of ${Object.keys(PRESETS).join(', ')})`,
    );
  }
  const base = PRESETS[preset];
  const pick = (value: number | undefined, fallback: number) => (value === undefined ? fallback : value);
  const hiddenSize = pick(overrides.hidden, base.hiddenSize);
  const numHeads = pick(overrides.heads, base.numHeads);
  const spec: ModelSpec = {
    ...base,
    numLayers: pick(overrides.layers, base.numLayers),
    hiddenSize,
    numHeads,
    numKvHeads: pick(
      overrides.kvHeads,
      overrides.heads !== undefined && overrides.kvHeads === undefined
        ? Math.min(base.numKvHeads, numHeads)
        : base.numKvHeads,
    ),
    intermediateSize: pick(overrides.intermediate, base.intermediateSize),
    vocabRows: pick(overrides.vocabRows, base.vocabRows),
    headDim: hiddenSize / numHeads,
  };
  const problems: string[] = [];
  if (
    Number.isSafeInteger(hiddenSize) &&
    Number.isSafeInteger(numHeads) &&
    numHeads > 0 &&
    hiddenSize % numHeads !== 0
  ) {
    problems.push(`hidden size (${hiddenSize}) must be a multiple of heads (${numHeads})`);
  } else {
    problems.push(...shapeProblems(spec).map((p) => p.replace('headDim', 'head_dim (hidden / heads)')));
  }
  if (problems.length > 0)
    throw new CheckpointError(`invalid model shape for preset ${preset}: ${problems.join('; ')}`);
  return spec;
}

/** The LlamaConfig a checkpoint of this preset would have, without writing one (synthetic weights). */
export function presetConfig(preset: string, overrides: ShapeOverrides = {}): LlamaConfig {
  const spec = resolveModelSpec(preset, overrides);
  return { ...parseConfig(configJson(spec), undefined), vocabRows: spec.vocabRows };
}
