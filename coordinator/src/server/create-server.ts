// createServer() builds the public gRPC server; listen() binds it. Kept apart so tests can
// bind port 0 and the CLI a configured port.

import * as grpc from '@grpc/grpc-js';
import { addHealthService } from './health-service.js';
import { addInferenceService } from './inference-service.js';
import type { ServingContext } from './serving-context.js';

export function createServer(ctx: ServingContext): grpc.Server {
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 64 << 20 });
  addInferenceService(server, ctx);
  addHealthService(server, ctx.healthy);
  return server;
}

/** Binds host:port (port 0 picks one) and resolves with the bound port. */
export function listen(server: grpc.Server, address: string): Promise<number> {
  return new Promise((resolve, reject) =>
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    ),
  );
}
