// The control-plane messages exchanged over NATS between the coordinator and workers, with their
// runtime schemas. Plain JSON data only. Every message carries the protocol version `v`.
import {
  arrayOf,
  bool,
  ControlMessageError,
  count,
  num,
  object,
  oneOf,
  optional,
  str,
  type Validator,
} from './schema.js';

/** Version of the control protocol; a message with another version is rejected. */
export const CONTROL_PROTOCOL_VERSION = 1;

/** Worker ids and cluster names become NATS subject tokens: no dots, spaces or wildcards. */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;

const version: Validator<1> = oneOf(CONTROL_PROTOCOL_VERSION as 1);
const id = str({ pattern: ID_PATTERN });

/** One compute device of a worker. */
export interface DeviceInfo {
  kind: 'cpu' | 'cuda';
  /** Device index among devices of its kind. */
  index: number;
  /** Model name, e.g. "NVIDIA H100 80GB HBM3". */
  name: string;
  /** Memory usable for weights and KV cache, in bytes. */
  memoryBytes: number;
}

/** Sent by a worker when it starts and whenever the coordinator asks (discover). */
export interface WorkerAnnounce {
  v: 1;
  workerId: string;
  /** host:port of the worker's gRPC server (Worker and Collective services). */
  grpcAddress: string;
  devices: DeviceInfo[];
  /** Memory the worker offers for its shard, in bytes. */
  memoryBytes: number;
  /** Heartbeat period the worker uses, in ms. */
  heartbeatIntervalMs: number;
  /** Wall-clock start time, ms since the epoch. */
  startedAt: number;
}

/** Lifecycle state of a worker as it reports it. */
export type WorkerLifecycleState = 'idle' | 'loading' | 'ready' | 'failed' | 'leaving';

/** Periodic liveness message. */
export interface WorkerHeartbeat {
  v: 1;
  workerId: string;
  /** Increments by one per heartbeat. */
  seq: number;
  state: WorkerLifecycleState;
  /** The assignment being loaded or served, if any. */
  assignmentId?: string;
  /** Wall-clock send time, ms since the epoch. */
  sentAt: number;
}

/** Which part of the model a worker holds; the same fields as the engine's ShardSpec. */
export interface ShardSpecMessage {
  layerStart: number;
  layerEnd: number;
  tpRank: number;
  tpSize: number;
  embeds: boolean;
  computesLogits: boolean;
}

/** Paged KV cache geometry. */
export interface KvCacheMessage {
  numBlocks: number;
  /** Token positions per block. */
  blockSize: number;
}

/** Sent by the coordinator (request/reply) to give a worker its shard. */
export interface Assignment {
  v: 1;
  /** Unique per assignment; load events and heartbeats refer to it. */
  assignmentId: string;
  /** Checkpoint directory on the worker's file system. */
  modelDir: string;
  stageIndex: number;
  shard: ShardSpecMessage;
  kvCache: KvCacheMessage;
  /** Collective group of the stage (e.g. "stage-0"). */
  collectiveGroup: string;
  /** gRPC addresses of the stage's ranks, indexed by tp rank (this worker's own included). */
  peers: string[];
  /** gRPC address of the same tp rank in the next stage, where this stage streams its hidden
   * states; absent on the last stage. */
  downstream?: string;
}

/** The worker's reply to an Assignment: accepted means loading has started. */
export interface AssignmentReply {
  v: 1;
  workerId: string;
  assignmentId: string;
  accepted: boolean;
  /** Why the assignment was refused. */
  error?: string;
}

/** Phase of an assignment's load. */
export type LoadPhase = 'loading' | 'ready' | 'failed';

/** Progress, readiness or failure of an assignment's load. */
export interface LoadEvent {
  v: 1;
  workerId: string;
  assignmentId: string;
  phase: LoadPhase;
  bytesLoaded: number;
  bytesTotal: number;
  /** Detail; for phase failed, the error. */
  message?: string;
}

/** Sent by a worker that leaves on purpose. */
export interface WorkerLeave {
  v: 1;
  workerId: string;
  reason: string;
}

/** Sent by a coordinator that starts: every worker announces itself again. */
export interface DiscoverRequest {
  v: 1;
  coordinatorId: string;
}

const deviceInfo = object<DeviceInfo>({
  kind: oneOf('cpu', 'cuda'),
  index: count,
  name: str(),
  memoryBytes: count,
});

export const workerAnnounceSchema = object<WorkerAnnounce>({
  v: version,
  workerId: id,
  grpcAddress: str({ nonEmpty: true }),
  devices: arrayOf(deviceInfo),
  memoryBytes: count,
  heartbeatIntervalMs: num({ min: 1 }),
  startedAt: count,
});

export const workerHeartbeatSchema = object<WorkerHeartbeat>({
  v: version,
  workerId: id,
  seq: count,
  state: oneOf('idle', 'loading', 'ready', 'failed', 'leaving'),
  assignmentId: optional(str({ nonEmpty: true })),
  sentAt: count,
});

export const shardSpecSchema = object<ShardSpecMessage>({
  layerStart: count,
  layerEnd: count,
  tpRank: count,
  tpSize: num({ integer: true, min: 1 }),
  embeds: bool,
  computesLogits: bool,
});

export const assignmentSchema: Validator<Assignment> = (value, path) => {
  const parsed = object<Assignment>({
    v: version,
    assignmentId: str({ nonEmpty: true }),
    modelDir: str({ nonEmpty: true }),
    stageIndex: count,
    shard: shardSpecSchema,
    kvCache: object<KvCacheMessage>({ numBlocks: count, blockSize: num({ integer: true, min: 1 }) }),
    collectiveGroup: str(),
    peers: arrayOf(str({ nonEmpty: true })),
    downstream: optional(str({ nonEmpty: true })),
  })(value, path);
  const { shard, peers } = parsed;
  if (shard.computesLogits === (parsed.downstream !== undefined)) {
    throw new ControlMessageError(
      `${path}: a stage ${shard.computesLogits ? 'that computes logits has no downstream' : 'before the last needs a downstream address'}`,
    );
  }
  if (shard.layerEnd <= shard.layerStart) {
    throw new ControlMessageError(
      `${path}: shard layer range [${shard.layerStart}, ${shard.layerEnd}) is empty`,
    );
  }
  if (shard.tpRank >= shard.tpSize) {
    throw new ControlMessageError(
      `${path}: shard tpRank ${shard.tpRank} is not below tpSize ${shard.tpSize}`,
    );
  }
  if (shard.tpSize > 1 && peers.length !== shard.tpSize) {
    throw new ControlMessageError(`${path}: ${peers.length} peers for tpSize ${shard.tpSize}`);
  }
  return parsed;
};

export const assignmentReplySchema = object<AssignmentReply>({
  v: version,
  workerId: id,
  assignmentId: str({ nonEmpty: true }),
  accepted: bool,
  error: optional(str()),
});

export const loadEventSchema = object<LoadEvent>({
  v: version,
  workerId: id,
  assignmentId: str({ nonEmpty: true }),
  phase: oneOf('loading', 'ready', 'failed'),
  bytesLoaded: count,
  bytesTotal: count,
  message: optional(str()),
});

export const workerLeaveSchema = object<WorkerLeave>({ v: version, workerId: id, reason: str() });

export const discoverRequestSchema = object<DiscoverRequest>({
  v: version,
  coordinatorId: str({ nonEmpty: true }),
});
