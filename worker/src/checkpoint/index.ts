// The checkpoint package: read and validate AWQ Llama checkpoints, and generate synthetic ones.

export { quantizeAwq } from './awq-quantize.js';
export { type ParsedConfig, parseAwqConfig, parseConfig } from './config.js';
export { CheckpointError } from './errors.js';
export {
  blockLinears,
  type CheckpointShape,
  type ExpectedTensor,
  expectedTensors,
  type LinearSpec,
  linearTensors,
  PACK_FACTOR,
  PROJ_NAMES,
  type ProjName,
  projFeatures,
  shapeProblems,
  tensorByteLength,
  totalTensorBytes,
} from './layout.js';
export {
  type MakeModelOptions,
  type MakeModelProgress,
  type MakeModelResult,
  makeModel,
} from './make-model.js';
export { INDEX_FILE, openCheckpoint, SINGLE_FILE } from './open.js';
export {
  type ModelSpec,
  type PresetName,
  presetConfig,
  resolveModelSpec,
  type ShapeOverrides,
} from './presets.js';
export { encodeSafetensorsHeader, readSafetensorsHeader } from './safetensors.js';
export { generateFp16Weight, LM_HEAD_LOGIT_STD } from './tiny-weights.js';
export { CHATML_TEMPLATE, MEDITRON_ADDED_TOKENS, writeTokenizerFiles } from './tokenizer-files.js';
export type * from './types.js';
