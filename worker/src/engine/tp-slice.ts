// Which part of each tensor a tensor-parallel rank reads (MODEL.md, "Tensor parallel split
// rules"). Column-parallel q/k/v/gate/up: whole heads / columns of the output dim. Row-parallel
// o/down: input rows on AWQ group boundaries. Embedding and lm_head: rows of the vocabulary.
import { type CheckpointShape, PACK_FACTOR, type ProjName } from '../checkpoint/layout.js';
import { projShape, type SplitKind } from './model-shape.js';
/** A tensor-parallel split that the model's shapes do not allow. */
export class TensorParallelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TensorParallelError';
  }
}

/** Half-open index range [start, end). */
export interface IndexRange {
  start: number;
  end: number;
}

/** A range along one dimension of a 2-D tensor; the other dimension is read whole. */
export interface TensorRange extends IndexRange {
  dim: 0 | 1;
}

export interface TpSlice {
  proj: ProjName;
  split: SplitKind;
  /** Full K and N of the linear. */
  inFeatures: number;
  outFeatures: number;
  /** Input features this rank consumes (all of them for column-parallel). */
  inputs: IndexRange;
  /** Output features this rank produces (all of them, as partial sums, for row-parallel). */
  outputs: IndexRange;
  /** Attention heads of this rank (q: query heads; k/v: KV heads); absent for other linears. */
  heads?: IndexRange;
  /** qweight int32 [K, N/8]. */
  qweight: TensorRange;
  /** qzeros int32 [K/G, N/8]. */
  qzeros: TensorRange;
  /** scales fp16 [K/G, N]. */
  scales: TensorRange;
}

function checkRank(tp: number, rank: number): void {
  if (!Number.isInteger(tp) || tp < 1)
    throw new TensorParallelError(`tp must be a positive integer, got ${tp}`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= tp) {
    throw new TensorParallelError(`tp rank ${rank} is not in 0..${tp - 1}`);
  }
}

/**
 * Rows [start, end) of a vocabulary of vocabRows that rank holds: an uneven split where the
 * first vocabRows % tp ranks hold one row more. Every row belongs to exactly one rank.
 */
export function vocabShard(vocabRows: number, tp: number, rank: number): IndexRange {
  checkRank(tp, rank);
  if (!Number.isInteger(vocabRows) || vocabRows < tp) {
    throw new TensorParallelError(`vocabulary of ${vocabRows} rows cannot be split over tp ${tp}`);
  }
  const base = Math.floor(vocabRows / tp);
  const extra = vocabRows % tp;
  const start = rank * base + Math.min(rank, extra);
  return { start, end: start + base + (rank < extra ? 1 : 0) };
}

/** The part of proj's qweight, qzeros and scales that rank reads. Throws if the split is invalid. */
export function tpSlice(config: CheckpointShape, proj: ProjName, tp: number, rank: number): TpSlice {
  checkRank(tp, rank);
  const { inFeatures, outFeatures, split } = projShape(config, proj);
  const g = config.quant.groupSize;
  if (split === 'column') {
    const cols = outFeatures / tp;
    if (!Number.isInteger(cols) || cols % PACK_FACTOR !== 0) {
      throw new TensorParallelError(
        `${proj}: ${outFeatures} output columns over tp ${tp} is not a whole multiple of ${PACK_FACTOR} columns per rank (one int32 packs ${PACK_FACTOR})`,
      );
    }
    const start = rank * cols;
    const end = start + cols;
    const headCount = proj === 'q_proj' ? config.numHeads : config.numKvHeads;
    const heads =
      proj === 'q_proj' || proj === 'k_proj' || proj === 'v_proj'
        ? { start: (rank * headCount) / tp, end: ((rank + 1) * headCount) / tp }
        : undefined;
    if (heads !== undefined && !Number.isInteger(heads.start)) {
      throw new TensorParallelError(`${proj}: ${headCount} heads do not split evenly over tp ${tp}`);
    }
    return {
      proj,
      split,
      inFeatures,
      outFeatures,
      inputs: { start: 0, end: inFeatures },
      outputs: { start, end },
      ...(heads !== undefined ? { heads } : {}),
      qweight: { dim: 1, start: start / PACK_FACTOR, end: end / PACK_FACTOR },
      qzeros: { dim: 1, start: start / PACK_FACTOR, end: end / PACK_FACTOR },
      scales: { dim: 1, start, end },
    };
  }
  const rows = inFeatures / tp;
  if (!Number.isInteger(rows) || rows % g !== 0) {
    throw new TensorParallelError(
      `${proj}: ${inFeatures} input rows over tp ${tp} gives ${rows} rows per rank, not a multiple of the AWQ group size ${g}`,
    );
  }
  const start = rank * rows;
  const end = start + rows;
  return {
    proj,
    split,
    inFeatures,
    outFeatures,
    inputs: { start, end },
    outputs: { start: 0, end: outFeatures },
    qweight: { dim: 0, start, end },
    qzeros: { dim: 0, start: start / g, end: end / g },
    scales: { dim: 0, start: start / g, end: end / g },
  };
}
