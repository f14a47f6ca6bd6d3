// The public gRPC API over a real socket, with the real tokenizer, scheduler and generator, on a
// scripted executor that makes every sequence generate a chosen token script: byte-fallback
// pieces and partial stop matches happen exactly where the test wants them.

import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import * as grpcJs from '@grpc/grpc-js';
import { rng } from '@medcluster/kernels/testing';
import { InferenceClient, type inferenceV1, loadInferenceProto } from '@medcluster/proto';
import { finishStep, type LlamaConfig, type SeqStep, type StepOutput } from '@medcluster/worker';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { writeTokenizerFiles } from '../../../worker/src/checkpoint/tokenizer-files.js';
import type { ClusterEvents, ClusterHandle } from '../cluster/cluster-handle.js';
import { TextGenerator } from '../generation/text-generation.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import type { StepExecutor } from '../scheduler/executor.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { type LlamaTokenizer, loadTokenizer } from '../tokenizer/index.js';
import { createServer, listen } from './create-server.js';

const VOCAB = 32019;
const CONTEXT = 256;

/** Every sequence's n-th generated token is script[n] (then eos). */
class ScriptExecutor implements StepExecutor {
  readonly vocabRows = VOCAB;
  readonly maxInFlight = 1;
  private readonly answered = new Map<string, number>();
  /** Milliseconds each step takes (to cancel requests mid-way). */
  stepMs = 0;
  constructor(public script: number[]) {}
  async execute(seqs: SeqStep[]): Promise<StepOutput> {
    if (this.stepMs > 0) await new Promise((r) => setTimeout(r, this.stepMs));
    const rows = seqs.filter((s) => s.logitRows > 0); // one each: no prompt logprobs here
    const out = new Float32Array(rows.length * VOCAB);
    rows.forEach((s, r) => {
      const n = this.answered.get(s.seqId) ?? 0;
      this.answered.set(s.seqId, n + 1);
      out[r * VOCAB + (this.script[n] ?? 2)] = 10;
    });
    return finishStep(seqs, out, VOCAB);
  }
  async close() {}
}

let dir: string;
let tok: LlamaTokenizer;
let executor: ScriptExecutor;
let server: grpc.Server;
let client: InferenceClient;
let address: string;
let scheduler: Scheduler;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'medcluster-grpc-'));
  await writeTokenizerFiles(dir);
  tok = await loadTokenizer(dir);
  executor = new ScriptExecutor([]);
  const blocks = new BlockAllocator(64, 16);
  scheduler = new Scheduler(executor, blocks, {
    maxBatchTokens: 64,
    maxRunning: 8,
    maxWaiting: 8,
    maxContext: CONTEXT,
    eosTokenId: tok.eosTokenId,
  });
  const cluster: ClusterHandle = {
    executor,
    kvGeometry: { numBlocks: 64, blockSize: 16 },
    tp: 1,
    pp: 1,
    workers: () => [],
    healthy: () => true,
    events: new EventEmitter<ClusterEvents>(),
    stop: async () => {},
  };
  server = createServer(
    {
      modelName: 'test-model',
      config: { vocabRows: VOCAB, maxPositions: CONTEXT } as LlamaConfig,
      generator: new TextGenerator(tok, scheduler, { maxTokens: 16 }),
      cluster,
      healthy: () => true,
    },
    { maxMessageBytes: 1 << 20 },
  );
  const port = await listen(server, '127.0.0.1:0');
  address = `127.0.0.1:${port}`;
  client = new InferenceClient(address);
});
afterAll(async () => {
  client?.close();
  await new Promise<void>((r) => (server ? server.tryShutdown(() => r()) : r()));
  await rm(dir, { recursive: true, force: true });
});

async function streamed(request: inferenceV1.GenerateRequest) {
  const messages: inferenceV1.GenerateStreamResponse__Output[] = [];
  for await (const m of client.generateStream(request)) messages.push(m);
  return messages;
}

const words = (text: string) => tok.encode(text, { addBos: false });
/** Ids of vocabulary pieces, exactly as given. */
const pieces = (...list: string[]) =>
  list.map((p) => {
    const id = tok.tokenToId(p);
    if (id === undefined) throw new Error(`no piece ${p}`);
    return id;
  });
// "é" as its two UTF-8 bytes (<0xC3> <0xA9> are ids 3 + byte): the first decodes to nothing yet.
const E_ACUTE = [3 + 0xc3, 3 + 0xa9];

