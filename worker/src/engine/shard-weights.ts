// Loads one shard's weights (a layer range, one tensor-parallel slice) straight from the
// checkpoint's byte ranges into device memory. Only the bytes this shard needs are read.

import type { AwqLinear, Device, DType, Tensor } from '@medcluster/kernels';
import type { Checkpoint, LlamaConfig, TensorEntry } from '../checkpoint/types.js';
import { evenSplit, type Range, vocabShard } from './tp-slices.js';
import type { ShardSpec } from './types.js';

export interface LayerWeights {
  inputNorm: Tensor;
  postAttentionNorm: Tensor;
  q: AwqLinear;
  k: AwqLinear;
  v: AwqLinear;
  o: AwqLinear;
  gate: AwqLinear;
  up: AwqLinear;
  down: AwqLinear;
}

export interface ShardWeights {
  layers: LayerWeights[];
  embed?: Tensor;
  finalNorm?: Tensor;
  lmHead?: Tensor;
  /** Vocabulary rows of lm_head held by this rank. */
  vocabRange?: Range;
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
  rows?: Range;
  cols?: Range;
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

  /** A column-parallel AWQ layer: output columns `cols` (multiples of 8). */
  awqColumns(prefix: string, cols: Range, groupSize: number): AwqLinear {
    const packed = { start: cols.start / 8, end: cols.end / 8 };
    return {
      qweight: this.read(`${prefix}.qweight`, { cols: packed }),
      qzeros: this.read(`${prefix}.qzeros`, { cols: packed }),
      scales: this.read(`${prefix}.scales`, { cols }),
      groupSize,
    };
  }

  /** A row-parallel AWQ layer: input rows `rows` (on group boundaries). */
  awqRows(prefix: string, rows: Range, groupSize: number): AwqLinear {
    const groups = { start: rows.start / groupSize, end: rows.end / groupSize };
    return {
      qweight: this.read(`${prefix}.qweight`, { rows }),
      qzeros: this.read(`${prefix}.qzeros`, { rows: groups }),
      scales: this.read(`${prefix}.scales`, { rows: groups }),
      groupSize,
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
  const { tpRank: rank, tpSize: tp } = spec;
  const g = config.quant.groupSize;
  const reader = new ShardReader(device, checkpoint, shardBytes(checkpoint, spec), onProgress);
  const qCols = evenSplit(config.numHeads * config.headDim, tp, rank, config.headDim, 'query heads');
  const kvCols = evenSplit(config.numKvHeads * config.headDim, tp, rank, config.headDim, 'KV heads');
  const mlpCols = evenSplit(config.intermediateSize, tp, rank, g, 'intermediate size');
  const oRows = evenSplit(config.numHeads * config.headDim, tp, rank, g, 'o_proj input');

  const layers: LayerWeights[] = [];
  for (let i = spec.layerStart; i < spec.layerEnd; i++) {
    const p = `model.layers.${i}`;
    layers.push({
      inputNorm: reader.read(`${p}.input_layernorm.weight`),
      q: reader.awqColumns(`${p}.self_attn.q_proj`, qCols, g),
      k: reader.awqColumns(`${p}.self_attn.k_proj`, kvCols, g),
      v: reader.awqColumns(`${p}.self_attn.v_proj`, kvCols, g),
      o: reader.awqRows(`${p}.self_attn.o_proj`, oRows, g),
      postAttentionNorm: reader.read(`${p}.post_attention_layernorm.weight`),
      gate: reader.awqColumns(`${p}.mlp.gate_proj`, mlpCols, g),
      up: reader.awqColumns(`${p}.mlp.up_proj`, mlpCols, g),
      down: reader.awqRows(`${p}.mlp.down_proj`, mlpCols, g),
    });
  }
  const weights: ShardWeights = { layers };
  if (spec.embeds) weights.embed = reader.read('model.embed_tokens.weight');
  if (spec.computesLogits) {
    weights.finalNorm = reader.read('model.norm.weight');
    weights.vocabRange = vocabShard(config.vocabRows, tp, rank);
    weights.lmHead = reader.read('lm_head.weight', { rows: weights.vocabRange });
  }
  return weights;
}

export function disposeShardWeights(weights: ShardWeights): void {
  const awq = (w: AwqLinear) => {
    w.qweight.dispose();
    w.qzeros.dispose();
    w.scales.dispose();
  };
  for (const l of weights.layers) {
    l.inputNorm.dispose();
    l.postAttentionNorm.dispose();
    for (const w of [l.q, l.k, l.v, l.o, l.gate, l.up, l.down]) awq(w);
  }
  weights.embed?.dispose();
  weights.finalNorm?.dispose();
  weights.lmHead?.dispose();
}
