import { connect, type NatsConnection } from 'nats';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type NatsServerHandle, startNatsServer } from '../../../test/src/harness/index.js';
import { type AssignmentHandler, WorkerAgent } from '../../../worker/src/control/index.js';
import {
  AssignmentError,
  type AssignmentSpec,
  type WorkerRecord,
  WorkerRegistry,
} from './worker-registry.js';

const CLUSTER = 'regtest';
let server: NatsServerHandle;
const connections: NatsConnection[] = [];
const agents: WorkerAgent[] = [];
const registries: WorkerRegistry[] = [];

beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server.stop();
});
afterEach(async () => {
  for (const r of registries.splice(0)) await r.close();
  for (const a of agents.splice(0)) await a.leave('test over').catch(() => undefined);
  for (const nc of connections.splice(0)) if (!nc.isClosed()) await nc.close();
});

async function nats(): Promise<NatsConnection> {
  const nc = await connect({ servers: server.url });
  connections.push(nc);
  return nc;
}

async function registry(heartbeatTimeoutMs = 2000): Promise<WorkerRegistry> {
  const r = await WorkerRegistry.start({
    nc: await nats(),
    cluster: CLUSTER,
    heartbeatTimeoutMs,
    checkIntervalMs: 25,
  });
  registries.push(r);
  return r;
}

async function agent(
  workerId: string,
  onAssignment: AssignmentHandler,
  nc?: NatsConnection,
): Promise<WorkerAgent> {
  const a = await WorkerAgent.start({
    nc: nc ?? (await nats()),
    cluster: CLUSTER,
    workerId,
    grpcAddress: `127.0.0.1:${7000 + Number(workerId.replace(/\D/g, ''))}`,
    devices: [{ kind: 'cuda', index: 0, name: 'H100', memoryBytes: 80e9 }],
    memoryBytes: 80e9,
    heartbeatIntervalMs: 50,
    onAssignment,
  });
  agents.push(a);
  return a;
}

function once(
  r: WorkerRegistry,
  event: 'joined' | 'lost' | 'returned' | 'ready',
  id: string,
): Promise<WorkerRecord> {
  return new Promise((resolve) => {
    const handler = (w: WorkerRecord) => {
      if (w.id === id) {
        r.off(event, handler);
        resolve(w);
      }
    };
    r.on(event, handler);
  });
}

const spec: AssignmentSpec = {
  modelDir: '/models/tiny',
  stageIndex: 0,
  shard: { layerStart: 0, layerEnd: 4, tpRank: 0, tpSize: 1, embeds: true, computesLogits: true },
  kvCache: { numBlocks: 8, blockSize: 16 },
  collectiveGroup: 'stage-0',
  peers: [],
};

