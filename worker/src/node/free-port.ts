// TCP ports that were free a moment ago on 127.0.0.1 (the OS picks them: listen on port 0).
import { createServer, type Server } from 'node:net';

/** Listens on a port the OS picks; resolves with the port, the server still listening. */
function listenOnAnyPort(host: string, server: Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.unref();
    server.once('error', reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        reject(new Error(`cannot read the port of a listening socket on ${host}`));
        return;
      }
      resolve(address.port);
    });
  });
}

/**
 * Asks the OS for `count` distinct free ports on host, holding each until all are chosen (so none
 * is handed out twice), then releases them. They are free, not reserved: another process may still
 * take one before its user binds it, so callers must report a collision clearly.
 */
export async function freePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const servers: Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const server = createServer();
      servers.push(server);
      ports.push(await listenOnAnyPort(host, server));
    }
    return ports;
  } finally {
    await Promise.all(
      servers.map(
        (s) => new Promise<void>((resolve) => (s.listening ? s.close(() => resolve()) : resolve())),
      ),
    );
  }
}

/** One free port on host (freePorts). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const [port] = await freePorts(1, host);
  return port as number;
}
