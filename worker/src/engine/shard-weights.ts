// Loads one shard's weights (a layer range, one tensor-parallel slice) straight from the
// checkpoint's byte ranges into device memory. Only the bytes this shard needs are read.

import {
  type AwqLinear,
  type AwqWeights,
  type Device,
  type DType,
  disposeAwq,
  type Tensor,
} from '@medcluster/kernels';
import type { ProjName } from '../checkpoint/layout.js';
import type { Checkpoint, LlamaConfig, TensorEntry } from '../checkpoint/types.js';
import { type IndexRange, type TensorRange, tpSlice, vocabShard } from './tp-slice.js';
import type { ShardSpec } from './types.js';

/**
 * One decoder block. q/k/v and gate/up are each concatenated along their outputs into one
 * AWQ matrix at load time (this rank's columns of each, in that order): one matmul reads
 * them, where separate calls pay each matrix's ramp and tail (the 8192 x 1024 k and v above
 * all), and the engine splits the fused output's columns. Every matrix is then in the layout
 * the device's kernels read (Device.packAwq: packed on CUDA, the AutoAWQ tensors on CPU).
 */
export interface LayerWeights {
  inputNorm: Tensor;
  postAttentionNorm: Tensor;
  /** [q | k | v] columns. */
  qkv: AwqWeights;
  o: AwqWeights;
  /** [gate | up] columns. */
  gateUp: AwqWeights;
  down: AwqWeights;
}

/** One AWQ matrix holding the parts' output columns side by side; the parts are freed. */
export function fuseAwqColumns(device: Device, parts: AwqLinear[]): AwqLinear {
  const fused: AwqLinear = {
    qweight: device.concatCols(parts.map((p) => p.qweight)),
    qzeros: device.concatCols(parts.map((p) => p.qzeros)),
    scales: device.concatCols(parts.map((p) => p.scales)),
    groupSize: parts[0].groupSize,
  };
  for (const p of parts) disposeAwq(p);
  return fused;
}

export interface ShardWeights {
  layers: LayerWeights[];
  embed?: Tensor;
  finalNorm?: Tensor;
  lmHead?: Tensor;
  /** Vocabulary rows of lm_head held by this rank. */
  vocabRange?: IndexRange;
}

/** Called after each tensor is queued for reading. */
export type LoadProgress = (loadedBytes: number, totalBytes: number) => void;

const DTYPES: Record<string, DType> = { F16: 'f16', I32: 'i32', F32: 'f32' };

function dtypeOf(entry: TensorEntry): DType {
  const dtype = DTYPES[entry.dtype];
  if (!dtype) throw new Error(`${entry.name}: dtype ${entry.dtype} is not supported`);
  return dtype;
}

interface Region {
  rows?: IndexRange;
  cols?: IndexRange;
}

/** A TensorRange (one dimension sliced) as rows/cols of a 2-D read. */
function region(range: TensorRange): Region {
  const r = { start: range.start, end: range.end };
  return range.dim === 0 ? { rows: r } : { cols: r };
}

class ShardReader {
  loadedBytes = 0;
  constructor(
    private readonly device: Device,
    private readonly checkpoint: Checkpoint,
    private readonly totalBytes: number,
    private readonly onProgress?: LoadProgress,
  ) {}

  /** Reads a 1-D or 2-D tensor, optionally a sub-rectangle of it. */
  read(name: string, region: Region = {}): Tensor {
    const entry = this.checkpoint.tensor(name);
    const is1d = entry.shape.length === 1;
    const rows = is1d ? 1 : entry.shape[0];
    const cols = is1d ? entry.shape[0] : entry.shape[1];
    const r = region.rows ?? { start: 0, end: rows };
    const c = region.cols ?? { start: 0, end: cols };
    const tensor = this.device.readFile({
      path: entry.file,
      offset: entry.offset,
      dtype: dtypeOf(entry),
      rows,
      cols,
      rowStart: r.start,
      rowEnd: r.end,
      colStart: c.start,
      colEnd: c.end,
      shape: is1d ? [c.end - c.start] : [r.end - r.start, c.end - c.start],
    });
    this.loadedBytes += (r.end - r.start) * (c.end - c.start) * (entry.dtype === 'F16' ? 2 : 4);
    this.onProgress?.(this.loadedBytes, this.totalBytes);
    return tensor;
  }

