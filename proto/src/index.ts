// @medcluster/proto: the gRPC packages (typed loaders, .proto paths, generated types) and the NATS
// control-plane messages.
export * as healthV1 from '../generated/grpc/health/v1/index.js';
export * as inferenceV1 from '../generated/medcluster/v1/index.js';
export * as workerV1 from '../generated/medcluster/worker/v1/index.js';
export { type CallOptions, InferenceClient, type InferenceClientOptions } from './client.js';
export * from './control/index.js';
export {
  type HealthProtoGrpcType,
  type InferenceProtoGrpcType,
  loadHealthProto,
  loadInferenceProto,
  loadWorkerProto,
  PROTO_LOADER_OPTIONS,
  publicPackageDefinition,
  type WorkerProtoGrpcType,
} from './loader.js';
export { protoPaths, protoRoot } from './paths.js';
