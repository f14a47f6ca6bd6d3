export { PlacementError } from './placement-error.js';
export {
  type PlacedStage,
  type PlacementPlan,
  type PlacementRequest,
  type PlacementWorker,
  planPlacement,
  type StageRank,
  shardSpecFor,
  type WorkerShard,
} from './plan-placement.js';
export { SUPPORTED_TP, validateTensorParallel } from './validate-tp.js';
export { awqLinearBytes, embedBytesForRank, layerBytesPerRank, lmHeadBytesForRank } from './weight-bytes.js';
