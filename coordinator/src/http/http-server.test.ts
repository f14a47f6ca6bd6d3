// The HTTP server over a real socket, on a real scheduler, generator and tokenizer, with a
// scripted executor in place of the model: its logits are a fixed function of the last token,
// and `hold()` keeps a step open, so admission, prefill and decode can each be caught in the
// act. Every test ends with every KV block free.

import { EventEmitter } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LlamaConfig, SeqStep, StepOutput } from '@medcluster/worker';
import { finishStep, writeTokenizerFiles } from '@medcluster/worker';
import type { FastifyInstance } from 'fastify';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import type { ClusterHandle } from '../cluster/cluster-handle.js';
import { TextGenerator } from '../generation/text-generation.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import type { SchedulerEvent } from '../scheduler/events.js';
import type { StepExecutor } from '../scheduler/executor.js';
import { Scheduler, type SchedulerLimits } from '../scheduler/scheduler.js';
import { type LlamaTokenizer, loadTokenizer } from '../tokenizer/index.js';
import { createHttpServer, listenHttp } from './create-http-server.js';

/** Words that are one token each. */
const WORDS = 'the patient presented with pain and a dry history for three days'.split(' ');

/** Logits after `token`: the next word of WORDS strongly, two alternatives weakly. */
class WordExecutor implements StepExecutor {
  readonly maxInFlight = 1;
  steps: SeqStep[][] = [];
  private gate?: Promise<void>;
  private onHeld?: () => void;
  private readonly next = new Map<number, number>();

  constructor(
    readonly vocabRows: number,
    private readonly words: number[],
  ) {
    for (const [i, id] of words.entries()) this.next.set(id, words[(i + 1) % words.length]);
  }

  hold(): { started: Promise<void>; release: () => void } {
    let release = () => {};
    this.gate = new Promise<void>((r) => {
      release = r;
    });
    const started = new Promise<void>((r) => {
      this.onHeld = r;
    });
    return { started, release };
  }

  async execute(seqs: SeqStep[]): Promise<StepOutput> {
    this.steps.push(seqs.map((s) => ({ ...s, tokens: [...(s.tokens ?? [])] })));
    const gate = this.gate;
    if (gate) {
      this.gate = undefined;
      this.onHeld?.();
      await gate;
    } else await new Promise((r) => setTimeout(r, 1));
    const before = seqs.flatMap((s) =>
      Array.from({ length: s.logitRows }, (_, r) => (s.tokens as number[])[s.numTokens - s.logitRows + r]),
    );
    const out = new Float32Array(before.length * this.vocabRows);
    before.forEach((token, r) => {
      const row = out.subarray(r * this.vocabRows, (r + 1) * this.vocabRows);
      const next = this.next.get(token) ?? this.words[0];
      row[next] = 6;
      row[this.words[(this.words.indexOf(next) + 3) % this.words.length]] = 4;
      row[this.words[(this.words.indexOf(next) + 5) % this.words.length]] = 3;
    });
    // Sampling happens where the logits are, as on a pipeline's last stage.
    return finishStep(seqs, out, this.vocabRows);
  }

  async close() {}
}

interface Served {
  base: string;
  app: FastifyInstance;
  scheduler: Scheduler;
  executor: WordExecutor;
  events: SchedulerEvent[];
  healthy: { value: boolean };
  tokenizer: LlamaTokenizer;
}

let dir: string;
let plainDir: string;
const servers: Served[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'medcluster-http-'));
  await writeTokenizerFiles(dir);
  // The same tokenizer without a chat template: chat requests get the plain-text default.
  plainDir = await mkdtemp(join(tmpdir(), 'medcluster-http-plain-'));
  await writeTokenizerFiles(plainDir);
  const configPath = join(plainDir, 'tokenizer_config.json');
  const config = JSON.parse(await readFile(configPath, 'utf8'));
  delete config.chat_template;
  await writeFile(configPath, JSON.stringify(config));
});
afterEach(async () => {
  for (const s of servers.splice(0)) {
    await until(() => s.scheduler.stats.running === 0 && s.scheduler.stats.waiting === 0);
    expect(s.scheduler.stats.freeBlocks).toBe(s.scheduler.stats.totalBlocks);
    await s.app.close();
  }
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  await rm(plainDir, { recursive: true, force: true });
});

