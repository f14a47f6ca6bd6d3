// API keys on the public gRPC server: a server interceptor that ends every call without a valid
// `authorization: Bearer <key>` metadata entry with UNAUTHENTICATED before any handler runs.
// grpc.health.v1 stays open, for probes and load balancers that cannot send a key; everything
// else (medcluster.v1.Inference, server reflection, any service added later) needs the key.

import * as grpc from '@grpc/grpc-js';
import { type ApiKeys, refusalMessage } from './api-keys.js';

/** Method paths open without a key. */
const OPEN_PREFIXES = ['/grpc.health.v1.Health/'];

export function apiKeyInterceptor(keys: ApiKeys): grpc.ServerInterceptor {
  return (method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        if (OPEN_PREFIXES.some((p) => method.path.startsWith(p))) return next();
        next({
          onReceiveMetadata: (metadata, pass) => {
            const [value] = metadata.get('authorization');
            const refusal = keys.check(typeof value === 'string' ? value : undefined);
            if (refusal === undefined) return pass(metadata);
            call.sendStatus({
              code: grpc.status.UNAUTHENTICATED,
              details: refusalMessage(refusal),
              metadata: new grpc.Metadata(),
            });
          },
        });
      },
    });
}