describe('GenerateStream and Generate', () => {
  test('stream the same ids and text, byte-fallback pieces and a partial stop match included', async () => {
    executor.script = [
      ...pieces('▁The', '▁c', 'af'),
      ...E_ACUTE,
      ...pieces('▁said', '▁EN', 'D', 'game', '▁over'),
    ];
    const request = { text: 'Prompt', maxTokens: 40, stop: ['END!'] };
    const unary = await client.generate(request);
    const stream = await streamed(request);
    const tokens = stream.filter((m) => !m.finish);
    expect(tokens.map((m) => m.tokenIds[0])).toEqual(unary.tokenIds);
    expect(tokens.map((m) => m.index)).toEqual(unary.tokenIds.map((_, i) => i));
    expect(stream.map((m) => m.text).join('')).toBe(unary.text);
    // The first token's word marker is a space after the prompt, as the prompt's context decodes it.
    expect(unary.text).toBe(' The café said ENDgame over');
    expect(unary.finishReason).toBe('FINISH_REASON_EOS');
    // Held back: the first byte of é, and "EN" / "END" while they could start "END!".
    const held = tokens.filter((m) => m.text === '').map((m) => tok.idToToken(m.tokenIds[0]));
    expect(held).toContain('<0xC3>');
    expect(held.length).toBeGreaterThanOrEqual(2);
    const last = stream.at(-1) as inferenceV1.GenerateStreamResponse__Output;
    expect(last.finish?.finishReason).toBe('FINISH_REASON_EOS');
    expect(last.finish?.usage).toMatchObject({ completionTokens: unary.tokenIds.length });
    expect(last.finish?.timing?.totalMs).toBeGreaterThan(0);
    expect(unary.choices).toHaveLength(1);
    expect(unary.choices[0]).toMatchObject({ text: unary.text, tokenIds: unary.tokenIds });
  });

  test('a stop string that completes ends the choice before it, in both', async () => {
    executor.script = pieces('▁Answer', ':', '▁yes', '▁END', '!', '▁more');
    const request = { text: 'Prompt', maxTokens: 40, stop: ['END!'] };
    const unary = await client.generate(request);
    const stream = await streamed(request);
    expect(unary).toMatchObject({
      text: ' Answer: yes ',
      finishReason: 'FINISH_REASON_STOP',
      stopSequence: 'END!',
    });
    expect(stream.map((m) => m.text).join('')).toBe(unary.text);
    expect(stream.filter((m) => !m.finish).map((m) => m.tokenIds[0])).toEqual(unary.tokenIds);
    expect(stream.at(-1)?.finish).toMatchObject({ finishReason: 'FINISH_REASON_STOP', stopSequence: 'END!' });
  });

  test('n choices stream under their own index, each ended by its own finish', async () => {
    executor.script = words('one two three');
    const stream = await streamed({ text: 'Prompt', maxTokens: 2, n: { value: 3 } });
    const finishes = stream.filter((m) => m.finish);
    expect(finishes.map((m) => m.choice).sort()).toEqual([0, 1, 2]);
    expect(finishes.filter((m) => m.finish?.usage)).toHaveLength(1);
    expect(finishes.at(-1)?.finish?.usage).toMatchObject({ completionTokens: 6 });
    for (const c of [0, 1, 2]) expect(stream.filter((m) => m.choice === c && !m.finish)).toHaveLength(2);
  });

  test('logprobs come with each token when asked for', async () => {
    executor.script = words('alpha beta');
    const unary = await client.generate({ text: 'Prompt', maxTokens: 2, logprobs: { value: 3 } });
    const lp = unary.choices[0].logprobs;
    expect(lp).toHaveLength(2);
    expect(lp[0].chosen?.tokenId).toBe(unary.tokenIds[0]);
    expect(lp[0].top).toHaveLength(3);
    expect(lp[0].top[0].tokenId).toBe(unary.tokenIds[0]);
    expect(lp[0].chosen?.logprob).toBeLessThanOrEqual(0);
    const stream = await streamed({ text: 'Prompt', maxTokens: 2, logprobs: { value: 0 } });
    expect(
      stream.filter((m) => !m.finish).every((m) => m.logprobs?.chosen && m.logprobs.top.length === 0),
    ).toBe(true);
    expect((await client.generate({ text: 'Prompt', maxTokens: 2 })).choices[0].logprobs).toEqual([]);
  });
});