async function until(check: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function serve(
  options: {
    limits?: Partial<SchedulerLimits>;
    vocabRows?: number;
    numBlocks?: number;
    plain?: boolean;
    bodyLimit?: number;
  } = {},
): Promise<Served> {
  const tokenizer = await loadTokenizer(options.plain ? plainDir : dir);
  const vocabRows = options.vocabRows ?? 32019;
  const words = WORDS.map((w) => tokenizer.encode(w, { addBos: false })[0]);
  const executor = new WordExecutor(vocabRows, words);
  const numBlocks = options.numBlocks ?? 64;
  const scheduler = new Scheduler(executor, new BlockAllocator(numBlocks, 16), {
    maxBatchTokens: 64,
    maxRunning: 8,
    maxWaiting: 16,
    maxContext: 512,
    eosTokenId: tokenizer.eosTokenId,
    ...options.limits,
  });
  const events: SchedulerEvent[] = [];
  scheduler.observe((e) => events.push(e));
  const healthy = { value: true };
  const cluster: ClusterHandle = {
    executor,
    kvGeometry: { numBlocks, blockSize: 16 },
    tp: 1,
    pp: 1,
    workers: () => [],
    healthy: () => healthy.value,
    events: new EventEmitter(),
    stop: async () => {},
  };
  const app = createHttpServer(
    {
      modelName: 'meditron-70b-awq',
      config: { vocabRows, maxPositions: 512 } as LlamaConfig,
      generator: new TextGenerator(tokenizer, scheduler, { maxTokens: 16 }),
      cluster,
      healthy: () => healthy.value,
    },
    scheduler,
    { bodyLimit: options.bodyLimit ?? 64 << 10, corsOrigins: '*' },
  );
  const port = await listenHttp(app, '127.0.0.1', 0);
  const served = { base: `http://127.0.0.1:${port}`, app, scheduler, executor, events, healthy, tokenizer };
  servers.push(served);
  return served;
}

const post = (s: Served, path: string, body: unknown, init: RequestInit = {}) =>
  fetch(`${s.base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    ...init,
  });

/** Every line of an SSE body: `data: ...` lines and the blank lines between them, nothing else. */
async function sse(res: Response): Promise<unknown[]> {
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
  const text = await res.text();
  const lines = text.split('\n');
  for (const line of lines) expect(line === '' || line.startsWith('data: '), line).toBe(true);
  return lines.filter((l) => l !== '').map((l) => (l === 'data: [DONE]' ? '[DONE]' : JSON.parse(l.slice(6))));
}

describe('OpenAI routes', () => {
  test('completions: the stream carries exactly the unary text, then usage and [DONE]', async () => {
    const s = await serve();
    const body = { model: 'anything', prompt: 'The patient', max_tokens: 6, temperature: 0 };
    const unary = await (await post(s, '/v1/completions', body)).json();
    expect(unary).toMatchObject({ object: 'text_completion', model: 'meditron-70b-awq' });
    expect(unary.choices[0].text).toBe(' presented with pain and a dry');
    expect(unary.choices[0].finish_reason).toBe('length');
    expect(unary.usage).toEqual({ prompt_tokens: 3, completion_tokens: 6, total_tokens: 9 });
    const events = await sse(
      await post(s, '/v1/completions', { ...body, stream: true, stream_options: { include_usage: true } }),
    );
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1) as { choices: { text: string }[]; usage: unknown }[];
    expect(chunks.at(-1)?.usage).toEqual(unary.usage);
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
    expect(chunks.flatMap((c) => c.choices.map((x) => x.text)).join('')).toBe(unary.choices[0].text);
  });

  test('chat: the template renders the messages; n choices stream with their roles and finish reasons', async () => {
    const s = await serve();
    const messages = [{ role: 'user', content: 'Hi' }];
    const r = await (
      await post(s, '/v1/chat/completions', { messages, max_tokens: 3, temperature: 0 })
    ).json();
    const chatml = s.tokenizer.encode('<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    expect(s.executor.steps[0][0].tokens).toEqual(chatml);
    expect(r.choices[0].message).toEqual({ role: 'assistant', content: expect.any(String) });
    const events = await sse(
      await post(s, '/v1/chat/completions', { messages, max_tokens: 3, n: 2, seed: 5, stream: true }),
    );
    const chunks = events.slice(0, -1) as {
      choices: { index: number; delta: object; finish_reason: string }[];
    }[];
    const choices = chunks.flatMap((c) => c.choices);
    for (const index of [0, 1]) {
      const mine = choices.filter((c) => c.index === index);
      expect(mine[0].delta).toEqual({ role: 'assistant', content: '' });
      expect(mine.at(-1)?.finish_reason).toBe('length');
    }
  });

  test('logprobs: completions top-N dictionaries and offsets; chat logprobs with top_logprobs', async () => {
    const s = await serve();
    const c = await (
      await post(s, '/v1/completions', { prompt: 'The patient', max_tokens: 3, temperature: 0, logprobs: 2 })
    ).json();
    const lp = c.choices[0].logprobs;
    expect(lp.tokens).toEqual([' presented', ' with', ' pain']);
    expect(lp.text_offset).toEqual([0, 10, 15]);
    expect(lp.top_logprobs).toHaveLength(3);
    expect(Object.keys(lp.top_logprobs[0])).toEqual([' presented', ' and']);
    expect(lp.token_logprobs[0]).toBeCloseTo(lp.top_logprobs[0][' presented'], 6);
    const chat = await (
      await post(s, '/v1/chat/completions', {
        messages: [{ role: 'user', content: 'Hi' }],
        max_tokens: 2,
        logprobs: true,
        top_logprobs: 3,
      })
    ).json();
    const content = chat.choices[0].logprobs.content;
    expect(content).toHaveLength(2);
    expect(content[0]).toMatchObject({ token: expect.any(String), bytes: expect.any(Array) });
    expect(content[0].top_logprobs).toHaveLength(3);
    // echo with logprobs 0 scores the prompt: the first token has no logprob.
    const echo = await (
      await post(s, '/v1/completions', { prompt: 'The patient', max_tokens: 1, echo: true, logprobs: 0 })
    ).json();
    expect(echo.choices[0].text.startsWith('The patient')).toBe(true);
    expect(echo.choices[0].logprobs.tokens.slice(0, 3)).toEqual(['<s>', ' The', ' patient']);
    expect(echo.choices[0].logprobs.token_logprobs[0]).toBeNull();
    expect(echo.choices[0].logprobs.token_logprobs[2]).toBeLessThan(0);
  });

  test('a model with no chat template gets the plain-text default', async () => {
    const s = await serve({ plain: true });
    await post(s, '/v1/chat/completions', {
      messages: [
        { role: 'system', content: 'You are a careful clinician.' },
        { role: 'user', content: 'Hi' },
      ],
      max_tokens: 1,
    });
    expect(s.tokenizer.decode(s.executor.steps[0][0].tokens ?? [], { skipSpecial: true })).toBe(
      'You are a careful clinician.\n\nUser: Hi\nAssistant:',
    );
  });

  test("a chat template whose special tokens are past the model's embedding rows is a clear 400", async () => {
    const s = await serve({ vocabRows: 32017 });
    const res = await post(s, '/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }] });
    expect(res.status).toBe(400);
    const { error } = await res.json();
    expect(error.param).toBe('messages');
    expect(error.message).toMatch(
      /the chat template writes the special token "<\|im_start\|>" \(id 32017\), outside the model's 32017 embedding rows.*--chat-template FILE/,
    );
    const ok = await post(s, '/v1/completions', { prompt: 'Plain text works', max_tokens: 2 });
    expect(ok.status).toBe(200);
  });
});

describe('invalid requests', () => {
  const openai: [string, unknown, string, RegExp][] = [
    ['/v1/completions', '{"prompt": "x",', '', /not valid JSON/],
    ['/v1/completions', [1, 2], '', /must be a JSON object/],
    ['/v1/completions', {}, 'prompt', /prompt is required/],
    ['/v1/completions', { prompt: 42 }, 'prompt', /prompt must be a string/],
    ['/v1/completions', { prompt: '' }, 'prompt', /prompt.*empty/],
    [
      '/v1/completions',
      { prompt: [1, 40000] },
      'prompt',
      /token id 40000, outside the model's 32019 embedding rows/,
    ],
    ['/v1/completions', { prompt: 'x', max_tokens: 0 }, 'max_tokens', /max_tokens must be an integer >= 1/],
    ['/v1/completions', { prompt: 'x', max_tokens: 600 }, 'max_tokens', /exceeds the context of 512/],
    ['/v1/completions', { prompt: 'word '.repeat(600) }, 'prompt', /exceeds the context of 512/],
    [
      '/v1/completions',
      { prompt: 'x', temperature: 'hot' },
      'temperature',
      /temperature must be a number in \[0, 2\], got "hot"/,
    ],
    ['/v1/completions', { prompt: 'x', top_p: 0 }, 'top_p', /top_p must be a number in \(0, 1\]/],
    ['/v1/completions', { prompt: 'x', n: 17 }, 'n', /n must be an integer in \[1, 16\]/],
    ['/v1/completions', { prompt: 'x', seed: -1 }, 'seed', /seed must be an integer >= 0/],
    ['/v1/completions', { prompt: 'x', stop: [''] }, 'stop[0]', /stop\[0\] must be a string of 1 to 256/],
    [
      '/v1/completions',
      { prompt: 'x', logprobs: 21 },
      'logprobs',
      /logprobs must be an integer in \[0, 20\]/,
    ],
    ['/v1/completions', { prompt: 'x', presence_penalty: 3 }, 'presence_penalty', /presence_penalty/],
    [
      '/v1/completions',
      { prompt: 'x', stream_options: { include_usage: true } },
      'stream_options',
      /only allowed with "stream": true/,
    ],
    ['/v1/completions', { prompt: 'x', ignore_eos: 'yes' }, 'ignore_eos', /ignore_eos must be true or false/],
    ['/v1/completions', { prompt: 'x', logit_bias: { '50': 5 } }, 'logit_bias', /not supported/],
    ['/v1/chat/completions', { messages: 'hi' }, 'messages', /messages must be a list/],
    ['/v1/chat/completions', { messages: [] }, 'messages', /at least one message/],
    [
      '/v1/chat/completions',
      { messages: [{ role: 'wizard', content: 'x' }] },
      'messages[0].role',
      /messages\[0\]\.role must be one of/,
    ],
    [
      '/v1/chat/completions',
      { messages: [{ role: 'user', content: [{ type: 'image_url' }] }] },
      'messages[0].content[0].type',
      /text only/,
    ],
    [
      '/v1/chat/completions',
      { messages: [{ role: 'user', content: 'x' }], max_completion_tokens: -1 },
      'max_completion_tokens',
      /max_completion_tokens must be an integer >= 1/,
    ],
    [
      '/v1/chat/completions',
      { messages: [{ role: 'user', content: 'x' }], top_logprobs: 2 },
      'top_logprobs',
      /needs "logprobs": true/,
    ],
    [
      '/v1/chat/completions',
      { messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function' }] },
      'tools',
      /no tool calls/,
    ],
  ];

  test.each(openai)('OpenAI %s %j -> 400 naming %s', async (path, body, param, message) => {
    const s = await serve();
    const res = await post(s, path, body);
    expect(res.status).toBe(400);
    const json = await res.json();
    expect(Object.keys(json)).toEqual(['error']);
    expect(Object.keys(json.error).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(json.error.type).toBe('invalid_request_error');
    expect(json.error.param).toBe(param === '' ? null : param);
    expect(json.error.message).toMatch(message);
    // The server keeps serving and holds nothing.
    const ok = await post(
      s,
      path,
      path.includes('chat')
        ? { messages: [{ role: 'user', content: 'x' }], max_tokens: 1 }
        : { prompt: 'x', max_tokens: 1 },
    );
    expect(ok.status).toBe(200);
  });

  const tgi: [string, unknown, RegExp][] = [
    ['/generate', '{"inputs": ', /not valid JSON/],
    ['/generate', { parameters: {} }, /^inputs is required/],
    ['/generate', { inputs: '' }, /^inputs must not be empty/],
    [
      '/generate',
      { inputs: 'x', parameters: { temperature: 0 } },
      /^parameters\.temperature must be a number > 0/,
    ],
    ['/generate', { inputs: 'x', parameters: { top_k: 0 } }, /^parameters\.top_k must be an integer >= 1/],
    [
      '/generate',
      { inputs: 'x', parameters: { top_p: 1 } },
      /^parameters\.top_p must be a number in \(0, 1\)/,
    ],
    [
      '/generate',
      { inputs: 'x', parameters: { max_new_tokens: 0 } },
      /^parameters\.max_new_tokens must be an integer >= 1/,
    ],
    [
      '/generate',
      { inputs: 'x', parameters: { max_new_tokens: 1000 } },
      /^parameters\.max_new_tokens 1000 plus the prompt's 2 tokens exceeds the context of 512/,
    ],
    ['/generate', { inputs: 'x', parameters: { stop: 'x'.repeat(300) } }, /^parameters\.stop\[0\]/],
    ['/generate', { inputs: 'x', parameters: { repetition_penalty: -1 } }, /^parameters\.repetition_penalty/],
    ['/generate', { inputs: 'x', parameters: { best_of: 2 } }, /^parameters\.best_of is not supported/],
    ['/generate', { inputs: 'x', parameters: { typical_p: 0.5 } }, /^parameters\.typical_p is not supported/],
    [
      '/generate',
      { inputs: 'x', parameters: { do_sample: 1 } },
      /^parameters\.do_sample must be true or false/,
    ],
    [
      '/generate_stream',
      { inputs: 'x', parameters: { decoder_input_details: true } },
      /decoder_input_details is not supported when streaming/,
    ],
    ['/', { inputs: 'x', stream: 'yes' }, /^stream must be true or false/],
  ];

  test.each(tgi)('TGI %s %j -> 422', async (path, body, message) => {
    const s = await serve();
    const res = await post(s, path, body);
    expect(res.status).toBe(422);
    const json = await res.json();
    expect(Object.keys(json).sort()).toEqual(['error', 'error_type']);
    expect(json.error_type).toBe('validation');
    expect(json.error).toMatch(message);
    const ok = await post(s, path, { inputs: 'x', parameters: { max_new_tokens: 1 } });
    expect(ok.status).toBe(200);
  });

  test('a body over the limit is 413 in either convention; an unknown route 404', async () => {
    const s = await serve({ bodyLimit: 2048 });
    const big = { prompt: 'x'.repeat(4096) };
    const a = await post(s, '/v1/completions', big);
    expect(a.status).toBe(413);
    expect((await a.json()).error).toMatchObject({
      code: 'request_too_large',
      message: expect.stringMatching(/2048 bytes/),
    });
    const b = await post(s, '/generate', { inputs: 'x'.repeat(4096) });
    expect(b.status).toBe(413);
    expect(await b.json()).toMatchObject({
      error: expect.stringMatching(/larger than/),
      error_type: 'validation',
    });
    expect((await fetch(`${s.base}/v1/embeddings`)).status).toBe(404);
  });

  test('a chunked body is refused with 413 when the bytes read pass the limit; the server goes on serving', async () => {
    const s = await serve({ bodyLimit: 64 << 10 });
    const chunks = 64;
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let k = 0; k < chunks; k++) controller.enqueue(new TextEncoder().encode('x'.repeat(64 << 10)));
        controller.close();
      },
    });
    const chunked = await fetch(`${s.base}/v1/completions`, {
      method: 'POST',
      body: stream,
      duplex: 'half',
    } as RequestInit);
    expect(chunked.status).toBe(413);
    expect((await chunked.json()).error.code).toBe('request_too_large');
    expect((await post(s, '/generate', { inputs: 'x', parameters: { max_new_tokens: 1 } })).status).toBe(200);
  });

  test('unknown fields are ignored; a body sent without a JSON content type is still read', async () => {
    const s = await serve();
    const res = await fetch(`${s.base}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({ prompt: 'x', max_tokens: 1, frequency_boost: 9, metadata: { a: 1 } }),
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expect(res.status).toBe(200);
  });
});

