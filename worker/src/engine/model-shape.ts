// How tensor parallelism splits each block linear. The linears and their shapes are the
// checkpoint format's (checkpoint/layout.ts); this adds only which dimension a split cuts.

import { type CheckpointShape, type ProjName, projFeatures } from '../checkpoint/layout.js';

/** Column-parallel linears split their output dim; row-parallel ones their input dim. */
export type SplitKind = 'column' | 'row';

export interface ProjShape {
  /** K: input features. */
  inFeatures: number;
  /** N: output features. */
  outFeatures: number;
  split: SplitKind;
}

const SPLITS: Readonly<Record<ProjName, SplitKind>> = {
  q_proj: 'column',
  k_proj: 'column',
  v_proj: 'column',
  o_proj: 'row',
  gate_proj: 'column',
  up_proj: 'column',
  down_proj: 'row',
};

/** Full (unsplit) shape of a block linear and how tensor parallelism splits it. */
export function projShape(shape: CheckpointShape, proj: ProjName): ProjShape {
  const { k, n } = projFeatures(shape, proj);
  return { inFeatures: k, outFeatures: n, split: SPLITS[proj] };
}
