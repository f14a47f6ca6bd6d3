export { CollectiveError } from './collective-error.js';
export { addCollectiveService, CollectiveHost, type HostedGroup } from './collective-host.js';
export { GrpcCollective, type GrpcCollectiveOptions } from './grpc-collective.js';