describe('WorkerRegistry with real WorkerAgents over nats-server', () => {
  it('sees workers join (before and after it starts) and waits for a count', async () => {
    await agent('w1', async () => ({ kvBlocks: 8 }));
    const r = await registry();
    const joinedLate = once(r, 'joined', 'w2');
    await agent('w2', async () => ({ kvBlocks: 8 }));
    const workers = await r.waitForWorkers(2, 5000);
    expect(workers.map((w) => w.id).sort()).toEqual(['w1', 'w2']);
    const w2 = await joinedLate;
    expect(w2).toMatchObject({ grpcAddress: '127.0.0.1:7002', memoryBytes: 80e9, state: 'idle' });
    expect(w2.devices[0].name).toBe('H100');
    await expect(r.waitForWorkers(3, 200)).rejects.toThrow(/only 2 of 3 workers joined within 200 ms/);
  });

  it('assigns a shard, relays progress, and resolves when the worker is ready', async () => {
    const r = await registry();
    const joined = once(r, 'joined', 'w1');
    await agent('w1', async (a, reporter) => {
      expect(a.shard.layerEnd).toBe(4);
      reporter.progress(5, 10);
      await new Promise((res) => setTimeout(res, 50));
      reporter.progress(10, 10);
      return { kvBlocks: 77 };
    });
    await joined;
    const progress: number[] = [];
    r.on('progress', (_w, e) => progress.push(e.bytesLoaded));
    const ready = await r.assign('w1', { ...spec, assignmentId: 'asg-1' });
    expect(ready).toMatchObject({
      id: 'w1',
      state: 'ready',
      assignmentId: 'asg-1',
      bytesLoaded: 10,
      bytesTotal: 10,
      kvBlocks: 77,
    });
    expect(progress).toEqual([0, 5, 10]);
    expect(r.get('w1')?.state).toBe('ready');
  });

  it('rejects assign when the load fails, is refused, or times out', async () => {
    const r = await registry();
    const joined = Promise.all([once(r, 'joined', 'w1'), once(r, 'joined', 'w2')]);
    await agent('w1', async () => {
      throw new Error('out of device memory');
    });
    await agent('w2', () => new Promise(() => {}));
    await joined;
    const failed = r.assign('w1', spec);
    await expect(failed).rejects.toBeInstanceOf(AssignmentError);
    await expect(failed).rejects.toThrow(/worker w1 failed to load assignment .*: out of device memory/);
    expect(r.get('w1')).toMatchObject({ state: 'failed', error: 'out of device memory' });
    await expect(r.assign('w2', { ...spec, assignmentId: 'slow' }, { readyTimeoutMs: 300 })).rejects.toThrow(
      /worker w2 did not become ready with assignment slow within 300 ms/,
    );
    // Still loading 'slow': a new assignment is refused by the worker itself.
    await expect(r.assign('w2', { ...spec, assignmentId: 'next' })).rejects.toThrow(
      /worker w2 refused assignment next: busy loading assignment slow/,
    );
    await expect(r.assign('nobody', spec)).rejects.toThrow(/worker nobody is not known/);
  });

  it('detects a worker whose heartbeats stop, fails its pending assignment, and sees it return', async () => {
    const r = await registry(500);
    const joined = once(r, 'joined', 'w3');
    const workerNc = await nats();
    await agent('w3', () => new Promise(() => {}), workerNc);
    await joined;
    const pending = r.assign('w3', spec);
    await new Promise((res) => setTimeout(res, 100));
    const lost = once(r, 'lost', 'w3');
    const started = performance.now();
    await workerNc.close(); // the process "dies": no leave message, heartbeats stop
    const record = await lost;
    expect(record.state).toBe('lost');
    expect(performance.now() - started).toBeGreaterThanOrEqual(400);
    await expect(pending).rejects.toThrow(/worker w3 was lost \(no heartbeat for \d+ ms\) before assignment/);
    await expect(r.assign('w3', spec)).rejects.toThrow(/worker w3 is lost/);
    // A worker process with the same id starts again: it announces and joins anew.
    const back = once(r, 'joined', 'w3');
    await agent('w3', async () => ({ kvBlocks: 8 }));
    expect((await back).state).toBe('idle');
  });

  it('reports a graceful leave and ignores invalid messages', async () => {
    const r = await registry();
    const joined = once(r, 'joined', 'w4');
    const a = await agent('w4', async () => ({ kvBlocks: 8 }));
    await joined;
    const invalid = new Promise<string>((resolve) => r.on('invalidMessage', (e) => resolve(e.message)));
    const observer = await nats();
    observer.publish(
      `medcluster.${CLUSTER}.workers.heartbeat`,
      new TextEncoder().encode('{"v":1,"workerId":"w4"}'),
    );
    const left = new Promise<string>((resolve) =>
      r.on('left', (w, reason) => w.id === 'w4' && resolve(reason)),
    );
    await a.leave('draining for upgrade');
    expect(await left).toBe('draining for upgrade');
    expect(r.get('w4')?.state).toBe('leaving');
    expect(await invalid).toMatch(/^WorkerHeartbeat\.seq: expected a finite number, got undefined/);
  });
});
