export { CollectiveError } from './collective-error.js';
export { addCollectiveService, CollectiveHost, type HostedGroup } from './collective-host.js';
export { DeviceTransportCollective } from './device-transport.js';
export { gatherBytes, gatherJson } from './gather-bytes.js';
export { GrpcCollective, type GrpcCollectiveOptions, type HostGroup } from './grpc-collective.js';
export { HostCollective } from './host-collective.js';
export {
  hostIdentity,
  openStageCollective,
  type StageCollectiveOptions,
  TRANSPORT_CHOICES,
  type TransportChoice,
} from './stage-collective.js';
