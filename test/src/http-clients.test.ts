// `medcluster up` on the generated model, queried over HTTP by real clients as their users run
// them: the official `openai` npm client (chat and completions, streaming and not, n, logprobs),
// `@huggingface/inference`'s text generation (streaming and not), and raw HTTP in TGI's request
// and event formats. Each client gets a fetch that records every URL it asks for: none may
// leave this machine.

import { InferenceClient } from '@huggingface/inference';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startUp, stopAll } from './harness/index.js';
import { testModel } from './models.js';

let base: string;
const urls: string[] = [];
/** fetch, recording where it goes. */
const recording: typeof fetch = (input, init) => {
  urls.push(input instanceof Request ? input.url : String(input));
  return fetch(input, init);
};

beforeAll(async () => {
  const modelDir = await testModel();
  ({ http: base } = await startUp(['--model', modelDir]));
});
afterAll(async () => {
  await stopAll();
  expect(urls.length).toBeGreaterThan(0);
  for (const url of urls) expect(new URL(url).hostname).toBe('127.0.0.1');
});

// biome-ignore lint/suspicious/noExplicitAny: responses are checked field by field
type Json = any;

const json = async (path: string, body: unknown): Promise<Json> => {
  const res = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(res.status, await res.clone().text()).toBe(200);
  return res.json();
};

/** The `data:` events of a server-sent event stream, parsed. */
async function events(path: string, body: unknown): Promise<unknown[]> {
  const res = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
  const lines = (await res.text()).split('\n').filter((l) => l !== '');
  for (const l of lines) expect(l.startsWith('data: '), l).toBe(true);
  return lines.map((l) => (l === 'data: [DONE]' ? '[DONE]' : JSON.parse(l.slice(6))));
}

