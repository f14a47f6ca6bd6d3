// A host-buffer collective (HostGroup) among the ranks of one stage over gRPC: rank 0 reduces
// (RootGroup, served by its worker's gRPC server), every other rank keeps one Exchange stream to
// it. Calls are numbered per rank (0, 1, 2, ...) and may be in flight concurrently; every rank
// must issue the same sequence of calls. Every call has a deadline (callTimeoutMs): rank 0 fails
// the group when a rank's part is late, the other ranks (after half as long again) when rank 0's
// result is.
import * as grpc from '@grpc/grpc-js';
import { loadWorkerProto, type workerV1 } from '@medcluster/proto';
import { CollectiveError } from './collective-error.js';
import type { CollectiveHost } from './collective-host.js';
import { type CollectiveOpName, FrameAssembler, splitByCounts, toFrames } from './float32-frames.js';
import { DEFAULT_CALL_TIMEOUT_MS, RootGroup, watchdogPeriod } from './root-group.js';

/**
 * A collective on host buffers among the ranks of one stage: the gRPC group behind the host
 * transport (HostCollective), and the channel over which device groups exchange their set-up
 * bytes (openStageCollective).
 */
export interface HostGroup {
  readonly rank: number;
  readonly size: number;
  /** Element-wise fp32 sum across ranks, summed in rank order so every rank gets identical bits. */
  allReduceSum(data: Float32Array): Promise<Float32Array>;
  /** Every rank's buffer, indexed by rank (copied byte for byte). */
  allGather(data: Float32Array): Promise<Float32Array[]>;
  /** float32 payload bytes this rank has contributed to calls so far. */
  readonly payloadBytes: number;
  close(): Promise<void>;
}

export interface GrpcCollectiveOptions {
  /** Group name shared by the stage's ranks, e.g. "stage-0". */
  group: string;
  rank: number;
  size: number;
  /** gRPC addresses (host:port) indexed by rank; peers[0] serves the group. */
  peers: readonly string[];
  /** This worker's collective host (addCollectiveService); required on rank 0. */
  host?: CollectiveHost;
  /** How long to wait for the group to form: rank 0 for every rank, others for rank 0 (default 30000 ms). */
  connectTimeoutMs?: number;
  /** How long one call may wait for its peers before the group fails (default 30000 ms). */
  callTimeoutMs?: number;
  /** How ranks other than 0 reach rank 0: the internal mutual TLS, or plaintext (the default). */
  credentials?: grpc.ChannelCredentials;
}

type ExchangeStream = grpc.ClientDuplexStream<workerV1.CollectiveMessage, workerV1.CollectiveMessage__Output>;

interface PendingCall {
  op: CollectiveOpName;
  /** performance.now() when the call was made. */
  since: number;
  resolve: (parts: Float32Array[]) => void;
  reject: (error: Error) => void;
  assembler?: FrameAssembler;
}

