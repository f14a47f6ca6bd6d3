// The distributed cluster against one worker: tensor parallel, pipeline parallel and both,
// with real worker processes, a real nats-server, and real gRPC between every process.

import {
  BlockAllocator,
  type ClusterHandle,
  type ClusterWorker,
  LocalExecutor,
  loadTokenizer,
  type PipelineExecutor,
  type StepExecutor,
  startNatsCluster,
} from '@medcluster/coordinator';
import { GREEDY, openCheckpoint } from '@medcluster/worker';
import { connect, type NatsConnection } from 'nats';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { serveThrough } from './follow-on.js';
import { agreedPrefix, type GreedyRun, greedy, relativeError } from './greedy.js';
import { type NatsServerHandle, runCli, startCli, startNatsServer, stopAll } from './harness/index.js';
import { testModel } from './models.js';

/** Tensor-parallel sums change the fp32 summation order, so logits differ by rounding only. */
const LOGITS_REL_TOL = 1e-3;
/** Tokens must match wherever one worker's top-2 margin is at least this. */
const NEAR_TIE_MARGIN = 0.05;
const STEPS = 16;
const KV = { numBlocks: 256, blockSize: 16 };

const PROMPTS = [
  'The patient presented with',
  'Question: What is the first-line treatment for hypertension?\nAnswer:',
];

let nats: NatsServerHandle;
let nc: NatsConnection;

beforeAll(async () => {
  nats = await startNatsServer();
  nc = await connect({ servers: nats.url });
});
afterAll(async () => {
  await nc?.drain();
  await nats?.stop();
});
afterEach(stopAll);

async function oneWorker(modelDir: string, promptIds: number[][]): Promise<GreedyRun[]> {
  const executor = await LocalExecutor.create({
    checkpoint: await openCheckpoint(modelDir),
    device: 'cpu',
    kvCache: KV,
  });
  try {
    const blocks = new BlockAllocator(KV.numBlocks, KV.blockSize);
    const runs: GreedyRun[] = [];
    for (const [i, ids] of promptIds.entries())
      runs.push(await greedy(executor, blocks, `ref-${i}`, ids, STEPS));
    return runs;
  } finally {
    await executor.close();
  }
}

/** Starts tp x pp worker processes that announce themselves over NATS, and a coordinator for them. */
async function natsCluster(modelDir: string, tp: number, pp: number, cluster: string) {
  for (let i = 0; i < tp * pp; i++) {
    startCli([
      'worker',
      '--nats',
      nats.url,
      '--cluster',
      cluster,
      '--id',
      `${cluster}-w${i}`,
      '--listen',
      '127.0.0.1:0',
      '--threads',
      '1',
    ]);
  }
  const { config } = await openCheckpoint(modelDir);
  return startNatsCluster({ nc, cluster, modelDir, config, tp, pp, kvCache: KV, workerTimeoutMs: 60_000 });
}

/** The stages' layer ranges, in order, as the cluster's workers report them. */
function stagesOf(cluster: ClusterHandle): ClusterWorker[] {
  const byStage = new Map(cluster.workers().map((w) => [w.stage, w]));
  return [...byStage.keys()].sort((a, b) => a - b).map((s) => byStage.get(s) as ClusterWorker);
}

async function expectSameAsOneWorker(executor: StepExecutor, reference: GreedyRun[], promptIds: number[][]) {
  const blocks = new BlockAllocator(KV.numBlocks, KV.blockSize);
  // Every position's logits (prompt logprobs) come back through every stage and rank, in order.
  const ids = promptIds[0];
  const table: number[] = [];
  blocks.ensure(table, ids.length);
  const { logits: all } = await executor.execute([
    {
      seqId: 'all',
      startPos: 0,
      numTokens: ids.length,
      tokens: ids,
      blockTable: table,
      logitRows: ids.length,
    },
  ]);
  blocks.release(table);
  expect(all.length).toBe(ids.length * executor.vocabRows);
  expect(
    relativeError(all.subarray(all.length - executor.vocabRows), reference[0].promptLogits),
  ).toBeLessThan(LOGITS_REL_TOL);
  // A sampled step brings back the token (and the logprobs asked for), never the logit row.
  blocks.ensure(table, ids.length);
  const sampled = await executor.execute([
    {
      seqId: 'sampled',
      startPos: 0,
      numTokens: ids.length,
      tokens: ids,
      blockTable: table,
      logitRows: 1,
      sample: {
        params: { ...GREEDY, logprobs: 2 },
        key: { seed: 0, choice: 0, position: ids.length },
        generated: { count: 0, ids: [] },
      },
    },
  ]);
  blocks.release(table);
  expect(sampled.logits).toHaveLength(0);
  expect(sampled.sampled).toHaveLength(1);
  expect(sampled.sampled[0].id).toBe(reference[0].tokens[0]);
  expect(sampled.sampled[0].topLogprobs?.[0].id).toBe(reference[0].tokens[0]);
  for (const [i, ids] of promptIds.entries()) {
    const run = await greedy(executor, blocks, `seq-${i}`, ids, STEPS);
    expect(relativeError(run.promptLogits, reference[i].promptLogits)).toBeLessThan(LOGITS_REL_TOL);
    const n = agreedPrefix(reference[i], NEAR_TIE_MARGIN);
    expect(n, 'steps compared before a near-tie').toBeGreaterThanOrEqual(4);
    expect(run.tokens.slice(0, n)).toEqual(reference[i].tokens.slice(0, n));
  }
}