describe('cancellation frees the KV cache at once', () => {
  /** The scheduler's state once the request ended, and how it ended. */
  const ended = () =>
    new Promise<{ outcome: string; stats: Scheduler['stats'] }>((resolve) => {
      const stop = scheduler.observe((e) => {
        if (e.type !== 'finished') return;
        stop();
        resolve({ outcome: e.outcome, stats: scheduler.stats });
      });
    });

  test('a client that cancels its stream mid-generation', async () => {
    executor.script = words('one two three four five six seven eight nine ten eleven twelve');
    executor.stepMs = 20;
    try {
      const end = ended();
      const abort = new AbortController();
      const seen: number[] = [];
      const err = await (async () => {
        for await (const m of client.generateStream(
          { text: 'Prompt', maxTokens: 12 },
          { signal: abort.signal },
        )) {
          seen.push(...m.tokenIds);
          if (seen.length === 3) abort.abort();
        }
      })().catch((e) => e as grpc.ServiceError);
      expect(err?.code).toBe(1); // CANCELLED
      expect(seen).toHaveLength(3);
      expect(await end).toEqual({
        outcome: 'cancelled',
        stats: expect.objectContaining({ running: 0, freeBlocks: 64 }),
      });
    } finally {
      executor.stepMs = 0;
    }
  });

  test('a request whose deadline passes', async () => {
    executor.script = words('one two three four five six seven eight nine ten');
    executor.stepMs = 30;
    try {
      const end = ended();
      const err = (await client
        .generate({ text: 'Prompt', maxTokens: 10 }, { timeoutMs: 100 })
        .catch((e) => e)) as grpc.ServiceError;
      expect(err.code).toBe(4); // DEADLINE_EXCEEDED
      expect(await end).toEqual({
        outcome: 'cancelled',
        stats: expect.objectContaining({ running: 0, freeBlocks: 64 }),
      });
    } finally {
      executor.stepMs = 0;
    }
  });
});

describe('fuzzed gRPC messages', () => {
  test('random, truncated, mistyped and oversized messages get a status, never a crash; the server keeps serving', async () => {
    const cases = Number(process.env.MEDCLUSTER_FUZZ_CASES ?? 400);
    // A valid request's bytes, to truncate and flip: the decoder then reaches the fields' types.
    const { Generate } = loadInferenceProto().medcluster.v1.Inference.service;
    const valid = Generate.requestSerialize({
      text: 'Prompt words',
      maxTokens: 3,
      temperature: { value: 0.5 },
      stop: ['x'],
      n: { value: 2 },
    });
    const rand = rng(7);
    const raw = new grpcJs.Client(address, grpcJs.credentials.createInsecure());
    const codes = new Map<number, number>();
    executor.script = words('ok');
    try {
      for (let i = 0; i < cases; i++) {
        let bytes: Buffer;
        const kind = i % 4;
        if (kind === 0)
          bytes = Buffer.from(
            Array.from({ length: Math.floor(rand() * 64) }, () => Math.floor(rand() * 256)),
          );
        else if (kind === 1) bytes = valid.subarray(0, Math.floor(rand() * valid.length));
        else if (kind === 2) {
          bytes = Buffer.from(valid);
          for (let f = 0; f < 3; f++) bytes[Math.floor(rand() * bytes.length)] ^= 1 << Math.floor(rand() * 8);
        } else {
          // Field 1 (text, a string) sent as a varint; field 3 (max_tokens) as a string.
          bytes = Buffer.from(rand() < 0.5 ? [0x08, 0x96, 0x01] : [0x1a, 0x02, 0x68, 0x69]);
        }
        const { status, details } = await new Promise<{ status: number; details?: string }>((resolve) => {
          raw.makeUnaryRequest(
            '/medcluster.v1.Inference/Generate',
            (b: Buffer) => b,
            (b: Buffer) => b,
            bytes,
            { deadline: Date.now() + 5000 },
            (err) => resolve({ status: err ? (err.code as number) : 0, details: err?.details }),
          );
        });
        expect(status, `case ${i}: a deadline means the server hung`).not.toBe(4);
        expect([grpcJs.status.OK, grpcJs.status.INVALID_ARGUMENT, grpcJs.status.INTERNAL]).toContain(status);
        // grpc-js answers a message it cannot decode with INTERNAL and says so; any other INTERNAL
        // would be a fault of ours.
        if (status === grpcJs.status.INTERNAL)
          expect(details, `case ${i}`).toBe('Error deserializing request');
        codes.set(status, (codes.get(status) ?? 0) + 1);
      }
      // One oversized message too.
      const big = await client.generate({ text: 'y'.repeat(3 << 20) }).catch((e) => e as grpc.ServiceError);
      expect((big as grpc.ServiceError).code).toBe(8);
      expect(scheduler.stats).toMatchObject({ running: 0, waiting: 0, freeBlocks: 64 });
      await expect(client.generate({ text: 'still there?', maxTokens: 1 })).resolves.toMatchObject({
        text: ' ok', // after the prompt's context, with its leading space
      });
      console.log(
        `gRPC fuzz: ${cases} messages, statuses ${[...codes].map(([c, n]) => `${grpcJs.status[c]} ${n}`).join(', ')}; 0 crashes or hangs`,
      );
    } finally {
      raw.close();
    }
  });
});

