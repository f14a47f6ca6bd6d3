// The coordinator's calls to a worker besides its Stage stream: GetStatus (does it answer, and
// what does it hold) and Regroup (re-form its stage's collective group). Both are rare (start and
// recovery), so each opens a channel and closes it: a dead worker's channel never lingers.

import * as grpc from '@grpc/grpc-js';
import { loadWorkerProto, type workerV1 } from '@medcluster/proto';
import { INTERNAL_GRPC_OPTIONS } from './grpc-options.js';

/** A worker that did not answer, or answered with an error (the gRPC status is the cause). */
export class WorkerCallError extends Error {
  override name = 'WorkerCallError';
  constructor(
    message: string,
    readonly code: grpc.status | undefined,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

type WorkerClient = grpc.Client & {
  GetStatus(
    request: workerV1.GetStatusRequest,
    options: grpc.CallOptions,
    callback: grpc.requestCallback<workerV1.WorkerStatus__Output>,
  ): grpc.ClientUnaryCall;
  Regroup(
    request: workerV1.RegroupRequest,
    options: grpc.CallOptions,
    callback: grpc.requestCallback<workerV1.RegroupReply__Output>,
  ): grpc.ClientUnaryCall;
};

function call<T>(
  address: string,
  what: string,
  deadlineMs: number,
  credentials: grpc.ChannelCredentials,
  run: (client: WorkerClient, options: grpc.CallOptions, done: grpc.requestCallback<T>) => void,
): Promise<T> {
  const { medcluster } = loadWorkerProto();
  const client = new medcluster.worker.v1.Worker(
    address,
    credentials,
    INTERNAL_GRPC_OPTIONS,
  ) as unknown as WorkerClient;
  return new Promise<T>((resolve, reject) => {
    run(client, { deadline: Date.now() + deadlineMs }, (err, value) => {
      client.close();
      if (err || value === undefined) {
        const why = err?.details || err?.message || 'no reply';
        reject(new WorkerCallError(`${what} on ${address}: ${why}`, err?.code, { cause: err }));
      } else resolve(value);
    });
  });
}

/** The worker's state; rejects when it does not answer within deadlineMs. */
export function workerStatus(
  address: string,
  deadlineMs: number,
  credentials = grpc.credentials.createInsecure(),
): Promise<workerV1.WorkerStatus__Output> {
  return call(address, 'GetStatus', deadlineMs, credentials, (client, options, done) =>
    client.GetStatus({}, options, done),
  );
}

/** Asks the worker to re-form its stage's group; resolves once the group formed on it. */
export function regroupWorker(
  address: string,
  request: { assignmentId: string; group: string; peers: readonly string[]; timeoutMs: number },
  credentials = grpc.credentials.createInsecure(),
): Promise<workerV1.RegroupReply__Output> {
  // The worker gives up at timeoutMs; the call outlives that by a margin so its reason arrives.
  return call(address, 'Regroup', request.timeoutMs + 2_000, credentials, (client, options, done) =>
    client.Regroup({ ...request, peers: [...request.peers] }, options, done),
  );
}
