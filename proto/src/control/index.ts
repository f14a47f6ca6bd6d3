export { type ControlCodec, controlCodecs } from './codec.js';
export {
  type Assignment,
  type AssignmentReply,
  CONTROL_PROTOCOL_VERSION,
  type CollectiveTransportName,
  type DeadlinesMessage,
  type DeviceInfo,
  type DiscoverRequest,
  ID_PATTERN,
  type KvCacheSpec,
  type KvGeometry,
  kvCacheSchema,
  type LoadEvent,
  type LoadPhase,
  type ShardSpec,
  type StageLayers,
  type SyntheticWeightsMessage,
  type WorkerAnnounce,
  type WorkerHeartbeat,
  type WorkerLeave,
  type WorkerLifecycleState,
} from './messages.js';
export {
  PLACEMENT_KEY,
  type PlacedWorker,
  type PlacementRecord,
  placementBucket,
  placementRecordSchema,
} from './placement.js';
export { ControlMessageError } from './schema.js';
export { type ControlSubjects, controlSubjects } from './subjects.js';