const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.initial_reconnect_backoff_ms': 50,
  'grpc.max_reconnect_backoff_ms': 500,
};
const RETRY_DELAY_MS = 50;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class GrpcCollective implements HostGroup {
  readonly rank: number;
  readonly size: number;
  payloadBytes = 0;
  private nextSeq = 0;
  private closed = false;
  private failure: CollectiveError | undefined;
  // rank 0
  private root: RootGroup | undefined;
  // other ranks
  private client: grpc.Client | undefined;
  private stream: ExchangeStream | undefined;
  private readonly pending = new Map<number, PendingCall>();
  private readonly callTimeoutMs: number;
  private watchdog: NodeJS.Timeout | undefined;

  private constructor(private readonly options: GrpcCollectiveOptions) {
    this.rank = options.rank;
    this.size = options.size;
    this.callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
  }

  /** Forms the group: resolves once rank 0 has every rank joined (rank 0) or has accepted this rank. */
  static async create(options: GrpcCollectiveOptions): Promise<GrpcCollective> {
    const { rank, size, peers, group } = options;
    if (!Number.isInteger(size) || size < 1)
      throw new CollectiveError(`group ${group}: size must be >= 1, got ${size}`);
    if (!Number.isInteger(rank) || rank < 0 || rank >= size) {
      throw new CollectiveError(`group ${group}: rank ${rank} is not in 0..${size - 1}`);
    }
    if (size > 1 && peers.length !== size) {
      throw new CollectiveError(`group ${group}: ${peers.length} peer addresses for ${size} ranks`);
    }
    const collective = new GrpcCollective(options);
    if (size > 1) {
      const timeoutMs = options.connectTimeoutMs ?? 30_000;
      if (rank === 0) await collective.serve(timeoutMs);
      else await collective.join(timeoutMs);
    }
    return collective;
  }

  private peer(rank: number): string {
    return `rank ${rank} (${this.options.peers[rank]})`;
  }

  private async serve(timeoutMs: number): Promise<void> {
    const { host, group, peers } = this.options;
    if (host === undefined)
      throw new CollectiveError(`group ${group}: rank 0 needs a CollectiveHost (addCollectiveService)`);
    const root = new RootGroup(group, this.size, peers, this.callTimeoutMs);
    host.register(root);
    this.root = root;
    try {
      await root.waitForMembers(timeoutMs);
    } catch (error) {
      host.unregister(root);
      root.fail(`group ${group} did not form`);
      throw error;
    }
  }

  private async join(timeoutMs: number): Promise<void> {
    const { group, peers } = this.options;
    const deadline = Date.now() + timeoutMs;
    const { medcluster } = loadWorkerProto();
    this.client = new medcluster.worker.v1.Collective(
      peers[0],
      this.options.credentials ?? grpc.credentials.createInsecure(),
      CHANNEL_OPTIONS,
    );
    let lastError: Error | undefined;
    while (Date.now() < deadline) {
      try {
        await this.attemptJoin(deadline);
        return;
      } catch (error) {
        lastError = error as Error;
        const code = (error as Partial<grpc.ServiceError>).code;
        if (
          code !== grpc.status.UNAVAILABLE &&
          code !== grpc.status.NOT_FOUND &&
          code !== grpc.status.DEADLINE_EXCEEDED
        ) {
          break;
        }
        await sleep(RETRY_DELAY_MS);
      }
    }
    this.client.close();
    throw new CollectiveError(
      `group ${group}: rank ${this.rank} could not join ${this.peer(0)} within ${timeoutMs} ms: ${lastError?.message ?? 'timed out'}`,
      { cause: lastError },
    );
  }

  private async attemptJoin(deadline: number): Promise<void> {
    const client = this.client as grpc.Client & { Exchange(): ExchangeStream };
    await new Promise<void>((resolve, reject) =>
      client.waitForReady(deadline, (err) =>
        err ? reject(Object.assign(err, { code: grpc.status.UNAVAILABLE })) : resolve(),
      ),
    );
    const stream = client.Exchange();
    await new Promise<void>((resolve, reject) => {
      const onData = (message: workerV1.CollectiveMessage__Output) => {
        cleanup();
        if (message.body === 'join') resolve();
        else
          reject(new CollectiveError(`expected a join acceptance from ${this.peer(0)}, got ${message.body}`));
      };
      const onError = (error: Error) => {
        cleanup();
        reject(error);
      };
      const onEnd = () => {
        cleanup();
        reject(
          Object.assign(new Error('stream ended before the join was accepted'), {
            code: grpc.status.UNAVAILABLE,
          }),
        );
      };
      const cleanup = () => {
        stream.off('data', onData);
        stream.off('error', onError);
        stream.off('end', onEnd);
      };
      stream.on('data', onData);
      stream.on('error', onError);
      stream.on('end', onEnd);
      stream.write({ join: { group: this.options.group, rank: this.rank, size: this.size } });
    });
    this.stream = stream;
    this.watchdog = setInterval(() => this.checkDeadline(), watchdogPeriod(this.callTimeoutMs));
    this.watchdog.unref();
    stream.on('data', (message: workerV1.CollectiveMessage__Output) => this.onMessage(message));
    stream.on('error', (error: grpc.ServiceError) =>
      this.fail(`${this.peer(0)} stream failed: ${error.details || error.message}`, error),
    );
    stream.on('end', () => this.fail(`${this.peer(0)} closed the group`));
  }

  /**
   * Fails the group when rank 0's result for the oldest call is past the deadline. This side
   * waits half as long again as rank 0 does, so that when another rank is late rank 0 fails the
   * group first and names it; this deadline is for a rank 0 that is itself gone or hung.
   */
  private checkDeadline(): void {
    const now = performance.now();
    const limit = this.callTimeoutMs * 1.5;
    for (const [seq, call] of this.pending) {
      if (now - call.since > limit) {
        this.fail(`${this.peer(0)} did not answer call ${seq} (${call.op}) within ${limit} ms`);
        return;
      }
    }
  }

  private onMessage(message: workerV1.CollectiveMessage__Output): void {
    if (message.body === 'abort' && message.abort != null) {
      this.fail(`group ${this.options.group} failed (reported by ${this.peer(0)}): ${message.abort.message}`);
      return;
    }
    if (message.body !== 'frame' || message.frame == null) return;
    const frame = message.frame;
    const call = this.pending.get(frame.seq);
    try {
      if (call === undefined) throw new CollectiveError(`result for seq ${frame.seq}, which is not pending`);
      if (frame.op !== call.op)
        throw new CollectiveError(`result for seq ${frame.seq} is ${frame.op}, the call was ${call.op}`);
      call.assembler ??= new FrameAssembler(frame.op, frame);
      if (!call.assembler.add(frame)) return;
      this.pending.delete(frame.seq);
      const { data, counts } = call.assembler;
      call.resolve(call.op === 'COLLECTIVE_OP_ALL_GATHER' ? splitByCounts(data, counts, this.size) : [data]);
    } catch (error) {
      this.fail(`bad result from ${this.peer(0)}: ${(error as Error).message}`, error);
    }
  }

  private fail(message: string, cause?: unknown): void {
    if (this.failure) return;
    clearInterval(this.watchdog);
    this.failure = new CollectiveError(`group ${this.options.group} rank ${this.rank}: ${message}`, {
      cause,
    });
    for (const call of this.pending.values()) call.reject(this.failure);
    this.pending.clear();
    this.stream?.end();
    this.client?.close();
  }

  private run(op: CollectiveOpName, data: Float32Array): Promise<Float32Array[]> {
    if (this.closed)
      return Promise.reject(new CollectiveError(`group ${this.options.group} rank ${this.rank}: closed`));
    if (this.failure) return Promise.reject(this.failure);
    const seq = this.nextSeq++;
    this.payloadBytes += data.byteLength;
    if (this.size === 1) return Promise.resolve([data.slice()]);
    if (this.root) return this.root.local(seq, op, data);
    const stream = this.stream as ExchangeStream;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { op, since: performance.now(), resolve, reject });
      for (const frame of toFrames(op, seq, this.rank, data)) stream.write({ frame });
    });
  }

  async allReduceSum(data: Float32Array): Promise<Float32Array> {
    const [sum] = await this.run('COLLECTIVE_OP_ALL_REDUCE_SUM', data);
    return sum;
  }

  allGather(data: Float32Array): Promise<Float32Array[]> {
    return this.run('COLLECTIVE_OP_ALL_GATHER', data);
  }

  /** Leaves the group: pending calls here and on the other ranks reject with a CollectiveError. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.root) {
      this.root.fail(`${this.peer(0)} closed the group`);
      this.options.host?.unregister(this.root);
      return;
    }
    this.fail('closed');
  }
}
