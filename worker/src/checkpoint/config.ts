// config.json (Llama fields) and the AWQ quantization settings, which come either from config.json's
// `quantization_config` block (newer exports) or from quant_config.json (AutoAWQ): both key spellings.

import { CheckpointError } from './errors.js';
import type { AwqConfig, LlamaConfig } from './types.js';

type Json = Record<string, unknown>;

/** Everything in LlamaConfig but vocabRows, which only the embedding tensor's shape can tell. */
export type ParsedConfig = Omit<LlamaConfig, 'vocabRows'>;

function int(where: string, json: Json, key: string, fallback?: number): number {
  const value = json[key] ?? fallback;
  if (value === undefined) throw new CheckpointError(`${where}: missing required field "${key}"`);
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new CheckpointError(
      `${where}: field "${key}" must be a positive integer, found ${JSON.stringify(value)}`,
    );
  }
  return value;
}

function positive(where: string, json: Json, key: string, fallback?: number): number {
  const value = json[key] ?? fallback;
  if (value === undefined) throw new CheckpointError(`${where}: missing required field "${key}"`);
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
    throw new CheckpointError(
      `${where}: field "${key}" must be a positive number, found ${JSON.stringify(value)}`,
    );
  }
  return value;
}

/** A token id; newer configs may list several eos ids, and the first is the one generation stops on. */
function tokenId(where: string, json: Json, key: string, fallback: number): number {
  let value = json[key] ?? fallback;
  if (Array.isArray(value)) value = value[0];
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new CheckpointError(
      `${where}: field "${key}" must be a token id, found ${JSON.stringify(json[key])}`,
    );
  }
  return value;
}

/** Reads one AWQ block in either spelling and rejects anything but 4-bit zero-point GEMM. */
export function parseAwqConfig(where: string, json: Json): AwqConfig {
  const method = json.quant_method;
  if (method !== undefined && String(method).toLowerCase() !== 'awq') {
    throw new CheckpointError(
      `${where}: quant_method is ${JSON.stringify(method)}; only AWQ checkpoints are supported`,
    );
  }
  const bits = json.bits ?? json.w_bit;
  const groupSize = json.group_size ?? json.q_group_size;
  const zeroPoint = json.zero_point;
  const version = json.version;
  if (bits !== 4)
    throw new CheckpointError(
      `${where}: AWQ bits (bits/w_bit) is ${JSON.stringify(bits)}; only 4-bit is supported`,
    );
  if (typeof groupSize !== 'number' || !Number.isSafeInteger(groupSize) || groupSize <= 0) {
    throw new CheckpointError(
      `${where}: AWQ group size (group_size/q_group_size) must be a positive integer, found ${JSON.stringify(groupSize)}`,
    );
  }
  if (zeroPoint !== true) {
    throw new CheckpointError(
      `${where}: AWQ zero_point is ${JSON.stringify(zeroPoint)}; only zero-point quantization is supported`,
    );
  }
  if (typeof version !== 'string' || version.toLowerCase() !== 'gemm') {
    throw new CheckpointError(
      `${where}: AWQ version is ${JSON.stringify(version)}; only the GEMM packing is supported`,
    );
  }
  return { bits: 4, groupSize, zeroPoint: true, version: 'gemm' };
}

/**
 * Builds the config from config.json and (optionally) quant_config.json. When both carry AWQ settings
 * they must agree, so a checkpoint never loads with settings it was not written with.
 */
export function parseConfig(configJson: unknown, quantConfigJson: unknown | undefined): ParsedConfig {
  const where = 'config.json';
  if (typeof configJson !== 'object' || configJson === null || Array.isArray(configJson)) {
    throw new CheckpointError(`${where}: must be a JSON object`);
  }
  const c = configJson as Json;
  if (c.rope_scaling !== undefined && c.rope_scaling !== null) {
    throw new CheckpointError(
      `${where}: rope_scaling ${JSON.stringify(c.rope_scaling)} is not supported (Llama 2 uses none)`,
    );
  }
  const fromConfig =
    c.quantization_config !== undefined && c.quantization_config !== null
      ? parseAwqConfig(`${where} quantization_config`, c.quantization_config as Json)
      : undefined;
  const fromQuantFile =
    quantConfigJson !== undefined ? parseAwqConfig('quant_config.json', quantConfigJson as Json) : undefined;
  const quant = fromConfig ?? fromQuantFile;
  if (quant === undefined) {
    throw new CheckpointError(
      `${where} has no quantization_config and there is no quant_config.json: not an AWQ checkpoint`,
    );
  }
  if (fromConfig && fromQuantFile && fromConfig.groupSize !== fromQuantFile.groupSize) {
    throw new CheckpointError(
      `config.json quantization_config group size ${fromConfig.groupSize} disagrees with quant_config.json's ${fromQuantFile.groupSize}`,
    );
  }
  const hiddenSize = int(where, c, 'hidden_size');
  const numHeads = int(where, c, 'num_attention_heads');
  if (c.head_dim === undefined && hiddenSize % numHeads !== 0) {
    throw new CheckpointError(
      `${where}: hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}`,
    );
  }
  return {
    hiddenSize,
    intermediateSize: int(where, c, 'intermediate_size'),
    numLayers: int(where, c, 'num_hidden_layers'),
    numHeads,
    numKvHeads: int(where, c, 'num_key_value_heads', numHeads),
    headDim: int(where, c, 'head_dim', hiddenSize / numHeads),
    ropeTheta: positive(where, c, 'rope_theta', 10000),
    rmsNormEps: positive(where, c, 'rms_norm_eps'),
    maxPositions: int(where, c, 'max_position_embeddings'),
    bosTokenId: tokenId(where, c, 'bos_token_id', 1),
    eosTokenId: tokenId(where, c, 'eos_token_id', 2),
    quant,
  };
}