describe('TGI routes', () => {
  test('generate with details and decoder_input_details; the stream carries the same tokens', async () => {
    const s = await serve();
    const parameters = { max_new_tokens: 3, details: true, decoder_input_details: true, top_n_tokens: 2 };
    const res = await post(s, '/generate', { inputs: 'The patient', parameters });
    const r = await res.json();
    expect(r.generated_text).toBe(' presented with pain');
    expect(r.details).toMatchObject({ finish_reason: 'length', generated_tokens: 3, seed: null });
    expect(r.details.prefill.map((t: { text: string }) => t.text)).toEqual(['<s>', ' The', ' patient']);
    expect(r.details.prefill[0].logprob).toBeNull();
    expect(r.details.prefill[1].logprob).toBeLessThan(0);
    expect(r.details.tokens.map((t: { text: string }) => t.text).join('')).toBe(r.generated_text);
    expect(r.details.top_tokens[0]).toHaveLength(2);
    expect(res.headers.get('x-generated-tokens')).toBe('3');

    const events = (await sse(
      await post(s, '/generate_stream', {
        inputs: 'The patient',
        parameters: { max_new_tokens: 3, details: true },
      }),
    )) as { token: { id: number; text: string }; generated_text: string | null; details: unknown }[];
    expect(events).toHaveLength(3);
    expect(events.map((e) => e.token.id)).toEqual(r.details.tokens.map((t: { id: number }) => t.id));
    expect(events.slice(0, 2).every((e) => e.generated_text === null && e.details === null)).toBe(true);
    expect(events[2]).toMatchObject({
      generated_text: r.generated_text,
      details: { finish_reason: 'length', generated_tokens: 3, input_length: 3 },
    });
    // POST / answers a list unless it streams; return_full_text prepends the inputs.
    const compat = await (
      await post(s, '/', { inputs: 'The patient', parameters: { max_new_tokens: 3, return_full_text: true } })
    ).json();
    expect(compat).toEqual([{ generated_text: `The patient${r.generated_text}` }]);
    const info = await (await fetch(`${s.base}/info`)).json();
    expect(info).toMatchObject({
      model_id: 'meditron-70b-awq',
      max_total_tokens: 512,
      max_input_tokens: 511,
    });
  });

  test('do_sample draws with a seed it reports; the same seed gives the same text', async () => {
    const s = await serve();
    const body = {
      inputs: 'The patient',
      parameters: { max_new_tokens: 4, do_sample: true, seed: 11, details: true },
    };
    const a = await (await post(s, '/generate', body)).json();
    const b = await (await post(s, '/generate', body)).json();
    expect(a.details.seed).toBe(11);
    expect(b.generated_text).toBe(a.generated_text);
  });
});

