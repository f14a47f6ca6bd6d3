// A TCP port that was free a moment ago on 127.0.0.1 (the OS picks it: listen on port 0).
import { createServer } from 'node:net';

/** Asks the OS for a free port on host, then releases it. Callers must retry on a collision. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error(`cannot read the port of a listening socket on ${host}`));
        return;
      }
      server.close((err) => (err ? reject(err) : resolve(address.port)));
    });
  });
}