describe('the openai npm client', () => {
  const client = () =>
    new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', fetch: recording, maxRetries: 0 });
  const messages = [
    { role: 'system' as const, content: 'You are a careful clinician.' },
    { role: 'user' as const, content: 'What are the symptoms of anemia?' },
  ];

  test('lists the served model', async () => {
    const models = await client().models.list();
    expect(models.data.map((m) => m.id)).toEqual(['meditron-70b-awq']);
  });

  test('chat: the stream carries the unary greedy text; n = 3 seeded choices; logprobs', async () => {
    const openai = client();
    const unary = await openai.chat.completions.create({
      model: 'gpt-4o',
      messages,
      max_tokens: 16,
      temperature: 0,
    });
    expect(unary.model).toBe('meditron-70b-awq');
    expect(unary.usage?.completion_tokens).toBeGreaterThan(0);
    const text = unary.choices[0].message.content as string;
    expect(text.length).toBeGreaterThan(0);
    const stream = await openai.chat.completions.create({
      model: 'gpt-4o',
      messages,
      max_tokens: 16,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let streamed = '';
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.delta.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    expect(streamed).toBe(text);
    expect(usage).toEqual(unary.usage);

    const three = await openai.chat.completions.create({
      model: 'x',
      messages,
      max_tokens: 8,
      n: 3,
      temperature: 1,
      seed: 42,
      logprobs: true,
      top_logprobs: 2,
    });
    expect(three.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(new Set(three.choices.map((c) => c.message.content)).size).toBeGreaterThan(1);
    const lp = three.choices[0].logprobs?.content ?? [];
    const perChoice = three.choices.map((c) => c.logprobs?.content?.length ?? 0);
    expect(perChoice.reduce((a, b) => a + b, 0)).toBe(three.usage?.completion_tokens);
    expect(lp[0].top_logprobs).toHaveLength(2);
    expect(lp[0].logprob).toBeLessThanOrEqual(0);
    const again = await openai.chat.completions.create({
      model: 'x',
      messages,
      max_tokens: 8,
      n: 3,
      temperature: 1,
      seed: 42,
    });
    expect(again.choices.map((c) => c.message.content)).toEqual(three.choices.map((c) => c.message.content));
  });

  test('completions: stream and unary agree, with n = 2 streamed and logprobs', async () => {
    const openai = client();
    const prompt = 'The patient presented with';
    const unary = await openai.completions.create({
      model: 'davinci-002',
      prompt,
      max_tokens: 12,
      temperature: 0,
      logprobs: 3,
    });
    const choice = unary.choices[0];
    expect(choice.logprobs?.tokens?.length).toBe(unary.usage?.completion_tokens);
    expect(choice.logprobs?.top_logprobs?.[0] && Object.keys(choice.logprobs.top_logprobs[0]).length).toBe(3);
    const stream = await openai.completions.create({
      model: 'x',
      prompt,
      max_tokens: 12,
      temperature: 0,
      n: 2,
      stream: true,
    });
    const texts = ['', ''];
    const finishes: string[] = [];
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        texts[c.index] += c.text;
        if (c.finish_reason) finishes.push(c.finish_reason);
      }
    }
    expect(texts).toEqual([choice.text, choice.text]);
    expect(finishes).toHaveLength(2);
  });

  test('an invalid request is the client’s BadRequestError naming the field', async () => {
    const err = await client()
      .completions.create({ model: 'x', prompt: 'x', temperature: 5 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('temperature');
  });
});

describe('@huggingface/inference', () => {
  // Version 4 sends text generation for an endpoint to its OpenAI route (/v1/completions) and
  // yields that route's stream chunks as they come.
  const hf = () => new InferenceClient(undefined, { endpointUrl: base, fetch: recording });

  test('textGeneration and textGenerationStream give the greedy text the OpenAI route gives', async () => {
    const inputs = 'Treatment of community-acquired pneumonia';
    const parameters = { max_new_tokens: 12, temperature: 0 };
    const out = await hf().textGeneration({ inputs, parameters });
    const reference = await json('/v1/completions', { prompt: inputs, max_tokens: 12, temperature: 0 });
    expect(out.generated_text).toBe(reference.choices[0].text);
    let streamed = '';
    for await (const chunk of hf().textGenerationStream({ inputs, parameters })) {
      streamed += (chunk as unknown as { choices: { text: string }[] }).choices[0]?.text ?? '';
    }
    expect(streamed).toBe(out.generated_text);
  });

  test('chatCompletion', async () => {
    const out = await hf().chatCompletion({
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 6,
      temperature: 0,
    });
    expect(out.choices[0].message.content?.length).toBeGreaterThan(0);
  });
});

describe("TGI's routes over raw HTTP", () => {
  const inputs = 'The differential diagnosis includes';

  test('/generate, /generate_stream and / agree with each other and with the OpenAI route', async () => {
    const parameters = { max_new_tokens: 10, details: true, decoder_input_details: true, top_n_tokens: 2 };
    const unary = await json('/generate', { inputs, parameters });
    const { details } = unary;
    expect(details.finish_reason).toMatch(/^(length|eos_token)$/);
    expect(details.tokens).toHaveLength(details.generated_tokens);
    expect(details.tokens.map((t: { text: string }) => t.text).join('')).toBe(unary.generated_text);
    expect(details.top_tokens[0]).toHaveLength(2);
    // Every prompt token after the first carries the logprob the model gave it.
    expect(details.prefill[0].logprob).toBeNull();
    expect(details.prefill.length).toBeGreaterThan(3);
    for (const t of details.prefill.slice(1)) expect(t.logprob).toBeLessThan(0);

    const openai = await json('/v1/completions', { prompt: inputs, max_tokens: 10, temperature: 0 });
    expect(unary.generated_text).toBe(openai.choices[0].text);

    const stream = (await events('/generate_stream', {
      inputs,
      parameters: { max_new_tokens: 10, details: true },
    })) as {
      token: { id: number; text: string; logprob: number; special: boolean };
      generated_text: string | null;
      details: { finish_reason: string; generated_tokens: number; input_length: number } | null;
    }[];
    expect(stream.map((e) => e.token.id)).toEqual(details.tokens.map((t: { id: number }) => t.id));
    for (const e of stream) expect(e.token.logprob).toBeLessThanOrEqual(0);
    expect(stream.slice(0, -1).every((e) => e.generated_text === null && e.details === null)).toBe(true);
    const last = stream.at(-1);
    expect(last?.generated_text).toBe(unary.generated_text);
    expect(last?.details).toMatchObject({
      finish_reason: details.finish_reason,
      generated_tokens: details.generated_tokens,
    });
    expect(last?.details?.input_length).toBe(details.prefill.length);

    const compat = await json('/', { inputs, parameters: { max_new_tokens: 10 } });
    expect(compat).toEqual([{ generated_text: unary.generated_text }]);
    const compatStream = (await events('/', {
      inputs,
      stream: true,
      parameters: { max_new_tokens: 10 },
    })) as {
      generated_text: string | null;
    }[];
    expect(compatStream.at(-1)?.generated_text).toBe(unary.generated_text);
  });

  test('/info, /health, /cluster and /metrics describe the server', async () => {
    const info: Json = await (await fetch(`${base}/info`)).json();
    expect(info).toMatchObject({
      model_id: 'meditron-70b-awq',
      max_total_tokens: 4096,
      model_device_type: 'cpu',
    });
    expect((await fetch(`${base}/health`)).status).toBe(200);
    const cluster: Json = await (await fetch(`${base}/cluster`)).json();
    expect(cluster).toMatchObject({ healthy: true, layout: { tp: 1, pp: 1 }, chat_template: 'tokenizer' });
    expect(cluster.layout.workers).toHaveLength(1);
    expect(cluster.layout.workers[0].metrics_url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    expect(cluster.kv_cache.blocks_used).toBe(0);
    // The coordinator's own Prometheus metrics, on the same port.
    const metrics = await fetch(`${base}/metrics`);
    expect(metrics.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(await metrics.text()).toMatch(/^medcluster_requests_total\{[^}]*\} [1-9]/m);
  });
});
