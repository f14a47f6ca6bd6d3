// The placement a coordinator keeps in NATS's key-value store (JetStream), so that a coordinator
// that restarts finds the workers still holding their shards and re-adopts them instead of
// reloading the model. One bucket per cluster, one key: the whole placement, rewritten whenever
// an assignment changes (a worker re-placed, a stage's group re-formed).

import { type Assignment, assignmentSchema, ID_PATTERN, type KvGeometry } from './messages.js';
import {
  arrayOf,
  ControlMessageError,
  count,
  num,
  object,
  oneOf,
  optional,
  positive,
  str,
} from './schema.js';

/** The key-value bucket of a cluster's placement. */
export function placementBucket(cluster: string): string {
  if (!ID_PATTERN.test(cluster)) {
    throw new ControlMessageError(`cluster name ${JSON.stringify(cluster)} must match ${ID_PATTERN}`);
  }
  return `medcluster-${cluster}`;
}

/** The key of the placement in its bucket. */
export const PLACEMENT_KEY = 'placement';

/** One worker of the placement. */
export interface PlacedWorker {
  workerId: string;
  /** host:port of its gRPC server, as it announced it: a re-adopted worker must still be there. */
  grpcAddress: string;
  device: 'cpu' | 'cuda';
  /** Its current assignment (shard, KV cache request, collective group, peers, downstream). */
  assignment: Assignment;
  /** KV cache blocks it allocated. */
  kvBlocks: number;
  /** tp > 1: how its stage's ranks exchange tensors. */
  collective?: 'grpc' | 'ipc' | 'nccl';
}

export interface PlacementRecord {
  v: 1;
  /** The coordinator that wrote it. */
  coordinatorId: string;
  /** Wall-clock ms since the epoch. */
  updatedAt: number;
  /** The checkpoint the workers hold (a coordinator serving another one does not re-adopt). */
  modelDir: string;
  tp: number;
  pp: number;
  /** The KV cache the scheduler allocates from: every worker holds at least numBlocks blocks. */
  kvCache: KvGeometry;
  workers: PlacedWorker[];
}

const placedWorker = object<PlacedWorker>({
  workerId: str({ pattern: ID_PATTERN }),
  grpcAddress: str({ nonEmpty: true }),
  device: oneOf('cpu', 'cuda'),
  assignment: assignmentSchema,
  kvBlocks: positive,
  collective: optional(oneOf('grpc', 'ipc', 'nccl')),
});

export const placementRecordSchema = (value: unknown, path: string): PlacementRecord => {
  const parsed = object<PlacementRecord>({
    v: oneOf(1 as const),
    coordinatorId: str({ nonEmpty: true }),
    updatedAt: count,
    modelDir: str({ nonEmpty: true }),
    tp: positive,
    pp: positive,
    kvCache: object<KvGeometry>({
      numBlocks: positive,
      blockSize: num({ integer: true, min: 1 }),
    }),
    workers: arrayOf(placedWorker),
  })(value, path);
  if (parsed.workers.length !== parsed.tp * parsed.pp) {
    throw new ControlMessageError(
      `${path}.workers: ${parsed.workers.length} workers for tp ${parsed.tp} x pp ${parsed.pp}`,
    );
  }
  for (const w of parsed.workers) {
    if (w.kvBlocks < parsed.kvCache.numBlocks) {
      throw new ControlMessageError(
        `${path}: worker ${w.workerId} holds ${w.kvBlocks} KV blocks, fewer than the ${parsed.kvCache.numBlocks} the placement uses`,
      );
    }
  }
  return parsed;
};
