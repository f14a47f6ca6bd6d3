import {
  type Assignment,
  type AssignmentReply,
  controlCodecs,
  controlSubjects,
  type LoadEvent,
  type WorkerHeartbeat,
} from '@medcluster/proto';
import { connect, type NatsConnection } from 'nats';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type NatsServerHandle, startNatsServer } from '../../../test/src/harness/index.js';
import { type AssignmentHandler, WorkerAgent } from './worker-agent.js';

const CLUSTER = 'agenttest';
const subjects = controlSubjects(CLUSTER);
let server: NatsServerHandle;
const connections: NatsConnection[] = [];
const agents: WorkerAgent[] = [];

beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server.stop();
});
afterEach(async () => {
  for (const a of agents.splice(0)) await a.leave('test over').catch(() => undefined);
  for (const nc of connections.splice(0)) await nc.close();
});

async function nats(): Promise<NatsConnection> {
  const nc = await connect({ servers: server.url });
  connections.push(nc);
  return nc;
}

/** Collects decoded messages of a subject. */
function collect<T>(nc: NatsConnection, subject: string, decode: (d: Uint8Array) => T): T[] {
  const out: T[] = [];
  nc.subscribe(subject, { callback: (_err, msg) => out.push(decode(msg.data)) });
  return out;
}

async function until(predicate: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

function assignment(id: string): Assignment {
  return {
    v: 1,
    assignmentId: id,
    modelDir: '/models/tiny',
    stageIndex: 0,
    shard: { layerStart: 0, layerEnd: 4, tpRank: 0, tpSize: 1, embeds: true, computesLogits: true },
    kvCache: { numBlocks: 8, blockSize: 16 },
    collectiveGroup: 'stage-0',
    peers: [],
  };
}

async function startAgent(onAssignment: AssignmentHandler, workerId = 'w0'): Promise<WorkerAgent> {
  const agent = await WorkerAgent.start({
    nc: await nats(),
    cluster: CLUSTER,
    workerId,
    grpcAddress: '127.0.0.1:7001',
    devices: [{ kind: 'cpu', index: 0, name: 'test cpu', memoryBytes: 1e9 }],
    memoryBytes: 1e9,
    heartbeatIntervalMs: 50,
    onAssignment,
  });
  agents.push(agent);
  return agent;
}

async function send(nc: NatsConnection, workerId: string, a: Assignment): Promise<AssignmentReply> {
  const reply = await nc.request(subjects.assign(workerId), controlCodecs.assignment.encode(a), {
    timeout: 2000,
  });
  return controlCodecs.assignmentReply.decode(reply.data);
}

describe('WorkerAgent', () => {
  it('announces, heartbeats, re-announces on discover, and leaves', async () => {
    const observer = await nats();
    const announces = collect(observer, subjects.announce, controlCodecs.announce.decode);
    const beats = collect(observer, subjects.heartbeat, controlCodecs.heartbeat.decode);
    const leaves = collect(observer, subjects.leave, controlCodecs.leave.decode);
    await observer.flush();
    const agent = await startAgent(async () => ({ kvBlocks: 8 }));
    await until(() => announces.length === 1 && beats.length >= 3);
    expect(announces[0]).toMatchObject({
      workerId: 'w0',
      grpcAddress: '127.0.0.1:7001',
      memoryBytes: 1e9,
      heartbeatIntervalMs: 50,
    });
    expect(beats.slice(0, 3).map((b) => b.seq)).toEqual([0, 1, 2]);
    expect(beats[0].state).toBe('idle');
    observer.publish(subjects.discover, controlCodecs.discover.encode({ v: 1, coordinatorId: 'c' }));
    await until(() => announces.length === 2);
    await agent.leave('maintenance');
    await until(() => leaves.length === 1);
    expect(leaves[0]).toEqual({ v: 1, workerId: 'w0', reason: 'maintenance' });
    const count = beats.length;
    await new Promise((r) => setTimeout(r, 200));
    expect(beats.length).toBe(count);
  });

  it('accepts an assignment, reports progress, then ready; refuses a second while loading', async () => {
    const observer = await nats();
    const events = collect<LoadEvent>(observer, subjects.load, controlCodecs.load.decode);
    const beats = collect<WorkerHeartbeat>(observer, subjects.heartbeat, controlCodecs.heartbeat.decode);
    await observer.flush();
    let release: () => void = () => {};
    const seen: Assignment[] = [];
    const agent = await startAgent(async (a, reporter) => {
      seen.push(a);
      reporter.progress(10, 100, 'layer 0');
      reporter.progress(100, 100);
      await new Promise<void>((r) => {
        release = r;
      });
      return { kvBlocks: 123 };
    });
    expect(await send(observer, 'w0', assignment('a1'))).toEqual({
      v: 1,
      workerId: 'w0',
      assignmentId: 'a1',
      accepted: true,
    });
    await until(() => events.length === 3);
    expect(agent.state).toBe('loading');
    expect(await send(observer, 'w0', assignment('a2'))).toMatchObject({
      accepted: false,
      error: 'busy loading assignment a1',
    });
    // A retried request for the same assignment is accepted again without reloading.
    expect(await send(observer, 'w0', assignment('a1'))).toMatchObject({ accepted: true });
    release();
    await until(() => events.length === 4);
    expect(events.map((e) => [e.phase, e.bytesLoaded, e.bytesTotal, e.kvBlocks])).toEqual([
      ['loading', 0, 0, undefined],
      ['loading', 10, 100, undefined],
      ['loading', 100, 100, undefined],
      ['ready', 100, 100, 123], // the count the shard allocated, for the coordinator's scheduler
    ]);
    expect(seen).toEqual([assignment('a1')]);
    expect(agent.state).toBe('ready');
    await until(() => beats.some((b) => b.state === 'ready' && b.assignmentId === 'a1'));
  });

  it('reports a failed load with the error message, and refuses invalid assignments', async () => {
    const observer = await nats();
    const events = collect<LoadEvent>(observer, subjects.load, controlCodecs.load.decode);
    await observer.flush();
    const agent = await startAgent(async () => {
      throw new Error('tensor model.layers.0.mlp.up_proj.qweight missing');
    });
    expect((await send(observer, 'w0', assignment('bad'))).accepted).toBe(true);
    await until(() => events.some((e) => e.phase === 'failed'));
    expect(events.at(-1)).toMatchObject({
      phase: 'failed',
      message: 'tensor model.layers.0.mlp.up_proj.qweight missing',
    });
    expect(agent.state).toBe('failed');
    const raw = await observer.request(subjects.assign('w0'), new TextEncoder().encode('{"v":1}'), {
      timeout: 2000,
    });
    const reply = controlCodecs.assignmentReply.decode(raw.data);
    expect(reply.accepted).toBe(false);
    expect(reply.error).toMatch(/invalid assignment: Assignment\.assignmentId: expected a string/);
    // After a failure a new assignment is taken.
    expect((await send(observer, 'w0', assignment('again'))).accepted).toBe(true);
  });
});
