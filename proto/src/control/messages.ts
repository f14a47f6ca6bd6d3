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
  positive,
  share,
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
  /** host:port of its /metrics, /health and /ready, when it serves them. */
  metricsAddress?: string;
  devices: DeviceInfo[];
  /** Memory the worker offers for its shard, in bytes. */
  memoryBytes: number;
  /** Heartbeat period the worker uses, in ms. */
  heartbeatIntervalMs: number;
  /** Wall-clock start time, ms since the epoch. */
  startedAt: number;
  /** What the worker is doing now: a coordinator that starts while workers already hold their
   * shards (it restarted) re-adopts them from this and assignmentId. Absent: idle. */
  state?: WorkerLifecycleState;
  /** The assignment the worker holds (loading, ready or failed). */
  assignmentId?: string;
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

/** The layers of one pipeline stage: [layerStart, layerEnd), and which ends of the model it holds. */
export interface StageLayers {
  layerStart: number;
  layerEnd: number;
  /** First pipeline stage: embeds token ids. */
  embeds: boolean;
  /** Last pipeline stage: applies the final norm and lm_head. */
  computesLogits: boolean;
}

/** Which part of the model a worker holds: its stage's layers and its tensor-parallel rank. */
export interface ShardSpec extends StageLayers {
  tpRank: number;
  tpSize: number;
}

/** A paged KV cache of numBlocks blocks of blockSize token positions. */
export interface KvGeometry {
  /** Token positions per block. */
  blockSize: number;
  numBlocks: number;
}

/**
 * Paged KV cache geometry: blocks of blockSize token positions, and how many a worker allocates,
 * given as exactly one of a count or a share of the memory its device has free once the shard's
 * weights are loaded. Either way the worker reports the count it allocated (LoadEvent.kvBlocks).
 */
export type KvCacheSpec =
  | KvGeometry
  | {
      /** Token positions per block. */
      blockSize: number;
      /** Share (0, 1] of the memory free after the weights load that the cache may take. */
      memoryFraction: number;
    };

/**
 * Random weights of a generator preset's exact shapes instead of a checkpoint's (performance
 * measurements where the real checkpoint cannot be had); the worker then reads no file.
 */
export interface SyntheticWeightsMessage {
  /** A generator preset (`tiny`, `llama-2-70b`); the worker refuses one it does not know. */
  preset: string;
  /** Seed of the random values. */
  seed: number;
  /** Fewer layers than the preset has. */
  layers?: number;
}

/** How long a worker waits on its peers before it gives up (every rank of a stage gets the same). */
export interface DeadlinesMessage {
  /** A tensor-parallel collective call whose peers do not all arrive within this fails the
   * stage's group (every transport). */
  collectiveMs?: number;
  /** A step relayed to the next stage that has no result within this fails. */
  stepMs?: number;
}

/** Sent by the coordinator (request/reply) to give a worker its shard. */
export interface Assignment {
  v: 1;
  /** Unique per assignment; load events and heartbeats refer to it. */
  assignmentId: string;
  /** Checkpoint directory on the worker's file system (not read when `synthetic` is set). */
  modelDir: string;
  /** Serve random weights of these shapes instead of the checkpoint's. */
  synthetic?: SyntheticWeightsMessage;
  /** The name the cluster serves the model under: the `model` label of the worker's metrics. */
  servedModelName?: string;
  stageIndex: number;
  shard: ShardSpec;
  kvCache: KvCacheSpec;
  /** Collective group of the stage (e.g. "stage-0"). */
  collectiveGroup: string;
  /** gRPC addresses of the stage's ranks, indexed by tp rank (this worker's own included). */
  peers: string[];
  /** gRPC address of the same tp rank in the next stage, where this stage streams its hidden
   * states; absent on the last stage. */
  downstream?: string;
  /** Deadlines of the worker's waits on its peers (absent: the worker's defaults). */
  deadlines?: DeadlinesMessage;
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

/** How a tensor-parallel stage's ranks exchange tensors: through the hosts over gRPC, CUDA IPC
 * (ranks of one host), or NCCL (see the worker's openStageCollective). */
export type CollectiveTransportName = 'grpc' | 'ipc' | 'nccl';

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
  /** KV cache blocks the shard allocated; required when phase is ready. The coordinator
   * hands out only block ids that every worker holds, so it needs every worker's count. */
  kvBlocks?: number;
  /** Phase ready, tp > 1: the transport the stage's ranks chose for their collectives. */
  collective?: CollectiveTransportName;
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
  metricsAddress: optional(str({ nonEmpty: true })),
  devices: arrayOf(deviceInfo),
  memoryBytes: count,
  heartbeatIntervalMs: num({ min: 1 }),
  startedAt: count,
  state: optional(oneOf('idle', 'loading', 'ready', 'failed', 'leaving')),
  assignmentId: optional(str({ nonEmpty: true })),
});

