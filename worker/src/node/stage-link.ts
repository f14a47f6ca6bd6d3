// The sending side of a Stage stream: one long-lived bidirectional call to a worker, with
// steps matched to their results by step id. Used by the coordinator (to the first stage's
// ranks) and by each stage (to the same rank of the next stage).
//
// When the stream breaks (the worker died or restarted), the steps on it fail with a
// StageLinkError, and the next send opens a new stream on the same channel once it is connected
// again (waiting up to `reconnectMs`): a replaced worker at the same address is reached again
// without a new link. A step sent with a deadline that has no result in time fails alone (the
// stream stays open: a stage that hangs cannot be told from a slow one by one step).

import * as grpc from '@grpc/grpc-js';
import { loadWorkerProto, type workerV1 } from '@medcluster/proto';
import { INTERNAL_GRPC_OPTIONS } from './grpc-options.js';

/** The stream to a stage broke or could not be opened: the steps on it are lost. */
export class StageLinkError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StageLinkError';
  }
}

type Pending = { resolve: (r: workerV1.StageResult__Output) => void; reject: (e: Error) => void };
type StageCall = grpc.ClientDuplexStream<workerV1.StageMessage, workerV1.StageResult__Output>;

/** One Stage call and the steps sent on it. */
class Stream {
  readonly pending = new Map<number, Pending>();
  broken?: Error;

  constructor(
    readonly call: StageCall,
    address: string,
  ) {
    call.on('data', (result: workerV1.StageResult__Output) => {
      const waiter = this.pending.get(result.stepId);
      if (!waiter) return;
      this.pending.delete(result.stepId);
      waiter.resolve(result);
    });
    call.on('error', (err: grpc.ServiceError) =>
      this.fail(new StageLinkError(`stage ${address}: ${err.details || err.message}`, { cause: err })),
    );
    call.on('end', () => this.fail(new StageLinkError(`stage ${address} closed the stream`)));
  }

  fail(error: Error): void {
    this.broken ??= error;
    for (const waiter of this.pending.values()) waiter.reject(this.broken);
    this.pending.clear();
  }
}

export class StageLink {
  private stream?: Stream;
  /** Each send writes after the one before it: every rank must see the steps in one order. */
  private tail: Promise<unknown> = Promise.resolve();
  private closed?: Error;

  private constructor(
    readonly address: string,
    private readonly client: grpc.Client & { Stage(): StageCall },
    private readonly reconnectMs: number,
  ) {}

  /**
   * Connects, waiting up to timeoutMs for the worker's server to come up. `credentials`: the
   * internal mutual TLS (InternalTls.channelCredentials()); default plaintext.
   */
  static async connect(
    address: string,
    timeoutMs = 30_000,
    credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  ): Promise<StageLink> {
    const { medcluster } = loadWorkerProto();
    const client = new medcluster.worker.v1.Worker(address, credentials, INTERNAL_GRPC_OPTIONS);
    await new Promise<void>((resolve, reject) =>
      client.waitForReady(Date.now() + timeoutMs, (err) =>
        err
          ? reject(new StageLinkError(`stage ${address} is unreachable: ${err.message}`, { cause: err }))
          : resolve(),
      ),
    );
    return new StageLink(address, client, Math.min(timeoutMs, 5_000));
  }

  /**
   * Sends one step; resolves with its result (which may carry a StepError). With `timeoutMs`,
   * rejects with a StageLinkError when no result came that long after the step was written.
   */
  send(message: workerV1.StageMessage, timeoutMs?: number): Promise<workerV1.StageResult__Output> {
    const stepId = Number(message.step?.stepId);
    // Resolves once the step is written, with (boxed, so it is not awaited here) its result.
    const written = this.tail.then(async () => {
      if (this.closed) throw this.closed;
      const stream = await this.openStream();
      const result = new Promise<workerV1.StageResult__Output>((resolve, reject) => {
        if (timeoutMs === undefined) {
          stream.pending.set(stepId, { resolve, reject });
          return;
        }
        const timer = setTimeout(() => {
          if (stream.pending.get(stepId)?.reject !== settle.reject) return;
          stream.pending.delete(stepId);
          reject(
            new StageLinkError(`stage ${this.address}: no result for step ${stepId} within ${timeoutMs} ms`),
          );
        }, timeoutMs);
        const settle: Pending = {
          resolve: (r) => {
            clearTimeout(timer);
            resolve(r);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        };
        stream.pending.set(stepId, settle);
      });
      stream.call.write(message);
      return { result };
    });
    // The next send waits for this one's write, not for its result: steps overlap in the pipeline.
    this.tail = written.then(
      () => undefined,
      () => undefined,
    );
    return written.then(({ result }) => result);
  }

  /** The worker's GetStatus (which host and process it is, its device, its state). */
  status(timeoutMs = 5_000): Promise<workerV1.WorkerStatus__Output> {
    const client = this.client as unknown as {
      GetStatus(
        request: workerV1.GetStatusRequest,
        options: grpc.CallOptions,
        callback: (err: grpc.ServiceError | null, status?: workerV1.WorkerStatus__Output) => void,
      ): void;
    };
    return new Promise((resolve, reject) =>
      client.GetStatus({}, { deadline: Date.now() + timeoutMs }, (err, status) =>
        err || !status
          ? reject(
              new StageLinkError(`stage ${this.address}: GetStatus failed: ${err?.message}`, { cause: err }),
            )
          : resolve(status),
      ),
    );
  }

  /** The current stream, or a new one once the channel is connected again. */
  private openStream(): Promise<Stream> {
    if (this.stream && !this.stream.broken) return Promise.resolve(this.stream);
    return new Promise<Stream>((resolve, reject) =>
      this.client.waitForReady(Date.now() + this.reconnectMs, (err) => {
        if (err)
          reject(new StageLinkError(`stage ${this.address} is unreachable: ${err.message}`, { cause: err }));
        else {
          this.stream = new Stream(this.client.Stage(), this.address);
          resolve(this.stream);
        }
      }),
    );
  }

  close(): void {
    this.closed ??= new StageLinkError(`stage link to ${this.address} is closed`);
    this.stream?.call.end();
    this.stream?.fail(this.closed);
    this.client.close();
  }
}
