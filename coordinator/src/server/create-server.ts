// createServer() builds the public gRPC server; listen() binds it. Kept apart so tests can
// bind port 0 and the CLI a configured port.

import * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { publicPackageDefinition } from '@medcluster/proto';
import { type ApiKeys, apiKeyInterceptor, type PublicTls, publicServerCredentials } from '../auth/index.js';
import { addHealthService } from './health-service.js';
import { addInferenceService } from './inference-service.js';
import type { ServingContext } from './serving-context.js';

export interface ServerLimits {
  /** Largest request message accepted; larger ones get RESOURCE_EXHAUSTED from grpc-js. */
  maxMessageBytes: number;
  /** When set, every call but grpc.health.v1 needs `authorization: Bearer <key>`. */
  apiKeys?: ApiKeys;
}

export function createServer(ctx: ServingContext, limits: ServerLimits): grpc.Server {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': limits.maxMessageBytes,
    // Responses carry text and logprobs, never more than a few MiB.
    'grpc.max_send_message_length': 64 << 20,
    ...(limits.apiKeys ? { interceptors: [apiKeyInterceptor(limits.apiKeys)] } : {}),
  });
  addInferenceService(server, ctx);
  addHealthService(server, ctx.healthy);
  new ReflectionService(publicPackageDefinition()).addToServer(server);
  return server;
}

/** Binds host:port (port 0 picks one), over TLS when given, and resolves with the bound port. */
export function listen(server: grpc.Server, address: string, tls?: PublicTls): Promise<number> {
  return new Promise((resolve, reject) =>
    server.bindAsync(address, publicServerCredentials(tls), (err, port) =>
      err ? reject(err) : resolve(port),
    ),
  );
}