export const workerHeartbeatSchema = object<WorkerHeartbeat>({
  v: version,
  workerId: id,
  seq: count,
  state: oneOf('idle', 'loading', 'ready', 'failed', 'leaving'),
  assignmentId: optional(str({ nonEmpty: true })),
  sentAt: count,
});

export const shardSpecSchema = object<ShardSpec>({
  layerStart: count,
  layerEnd: count,
  tpRank: count,
  tpSize: num({ integer: true, min: 1 }),
  embeds: bool,
  computesLogits: bool,
});

/** Exactly one of numBlocks and memoryFraction: both, or neither, would leave the size ambiguous. */
export const kvCacheSchema: Validator<KvCacheSpec> = (value, path) => {
  const { blockSize, numBlocks, memoryFraction } = object<{
    blockSize: number;
    numBlocks?: number;
    memoryFraction?: number;
  }>({
    blockSize: positive,
    numBlocks: optional(positive),
    memoryFraction: optional(share),
  })(value, path);
  if (numBlocks !== undefined && memoryFraction !== undefined) {
    throw new ControlMessageError(
      `${path}: give numBlocks (${numBlocks}) or memoryFraction (${memoryFraction}), not both`,
    );
  }
  if (numBlocks !== undefined) return { blockSize, numBlocks };
  if (memoryFraction !== undefined) return { blockSize, memoryFraction };
  throw new ControlMessageError(
    `${path}: needs numBlocks (a block count) or memoryFraction (a share of the memory left after the weights)`,
  );
};

const deadlinesSchema = object<DeadlinesMessage>({
  collectiveMs: optional(positive),
  stepMs: optional(positive),
});

const syntheticWeightsSchema = object<SyntheticWeightsMessage>({
  preset: str({ nonEmpty: true }),
  seed: count,
  layers: optional(positive),
});

export const assignmentSchema: Validator<Assignment> = (value, path) => {
  const parsed = object<Assignment>({
    v: version,
    assignmentId: str({ nonEmpty: true }),
    modelDir: str({ nonEmpty: true }),
    synthetic: optional(syntheticWeightsSchema),
    servedModelName: optional(str({ nonEmpty: true })),
    stageIndex: count,
    shard: shardSpecSchema,
    kvCache: kvCacheSchema,
    collectiveGroup: str(),
    peers: arrayOf(str({ nonEmpty: true })),
    downstream: optional(str({ nonEmpty: true })),
    deadlines: optional(deadlinesSchema),
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

export const loadEventSchema: Validator<LoadEvent> = (value, path) => {
  const parsed = object<LoadEvent>({
    v: version,
    workerId: id,
    assignmentId: str({ nonEmpty: true }),
    phase: oneOf('loading', 'ready', 'failed'),
    bytesLoaded: count,
    bytesTotal: count,
    message: optional(str()),
    kvBlocks: optional(positive),
    collective: optional(oneOf('grpc', 'ipc', 'nccl')),
  })(value, path);
  if (parsed.phase === 'ready' && parsed.kvBlocks === undefined) {
    throw new ControlMessageError(
      `${path}: a ready load event must say how many KV cache blocks the worker allocated (kvBlocks)`,
    );
  }
  return parsed;
};

export const workerLeaveSchema = object<WorkerLeave>({ v: version, workerId: id, reason: str() });

export const discoverRequestSchema = object<DiscoverRequest>({
  v: version,
  coordinatorId: str({ nonEmpty: true }),
});
