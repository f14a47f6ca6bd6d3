// Whether a model can be split over tp ranks at all (independent of workers).
import {
  type CheckpointShape,
  PROJ_NAMES,
  projShape,
  TensorParallelError,
  tpSlice,
} from '@medcluster/worker';
import { PlacementError } from './placement-error.js';

export const SUPPORTED_TP: readonly number[] = [1, 2, 4, 8];

/** Throws PlacementError saying why config cannot be split over tp ranks. */
export function validateTensorParallel(config: CheckpointShape, tp: number): void {
  if (!SUPPORTED_TP.includes(tp)) {
    throw new PlacementError(`tp ${tp} is not supported: tp must be one of ${SUPPORTED_TP.join(', ')}`);
  }
  if (config.numHeads % tp !== 0) {
    throw new PlacementError(
      `tp ${tp} does not divide the ${config.numHeads} query heads (whole heads per rank)`,
    );
  }
  if (config.numKvHeads % tp !== 0) {
    throw new PlacementError(
      `tp ${tp} does not divide the ${config.numKvHeads} KV heads (whole KV heads per rank); use tp <= ${config.numKvHeads}`,
    );
  }
  const g = config.quant.groupSize;
  for (const proj of PROJ_NAMES) {
    const { inFeatures } = projShape(config, proj);
    if (inFeatures % g !== 0) {
      throw new PlacementError(
        `${proj}: ${inFeatures} input features are not a multiple of the AWQ group size ${g}`,
      );
    }
    try {
      tpSlice(config, proj, tp, 0); // throws on a split off group boundaries or int32 packing
    } catch (err) {
      if (err instanceof TensorParallelError) throw new PlacementError(err.message);
      throw err;
    }
  }
  if (config.vocabRows < tp) {
    throw new PlacementError(`vocabulary of ${config.vocabRows} rows cannot be split over tp ${tp}`);
  }
}
