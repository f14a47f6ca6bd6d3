// The registry's admission check (how the coordinator keeps out a worker whose certificate does
// not verify), with real WorkerAgents over a real nats-server: a refused worker is never counted,
// its heartbeats do not bring it in, and the same worker id restarted with a passing check joins.

import { connect, type NatsConnection } from 'nats';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type NatsServerHandle, startNatsServer } from '../../../test/src/harness/index.js';
import { WorkerAgent } from '../../../worker/src/control/index.js';
import { type WorkerRecord, WorkerRegistry } from './worker-registry.js';

const CLUSTER = 'admission';
let server: NatsServerHandle;
const connections: NatsConnection[] = [];
const closers: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server.stop();
});
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
  for (const nc of connections.splice(0)) if (!nc.isClosed()) await nc.close();
});

async function nats(): Promise<NatsConnection> {
  const nc = await connect({ servers: server.url });
  connections.push(nc);
  return nc;
}

async function agent(workerId: string, port: number): Promise<WorkerAgent> {
  const a = await WorkerAgent.start({
    nc: await nats(),
    cluster: CLUSTER,
    workerId,
    grpcAddress: `127.0.0.1:${port}`,
    devices: [{ kind: 'cpu', index: 0, name: 'cpu', memoryBytes: 1e9 }],
    memoryBytes: 1e9,
    heartbeatIntervalMs: 50,
    onAssignment: async () => ({ kvBlocks: 1 }),
  });
  closers.push(() => a.leave('test over'));
  return a;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('WorkerRegistry admission', () => {
  it('refuses a worker that fails the check, keeps it out, and admits it once restarted with a passing one', async () => {
    /** Addresses whose certificate "does not verify". */
    const failing = new Set(['127.0.0.1:7001']);
    const asked: string[] = [];
    const registry = await WorkerRegistry.start({
      nc: await nats(),
      cluster: CLUSTER,
      heartbeatTimeoutMs: 2000,
      checkIntervalMs: 25,
      admit: async (w) => {
        asked.push(w.id);
        if (failing.has(w.grpcAddress)) throw new Error(`${w.grpcAddress}: certificate has expired`);
      },
    });
    closers.push(() => registry.close());
    const refused: [WorkerRecord, string][] = [];
    const joined: string[] = [];
    registry.on('refused', (w, reason) => refused.push([w, reason]));
    registry.on('joined', (w) => joined.push(w.id));

    const first = await agent('w1', 7001);
    await agent('w2', 7002);
    await expect(registry.waitForWorkers(2, 1000)).rejects.toThrow(/only 1 of 2 workers joined/);
    expect(refused.map(([w, reason]) => [w.id, reason])).toEqual([
      ['w1', '127.0.0.1:7001: certificate has expired'],
    ]);
    expect(registry.workers().map((w) => w.id)).toEqual(['w2']);
    // Twenty heartbeats later it is still out, and was asked once: a refusal is not retried for
    // the same process (nor does it make the registry ask every worker to announce again).
    await sleep(1000);
    expect(registry.get('w1')).toBeUndefined();
    expect(asked.filter((id) => id === 'w1')).toHaveLength(1);

    // The same worker id, restarted (a new process) with a certificate that verifies.
    await first.leave('restarting');
    failing.clear();
    await agent('w1', 7001);
    const both = await registry.waitForWorkers(2, 5000);
    expect(both.map((w) => w.id).sort()).toEqual(['w1', 'w2']);
    expect(joined.sort()).toEqual(['w1', 'w2']);
  });
});
