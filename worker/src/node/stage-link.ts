// The sending side of a Stage stream: one long-lived bidirectional call to a worker, with
// steps matched to their results by step id. Used by the coordinator (to the first stage's
// ranks) and by each stage (to the same rank of the next stage).

import * as grpc from '@grpc/grpc-js';
import { loadWorkerProto, type workerV1 } from '@medcluster/proto';
import { INTERNAL_GRPC_OPTIONS } from './grpc-options.js';

export class StageLinkError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StageLinkError';
  }
}

type Pending = { resolve: (r: workerV1.StageResult__Output) => void; reject: (e: Error) => void };

export class StageLink {
  private readonly pending = new Map<number, Pending>();
  private failure?: Error;

  private constructor(
    readonly address: string,
    private readonly client: grpc.Client,
    private readonly call: grpc.ClientDuplexStream<workerV1.StageMessage, workerV1.StageResult__Output>,
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

  /** Connects, waiting up to timeoutMs for the worker's server to come up. */
  static async connect(address: string, timeoutMs = 30_000): Promise<StageLink> {
    const { medcluster } = loadWorkerProto();
    const client = new medcluster.worker.v1.Worker(
      address,
      grpc.credentials.createInsecure(),
      INTERNAL_GRPC_OPTIONS,
    );
    await new Promise<void>((resolve, reject) =>
      client.waitForReady(Date.now() + timeoutMs, (err) =>
        err
          ? reject(new StageLinkError(`stage ${address} is unreachable: ${err.message}`, { cause: err }))
          : resolve(),
      ),
    );
    return new StageLink(address, client, client.Stage());
  }

  /** Sends one step; resolves with its result (which may carry a StepError). */
  send(message: workerV1.StageMessage): Promise<workerV1.StageResult__Output> {
    if (this.failure) return Promise.reject(this.failure);
    const stepId = Number(message.step?.stepId);
    return new Promise((resolve, reject) => {
      this.pending.set(stepId, { resolve, reject });
      this.call.write(message);
    });
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const waiter of this.pending.values()) waiter.reject(this.failure);
    this.pending.clear();
  }

  close(): void {
    this.failure ??= new StageLinkError(`stage link to ${this.address} is closed`);
    this.call.end();
    this.client.close();
    this.fail(this.failure);
  }
}
