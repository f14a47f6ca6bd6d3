// The worker's reaction to a lost device, on the CPU backend with the failpoint standing in for
// a GPU whose context is gone: the step fails with the device's error, the worker turns 'failed'
// for good and says why, and `deviceLost` settles so that the process can leave.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Assignment } from '@medcluster/proto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { makeModel } from '../checkpoint/make-model.js';
import { WorkerNode, WorkerStateError } from './worker-node.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'worker-node-'));
  await makeModel({ out: dir, preset: 'tiny', seed: 5 });
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const assignment = (): Assignment => ({
  v: 1,
  assignmentId: 'a1',
  modelDir: dir,
  stageIndex: 0,
  shard: { layerStart: 0, layerEnd: 4, tpRank: 0, tpSize: 1, embeds: true, computesLogits: true },
  kvCache: { numBlocks: 8, blockSize: 16 },
  collectiveGroup: 'stage-0',
  peers: [],
});

const step = (startPos: number) => [
  { seqId: 's', startPos, numTokens: 1, tokens: [7], blockTable: [0], logitRows: 1 },
];

describe('a worker whose device is lost', () => {
  test('fails the step with the device error, turns failed for good, and settles deviceLost', async () => {
    const node = new WorkerNode({
      workerId: 'w0',
      device: 'cpu',
      threads: 1,
      failpoints: { deviceLostAfterSteps: 2 },
    });
    await node.load(assignment(), undefined);
    await node.runStep(step(0));
    await node.runStep(step(1));
    expect(node.state).toBe('ready');
    let lost: string | undefined;
    void node.deviceLost.then((reason) => {
      lost = reason;
    });
    await expect(node.runStep(step(2))).rejects.toThrow(/CUDA error cudaErrorIllegalAddress/);
    expect(node.state).toBe('failed');
    expect(node.error).toMatch(/^device lost: step: CUDA error cudaErrorIllegalAddress/);
    await Promise.resolve();
    expect(lost).toBe(node.error);
    await expect(node.runStep(step(2))).rejects.toBeInstanceOf(WorkerStateError);
    await node.close();
  });

  test('a CUDA error that a fresh call does not repeat leaves the worker ready', async () => {
    // Without the failpoint the CPU device answers the check: the fault was the step's alone.
    const node = new WorkerNode({ workerId: 'w1', device: 'cpu', threads: 1 });
    await node.load(assignment(), undefined);
    const check = (node as unknown as { checkDevice(e: Error): Promise<void> }).checkDevice.bind(node);
    await check(new Error('step: CUDA error cudaErrorMemoryAllocation (out of memory)'));
    expect(node.state).toBe('ready');
    await expect(node.runStep(step(0))).resolves.toBeDefined();
    await node.close();
  });
});