describe('serving state', () => {
  test('503 while not healthy, in each convention; /health follows', async () => {
    const s = await serve();
    expect((await fetch(`${s.base}/health`)).status).toBe(200);
    s.healthy.value = false;
    const a = await post(s, '/v1/completions', { prompt: 'x' });
    expect(a.status).toBe(503);
    expect((await a.json()).error.type).toBe('server_error');
    const b = await post(s, '/generate', { inputs: 'x' });
    expect(b.status).toBe(503);
    expect((await fetch(`${s.base}/health`)).status).toBe(503);
    s.healthy.value = true;
  });

  test('CORS: a preflight from another origin is allowed, and responses (streams too) carry the header', async () => {
    const s = await serve();
    const pre = await fetch(`${s.base}/v1/chat/completions`, {
      method: 'OPTIONS',
      headers: {
        origin: 'http://page.test',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type, authorization',
      },
    });
    expect(pre.status).toBe(204);
    expect(pre.headers.get('access-control-allow-origin')).toBe('*');
    expect(pre.headers.get('access-control-allow-methods')).toMatch(/POST/);
    expect(pre.headers.get('access-control-allow-headers')).toMatch(/authorization/);
    const res = await post(
      s,
      '/v1/chat/completions',
      { messages: [{ role: 'user', content: 'x' }], max_tokens: 2, stream: true },
      {
        headers: { 'content-type': 'application/json', origin: 'http://page.test' },
      },
    );
    expect(res.headers.get('access-control-allow-origin')).toBe('*');
    await res.text();
  });

  test('a full waiting queue is 429 in each convention while admitted requests finish', async () => {
    const s = await serve({ limits: { maxRunning: 1, maxWaiting: 1 } });
    const hold = s.executor.hold();
    const running = post(s, '/v1/completions', { prompt: 'a', max_tokens: 2 });
    await hold.started;
    const queued = post(s, '/v1/completions', { prompt: 'b', max_tokens: 2 });
    await until(() => s.scheduler.stats.waiting === 1);
    const refused = await post(s, '/v1/completions', { prompt: 'c', max_tokens: 2, stream: true });
    expect(refused.status).toBe(429);
    expect((await refused.json()).error).toMatchObject({ type: 'rate_limit_error', code: 'queue_full' });
    const tgi = await post(s, '/generate_stream', { inputs: 'c' });
    expect(tgi.status).toBe(429);
    expect((await tgi.json()).error_type).toBe('overloaded');
    hold.release();
    expect((await running).status).toBe(200);
    expect((await queued).status).toBe(200);
  });

  test('a stream whose client disconnects is cancelled queued, mid-prefill and decoding; nothing is held after', async () => {
    const s = await serve({ limits: { maxRunning: 1, maxBatchTokens: 16 } });
    const cancelled = () =>
      s.events.filter((e) => e.type === 'cancelled').map((e) => (e as { stage: string }).stage);
    const body = (prompt: string) => ({ prompt, max_tokens: 50, stream: true });

    // Mid-prefill: the first chunk of a 40-token prompt is held, and the client leaves.
    const prefill = new AbortController();
    let hold = s.executor.hold();
    const long = post(s, '/v1/completions', body('word '.repeat(40)), { signal: prefill.signal }).catch(
      () => undefined,
    );
    await hold.started;
    // Queued: another request waits behind it (max_running 1), and its client leaves too.
    const queued = new AbortController();
    const waiting = post(s, '/v1/completions', body('queued'), { signal: queued.signal }).catch(
      () => undefined,
    );
    await until(() => s.scheduler.stats.waiting === 1);
    queued.abort();
    await until(() => cancelled().length === 1);
    prefill.abort();
    await until(() => cancelled().length === 2);
    hold.release();
    await Promise.all([long, waiting]);

    // Decoding: the client reads its first token, then leaves.
    const decode = new AbortController();
    const res = await post(
      s,
      '/v1/chat/completions',
      { messages: [{ role: 'user', content: 'x' }], max_tokens: 200, stream: true },
      { signal: decode.signal },
    );
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let seen = '';
    while (!seen.includes('"content":" ')) {
      const { done, value } = await reader.read();
      if (done) throw new Error(`the stream ended before its first token: ${seen}`);
      seen += new TextDecoder().decode(value);
    }
    hold = s.executor.hold();
    await hold.started;
    decode.abort();
    await until(() => cancelled().length === 3);
    hold.release();

    expect(cancelled()).toEqual(['queued', 'prefill', 'decode']);
    await until(() => s.scheduler.stats.running === 0);
    const cluster = await (await fetch(`${s.base}/cluster`)).json();
    expect(cluster.kv_cache).toEqual({ block_size: 16, blocks_total: 64, blocks_used: 0, blocks_free: 64 });
    expect(cluster.totals.requests_cancelled).toEqual({ queued: 1, prefill: 1, decode: 1 });
    expect(cluster).toMatchObject({ sequences_running: 0, sequences_waiting: 0, requests_in_flight: 0 });
  });
});
