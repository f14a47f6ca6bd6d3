import { describe, expect, it } from 'vitest';
import { controlCodecs } from './codec.js';
import type { Assignment } from './messages.js';
import { ControlMessageError } from './schema.js';
import { controlSubjects } from './subjects.js';

const assignment: Assignment = {
  v: 1,
  assignmentId: 'a-1',
  modelDir: '/models/tiny',
  stageIndex: 0,
  shard: { layerStart: 0, layerEnd: 4, tpRank: 1, tpSize: 2, embeds: true, computesLogits: true },
  kvCache: { numBlocks: 64, blockSize: 16 },
  collectiveGroup: 'stage-0',
  peers: ['127.0.0.1:5000', '127.0.0.1:5001'],
};

describe('control codecs', () => {
  it('round-trips every field of an assignment', () => {
    const codec = controlCodecs.assignment;
    expect(codec.decode(codec.encode(assignment))).toEqual(assignment);
  });

  it('keeps absent optional fields absent and drops unknown fields', () => {
    const codec = controlCodecs.heartbeat;
    const data = new TextEncoder().encode(
      JSON.stringify({ v: 1, workerId: 'w0', seq: 3, state: 'idle', sentAt: 5, extra: true }),
    );
    expect(codec.decode(data)).toEqual({ v: 1, workerId: 'w0', seq: 3, state: 'idle', sentAt: 5 });
  });

  it('rejects malformed messages naming the field', () => {
    const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
    expect(() =>
      controlCodecs.assignment.decode(enc({ ...assignment, shard: { ...assignment.shard, tpRank: 2 } })),
    ).toThrow(/tpRank 2 is not below tpSize 2/);
    expect(() => controlCodecs.assignment.decode(enc({ ...assignment, peers: ['a'] }))).toThrow(
      /1 peers for tpSize 2/,
    );
    expect(() =>
      controlCodecs.heartbeat.decode(enc({ v: 1, workerId: 'w.0', seq: 0, state: 'idle', sentAt: 0 })),
    ).toThrow(/WorkerHeartbeat\.workerId: expected a string matching/);
    expect(() =>
      controlCodecs.heartbeat.decode(enc({ v: 2, workerId: 'w0', seq: 0, state: 'idle', sentAt: 0 })),
    ).toThrow(/WorkerHeartbeat\.v: expected one of 1, got number 2/);
    expect(() => controlCodecs.load.decode(new TextEncoder().encode('{'))).toThrow(ControlMessageError);
    expect(() => controlCodecs.leave.encode({ v: 1, workerId: 'w0' } as never)).toThrow(
      /WorkerLeave\.reason/,
    );
  });

  it('builds subjects per cluster and refuses ids that are not subject tokens', () => {
    const s = controlSubjects('prod');
    expect(s.assign('w-1')).toBe('medcluster.prod.worker.w-1.assign');
    expect(s.heartbeat).toBe('medcluster.prod.workers.heartbeat');
    expect(() => s.assign('w.*')).toThrow(ControlMessageError);
    expect(() => controlSubjects('a b')).toThrow(ControlMessageError);
  });
});