describe('invalid requests', () => {
  const cases: [string, inferenceV1.GenerateRequest, RegExp][] = [
    ['missing prompt', { maxTokens: 4 }, /^prompt: set text or token_ids/],
    ['empty text', { text: '' }, /prompt text is empty/],
    ['empty token ids', { tokenIds: { ids: [] } }, /^token_ids: the prompt is empty/],
    [
      'id past the vocabulary',
      { tokenIds: { ids: [1, VOCAB] } },
      /token id 32019 is outside the model's 32019/,
    ],
    [
      'prompt past the context',
      { tokenIds: { ids: new Array(CONTEXT).fill(5) } },
      /the prompt of 256 tokens exceeds the context of 256 tokens/,
    ],
    [
      'prompt plus max_tokens past the context',
      { text: 'hi', maxTokens: CONTEXT },
      /max_tokens 256 exceeds the context/,
    ],
    ['huge text', { text: 'x'.repeat(200_000) }, /the prompt \(200000 bytes.*exceeds the context of 256/],
    ['NaN temperature', { text: 'hi', temperature: { value: Number.NaN } }, /^temperature/],
    ['negative temperature', { text: 'hi', temperature: { value: -0.5 } }, /^temperature/],
    ['top_p 0', { text: 'hi', topP: { value: 0 } }, /^top_p must be in \(0, 1\]/],
    ['top_p above 1', { text: 'hi', topP: { value: 1.5 } }, /^top_p/],
    ['n = 0', { text: 'hi', n: { value: 0 } }, /^n must be an integer in \[1, 16\]/],
    ['n too large', { text: 'hi', n: { value: 17 } }, /^n must be/],
    ['too many stop strings', { text: 'hi', stop: new Array(17).fill('x') }, /^stop: at most 16/],
    ['a stop string too long', { text: 'hi', stop: ['y'.repeat(300)] }, /^stop: each stop string/],
    ['logprobs above 20', { text: 'hi', logprobs: { value: 21 } }, /^logprobs/],
    ['repetition_penalty 0', { text: 'hi', repetitionPenalty: { value: 0 } }, /^repetition_penalty/],
    ['presence_penalty out of range', { text: 'hi', presencePenalty: { value: 5 } }, /^presence_penalty/],
    [
      'too many stop token ids',
      { text: 'hi', stopTokenIds: new Array(65).fill(7) },
      /^stop_token_ids: at most 64/,
    ],
    ['a request id with spaces', { text: 'hi', requestId: 'a b' }, /^request_id/],
  ];
  for (const [name, request, message] of cases) {
    test(`${name}: INVALID_ARGUMENT naming the field`, async () => {
      const err = (await client.generate(request).catch((e) => e)) as grpc.ServiceError;
      expect(err.code, err.details).toBe(3); // INVALID_ARGUMENT
      expect(err.details).toMatch(message);
      const streamErr = (await streamed(request).catch((e) => e)) as grpc.ServiceError;
      expect(streamErr.code).toBe(3);
    });
  }

  test('a message over the size limit is refused by the transport; the server keeps serving', async () => {
    const err = (await client.generate({ text: 'x'.repeat(2 << 20) }).catch((e) => e)) as grpc.ServiceError;
    expect(err.code).toBe(8); // RESOURCE_EXHAUSTED: grpc-js refuses it before it is parsed
    executor.script = words('fine');
    await expect(client.generate({ text: 'still there?', maxTokens: 1 })).resolves.toMatchObject({
      text: ' fine',
    });
  });
});