describe('tiny model over NATS and gRPC', () => {
  let modelDir: string;
  let promptIds: number[][];
  let reference: GreedyRun[];

  beforeAll(async () => {
    modelDir = await testModel();
    const tokenizer = await loadTokenizer(modelDir);
    promptIds = PROMPTS.map((p) => tokenizer.encode(p));
    reference = await oneWorker(modelDir, promptIds);
  });

  for (const [tp, pp] of [
    [2, 1],
    [1, 2],
    [2, 2],
    [4, 1],
  ] as const) {
    test(`tp=${tp} x pp=${pp} gives one worker's greedy tokens and logits`, async () => {
      const cluster = await natsCluster(modelDir, tp, pp, `tp${tp}pp${pp}`);
      try {
        const stages = stagesOf(cluster);
        expect(stages).toHaveLength(pp);
        expect(stages.every((s, i) => s.layerStart === (i === 0 ? 0 : stages[i - 1].layerEnd))).toBe(true);
        expect(stages[pp - 1].layerEnd).toBe(4);
        // The transport each stage chose reaches the coordinator: CPU ranks use the host's.
        expect(cluster.workers().map((w) => w.collective)).toEqual(
          Array(tp * pp).fill(tp > 1 ? 'grpc' : undefined),
        );
        await expectSameAsOneWorker(cluster.executor, reference, promptIds);
      } finally {
        await cluster.stop();
      }
    });
  }

  test('tp=2: follow-on steps, fed on the workers, give the tokens of steps fed from the coordinator', async () => {
    const cluster = await natsCluster(modelDir, 2, 1, 'follow');
    try {
      expect(cluster.executor.sampledInputs).toBe(true);
      const requests = promptIds.map((ids, i) => ({
        requestId: `f${i}`,
        promptIds: ids,
        maxTokens: 10,
        n: 1,
        sampling: i === 0 ? GREEDY : { ...GREEDY, temperature: 0.8, seed: 5 + i },
      }));
      const limits = { maxBatchTokens: 64, maxRunning: 8, maxWaiting: 16, maxContext: 256, eosTokenId: 2 };
      const hostFed = await serveThrough(cluster.executor, false, requests, limits, KV);
      const deviceFed = await serveThrough(cluster.executor, true, requests, limits, KV);
      expect(hostFed.sampledInputs).toBe(0);
      expect(deviceFed.choices).toEqual(hostFed.choices);
      expect(deviceFed.sampledInputs).toBeGreaterThan(10);
    } finally {
      await cluster.stop();
    }
  });

  test('a pipelined cluster overlaps steps of different sequences', async () => {
    const cluster = await natsCluster(modelDir, 1, 2, 'overlap');
    try {
      const executor = cluster.executor as PipelineExecutor;
      expect(executor.maxInFlight).toBe(2);
      const blocks = new BlockAllocator(KV.numBlocks, KV.blockSize);
      const [a, b] = await Promise.all(promptIds.map((ids, i) => greedy(executor, blocks, `o-${i}`, ids, 4)));
      expect(a.tokens).toEqual(reference[0].tokens.slice(0, 4));
      expect(b.tokens).toEqual(reference[1].tokens.slice(0, 4));
    } finally {
      await cluster.stop();
    }
  });
});

describe('deep pipelines and refused plans', () => {
  test('an 8-stage pipeline runs an 8-layer model, one layer per stage', async () => {
    const modelDir = await testModel({ layers: 8 });
    const tokenizer = await loadTokenizer(modelDir);
    const ids = [tokenizer.encode(PROMPTS[0])];
    const reference = await oneWorker(modelDir, ids);
    const cluster = await natsCluster(modelDir, 1, 8, 'pp8');
    try {
      expect(stagesOf(cluster).map((s) => s.layerEnd - s.layerStart)).toEqual([1, 1, 1, 1, 1, 1, 1, 1]);
      await expectSameAsOneWorker(cluster.executor, reference, ids);
    } finally {
      await cluster.stop();
    }
  });

  test('a plan that cannot work is refused with a message that says why', async () => {
    const modelDir = await testModel();
    const tp8 = await runCli(['up', '--model', modelDir, '--tp', '8', '--grpc-port', '0']);
    expect(tp8.code).not.toBe(0);
    expect(tp8.stderr).toMatch(/tp 8.*4 (KV|key)/i);
    const pp5 = await runCli(['up', '--model', modelDir, '--pp', '5', '--grpc-port', '0']);
    expect(pp5.code).not.toBe(0);
    expect(pp5.stderr).toMatch(/pp 5 exceeds the 4 layers/);
  });
});
