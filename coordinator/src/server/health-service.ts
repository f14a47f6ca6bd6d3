// The standard grpc.health.v1 service: SERVING while the cluster can run steps, for the whole
// server ("") and for "medcluster.v1.Inference".

import * as grpc from '@grpc/grpc-js';
import { type healthV1, loadHealthProto } from '@medcluster/proto';

const SERVICES = new Set(['', 'medcluster.v1.Inference']);

export function addHealthService(server: grpc.Server, healthy: () => boolean): void {
  const status = (): healthV1.HealthCheckResponse => ({ status: healthy() ? 'SERVING' : 'NOT_SERVING' });
  const { grpc: pkg } = loadHealthProto();
  server.addService(pkg.health.v1.Health.service, {
    Check(
      call: grpc.ServerUnaryCall<healthV1.HealthCheckRequest__Output, healthV1.HealthCheckResponse>,
      callback: grpc.sendUnaryData<healthV1.HealthCheckResponse>,
    ) {
      if (!SERVICES.has(call.request.service)) {
        callback({ code: grpc.status.NOT_FOUND, details: `unknown service '${call.request.service}'` });
        return;
      }
      callback(null, status());
    },
    Watch(
      call: grpc.ServerWritableStream<healthV1.HealthCheckRequest__Output, healthV1.HealthCheckResponse>,
    ) {
      if (!SERVICES.has(call.request.service)) {
        call.write({ status: 'SERVICE_UNKNOWN' });
        return;
      }
      let last = '';
      const tick = () => {
        const now = status();
        if (now.status !== last) call.write(now);
        last = now.status as string;
      };
      tick();
      const timer = setInterval(tick, 1000);
      call.on('cancelled', () => clearInterval(timer));
      call.on('close', () => clearInterval(timer));
    },
  });
}
