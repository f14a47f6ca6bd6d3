// Serves the Collective gRPC service on an existing grpc.Server. Rank 0 of each group registers
// its group here; other ranks' Exchange streams are handed to the group they name.
import * as grpc from '@grpc/grpc-js';
import { loadWorkerProto, type workerV1 } from '@medcluster/proto';

export type ExchangeCall = grpc.ServerDuplexStream<
  workerV1.CollectiveMessage__Output,
  workerV1.CollectiveMessage
>;

/** What a group served by rank 0 does with a joining rank's stream. */
export interface HostedGroup {
  readonly name: string;
  /** Takes over the stream of a rank that sent join; throws to refuse it (INVALID_ARGUMENT). */
  attach(join: workerV1.CollectiveJoin__Output, call: ExchangeCall): void;
}

/** The groups served by one gRPC server. */
export class CollectiveHost {
  private readonly groups = new Map<string, HostedGroup>();

  register(group: HostedGroup): void {
    if (this.groups.has(group.name)) throw new Error(`collective group ${group.name} is already served here`);
    this.groups.set(group.name, group);
  }

  unregister(group: HostedGroup): void {
    if (this.groups.get(group.name) === group) this.groups.delete(group.name);
  }

  /** The Exchange handler: the first message must be a join naming a group served here. */
  handleExchange(call: ExchangeCall): void {
    const onFirst = (message: workerV1.CollectiveMessage__Output) => {
      call.off('data', onFirst);
      if (message.body !== 'join' || message.join == null) {
        call.emit('error', {
          code: grpc.status.INVALID_ARGUMENT,
          details: 'the first Exchange message must be a join',
        });
        return;
      }
      const group = this.groups.get(message.join.group);
      if (group === undefined) {
        // Rank 0 may not have created its group yet: the joining rank retries.
        call.emit('error', {
          code: grpc.status.NOT_FOUND,
          details: `collective group ${message.join.group} is not served here (yet)`,
        });
        return;
      }
      try {
        group.attach(message.join, call);
      } catch (error) {
        call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: (error as Error).message });
      }
    };
    call.on('data', onFirst);
    call.on('error', () => {}); // errors are reported through the group (cancelled / end)
  }
}

/** Adds the Collective service to server (before or after bindAsync) and returns its host. */
export function addCollectiveService(server: grpc.Server): CollectiveHost {
  const host = new CollectiveHost();
  const { medcluster } = loadWorkerProto();
  server.addService(medcluster.worker.v1.Collective.service, {
    Exchange: (call: ExchangeCall) => host.handleExchange(call),
  });
  return host;
}