  /** This rank's part of one AWQ linear, as MODEL.md's tensor-parallel split rules say. */
  awq(prefix: string, proj: ProjName, config: LlamaConfig, spec: ShardSpec): AwqLinear {
    const slice = tpSlice(config, proj, spec.tpSize, spec.tpRank);
    return {
      qweight: this.read(`${prefix}.qweight`, region(slice.qweight)),
      qzeros: this.read(`${prefix}.qzeros`, region(slice.qzeros)),
      scales: this.read(`${prefix}.scales`, region(slice.scales)),
      groupSize: config.quant.groupSize,
    };
  }
}

/** The per-rank sizes of a tensor-parallel shard of this config. */
export function localDims(config: LlamaConfig, tpSize: number) {
  return {
    numHeads: config.numHeads / tpSize,
    numKvHeads: config.numKvHeads / tpSize,
    intermediate: config.intermediateSize / tpSize,
  };
}

/** Bytes this shard reads from the checkpoint (for progress reporting and memory planning). */
export function shardBytes(checkpoint: Checkpoint, spec: ShardSpec): number {
  let bytes = 0;
  for (const entry of checkpoint.tensors.values()) {
    const layer = /^model\.layers\.(\d+)\./.exec(entry.name);
    if (layer) {
      const i = Number(layer[1]);
      if (i < spec.layerStart || i >= spec.layerEnd) continue;
      bytes += entry.name.endsWith('layernorm.weight') ? entry.byteLength : entry.byteLength / spec.tpSize;
    } else if (entry.name === 'model.embed_tokens.weight') {
      if (spec.embeds) bytes += entry.byteLength;
    } else if (spec.computesLogits) {
      bytes += entry.name === 'lm_head.weight' ? entry.byteLength / spec.tpSize : entry.byteLength;
    }
  }
  return Math.round(bytes);
}

export function loadShardWeights(
  device: Device,
  checkpoint: Checkpoint,
  spec: ShardSpec,
  onProgress?: LoadProgress,
): ShardWeights {
  const { config } = checkpoint;
  const reader = new ShardReader(device, checkpoint, shardBytes(checkpoint, spec), onProgress);
  const layers: LayerWeights[] = [];
  for (let i = spec.layerStart; i < spec.layerEnd; i++) {
    const p = `model.layers.${i}`;
    const awq = (proj: ProjName, module: 'self_attn' | 'mlp') =>
      reader.awq(`${p}.${module}.${proj}`, proj, config, spec);
    layers.push({
      inputNorm: reader.read(`${p}.input_layernorm.weight`),
      qkv: device.packAwq(
        fuseAwqColumns(device, [
          awq('q_proj', 'self_attn'),
          awq('k_proj', 'self_attn'),
          awq('v_proj', 'self_attn'),
        ]),
      ),
      o: device.packAwq(awq('o_proj', 'self_attn')),
      postAttentionNorm: reader.read(`${p}.post_attention_layernorm.weight`),
      gateUp: device.packAwq(fuseAwqColumns(device, [awq('gate_proj', 'mlp'), awq('up_proj', 'mlp')]), {
        gated: true,
      }),
      down: device.packAwq(awq('down_proj', 'mlp')),
    });
  }
  const weights: ShardWeights = { layers };
  if (spec.embeds) weights.embed = reader.read('model.embed_tokens.weight');
  if (spec.computesLogits) {
    weights.finalNorm = reader.read('model.norm.weight');
    weights.vocabRange = vocabShard(config.vocabRows, spec.tpSize, spec.tpRank);
    weights.lmHead = reader.read('lm_head.weight', { rows: weights.vocabRange });
  }
  return weights;
}

export function disposeShardWeights(weights: ShardWeights): void {
  for (const l of weights.layers) {
    l.inputNorm.dispose();
    l.postAttentionNorm.dispose();
    for (const w of [l.qkv, l.o, l.gateUp, l.down]) disposeAwq(w);
  }
  weights.embed?.dispose();
  weights.finalNorm?.dispose();
  weights.lmHead?.dispose();
}
