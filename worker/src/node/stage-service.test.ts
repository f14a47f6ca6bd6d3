// The Stage service's hand-off inputs on a CPU worker, over a real gRPC stream: hidden states as
// bytes run, a shared device buffer (which only a CUDA worker of the same host can map) is
// refused as an invalid step that names why, and the stream keeps serving.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Assignment } from '@medcluster/proto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { makeModel } from '../checkpoint/make-model.js';
import { openCheckpoint } from '../checkpoint/open.js';
import { encodeActivation } from './activation.js';
import { freePort } from './free-port.js';
import { StageLink } from './stage-link.js';
import { addWorkerService } from './stage-service.js';
import { encodeSeqStep } from './step-codec.js';
import { WorkerNode } from './worker-node.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stage-service-'));
  await makeModel({ out: dir, preset: 'tiny', seed: 5 });
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('a stage after the first, on the CPU', () => {
  test('takes hidden states as bytes, refuses a shared device buffer, and keeps serving', async () => {
    const node = new WorkerNode({ workerId: 'w1', device: 'cpu', threads: 1 });
    const assignment: Assignment = {
      v: 1,
      assignmentId: 'a1',
      modelDir: dir,
      stageIndex: 1,
      shard: { layerStart: 2, layerEnd: 4, tpRank: 0, tpSize: 1, embeds: false, computesLogits: true },
      kvCache: { numBlocks: 8, blockSize: 16 },
      collectiveGroup: 'stage-1',
      peers: [],
    };
    await node.load(assignment, undefined);
    const server = new grpc.Server();
    addWorkerService(server, node);
    const port = await freePort();
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
    const link = await StageLink.connect(`127.0.0.1:${port}`);
    try {
      const status = await link.status();
      expect(status.deviceKind).toBe('cpu');
      expect(status.hostProcess.endsWith(`/${process.pid}`)).toBe(true);
      expect(status.handOff).toBe(''); // the last stage hands nothing on
      const { hiddenSize } = (await openCheckpoint(dir)).config;
      const step = (stepId: number) => ({
        stepId,
        seqs: [encodeSeqStep({ seqId: 's', startPos: 0, numTokens: 1, blockTable: [0], logitRows: 1 })],
        stageGroups: [],
      });
      const shared = await link.send({
        step: step(1),
        sharedActivation: {
          handle: Buffer.alloc(88),
          dtype: 'DTYPE_FLOAT32',
          shape: [64, hiddenSize],
          rows: 1,
        },
      });
      expect(shared.error?.code).toBe('INVALID_STEP');
      expect(shared.error?.message).toBe("worker w1 (cpu) cannot map another process's device memory");
      const bytes = await link.send({
        step: step(2),
        activation: encodeActivation(new Float32Array(hiddenSize).fill(0.01), 1),
      });
      expect(bytes.error).toBeUndefined();
      expect(bytes.output?.seqs).toHaveLength(1);
      expect(bytes.output?.seqs[0].logits.length).toBe((node.vocabRows as number) * 4);
    } finally {
      link.close();
      server.forceShutdown();
      await node.close();
    }
  });
});
