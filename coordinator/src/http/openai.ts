// OpenAI-compatible routes under /v1: chat completions, completions, models. Unary answers
// and streams are built from the same token events, so a stream's text is the unary text.
// A stream is `data: <chunk>` per generated token (its text may be '' while the detokenizer or
// a stop string holds text back), a final chunk per choice with its finish_reason, the usage
// chunk when stream_options.include_usage is set, then `data: [DONE]`.

import { randomUUID } from 'node:crypto';
import type { SampledToken, TokenLogprob } from '@medcluster/worker';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { TextEvent, TextResult } from '../generation/text-generation.js';
import type { FinishReason } from '../scheduler/scheduler.js';
import { errorReply, HttpError } from './errors.js';
import { Fields } from './fields.js';
import { checkContext, type HttpContext, requireReady } from './http-context.js';
import { MAX_LOGPROBS, type OpenAiCommon, readCommon } from './openai-params.js';
import { abortOnDisconnect, EventStream, type Run } from './runs.js';

/** The most prompts one completions request may batch. */
export const MAX_PROMPTS = 16;

const FINISH: Record<FinishReason, string> = {
  length: 'length',
  eos: 'stop',
  stop: 'stop',
  cancelled: 'abort',
};

const now = () => Math.floor(Date.now() / 1000);
const newId = (prefix: string) => `${prefix}-${randomUUID().replaceAll('-', '')}`;

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

function usageOf(results: readonly TextResult[]): Usage {
  const prompt = results.reduce((s, r) => s + r.promptTokens, 0);
  const completion = results.reduce((s, r) => s + r.completionTokens, 0);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** vLLM's extra: what ended a choice that stopped (the stop string or the stop token id). */
function stopReason(c: { stopSequence?: string; stopTokenId?: number }): string | number | null {
  return c.stopSequence ?? c.stopTokenId ?? null;
}

/** Completions' logprobs: parallel lists, extended token by token. */
class CompletionLogprobs {
  tokens: string[] = [];
  token_logprobs: (number | null)[] = [];
  top_logprobs: (Record<string, number> | null)[] = [];
  text_offset: number[] = [];

  constructor(
    private readonly ctx: HttpContext,
    private offset = 0,
  ) {}

  add(id: number, logprob: number | null, top: readonly TokenLogprob[] | null): this {
    const shown = this.ctx.texts.of(id);
    this.tokens.push(shown.text);
    this.token_logprobs.push(logprob);
    this.top_logprobs.push(
      top === null ? null : Object.fromEntries(top.map((t) => [this.ctx.texts.of(t.id).text, t.logprob])),
    );
    this.text_offset.push(this.offset);
    if (!shown.special) this.offset += shown.text.length;
    return this;
  }

  addSampled(t: SampledToken): this {
    return this.add(t.id, t.logprob ?? null, t.topLogprobs ?? []);
  }

  /** Echoed prompt tokens: the first has no logprob (nothing predicts it), the others theirs. */
  addPrompt(ids: readonly number[], scored: readonly TokenLogprob[]): this {
    ids.forEach((id, i) => {
      this.add(id, i === 0 ? null : (scored[i - 1]?.logprob ?? null), i === 0 ? null : []);
    });
    return this;
  }

  get end(): number {
    return this.offset;
  }

  toJSON() {
    const { tokens, token_logprobs, top_logprobs, text_offset } = this;
    return { tokens, token_logprobs, top_logprobs, text_offset };
  }
}

/** Chat logprobs: one entry per token with its alternatives. */
function chatLogprob(ctx: HttpContext, t: { id: number; logprob?: number; topLogprobs?: TokenLogprob[] }) {
  const shown = ctx.texts.of(t.id);
  return {
    token: shown.text,
    logprob: t.logprob as number,
    bytes: shown.bytes,
    top_logprobs: (t.topLogprobs ?? []).map((a) => {
      const s = ctx.texts.of(a.id);
      return { token: s.text, logprob: a.logprob, bytes: s.bytes };
    }),
  };
}

interface Prompt {
  ids: number[];
  /** What `echo` prints: the prompt text as sent, or the ids decoded. */
  text: string;
}

/** `prompt`: a string, a list of strings, a list of token ids, or a list of such lists. */
function readPrompts(ctx: HttpContext, f: Fields): Prompt[] {
  const raw = f.raw('prompt');
  if (raw === undefined) f.fail('prompt', 'is required: text, a list of texts, or token ids');
  const isIds = (v: unknown) => Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'number');
  let list: (string | number[])[];
  if (typeof raw === 'string') list = [raw];
  else if (isIds(raw)) list = [raw as number[]];
  else if (Array.isArray(raw) && raw.length > 0 && raw.every((p) => typeof p === 'string' || isIds(p)))
    list = raw as (string | number[])[];
  else
    f.fail(
      'prompt',
      'must be a string, a list of strings, a list of token ids, or a list of lists of token ids',
    );
  if (list.length > MAX_PROMPTS)
    f.fail('prompt', `may hold at most ${MAX_PROMPTS} prompts, got ${list.length}`);
  const single = typeof raw === 'string' || isIds(raw);
  return list.map((p, i) => {
    const ids = ctx.prompts.fromPrompt(p, single ? 'prompt' : `prompt[${i}]`);
    return { ids, text: typeof p === 'string' ? p : ctx.serving.generator.tokenizer.decode(p) };
  });
}

/** Waits until every run was admitted; if one is refused, cancels the others and throws why. */
async function admitAll(runs: readonly Run[], abort: AbortController): Promise<void> {
  try {
    await Promise.all(runs.map((r) => r.admitted));
  } catch (err) {
    abort.abort();
    await Promise.allSettled(runs.map((r) => r.done));
    throw err;
  }
}

/** Ends a stream whose generation failed after it started: an error event, then [DONE]. */
function streamFailure(ctx: HttpContext, stream: EventStream, err: unknown): void {
  stream.send(errorReply(err, 'openai', { bodyLimit: ctx.bodyLimit }).body);
  stream.done();
  stream.end();
}

export function openaiRoutes(ctx: HttpContext) {
  return async (app: FastifyInstance): Promise<void> => {
    const modelCard = () => ({
      id: ctx.serving.modelName,
      object: 'model',
      created: 0,
      owned_by: 'medcluster',
      max_model_len: ctx.scheduler.limits.maxContext,
    });

    app.get('/models', async () => ({ object: 'list', data: [modelCard()] }));

    app.get('/models/:model', async (req: FastifyRequest<{ Params: { model: string } }>) => {
      if (req.params.model !== ctx.serving.modelName)
        throw new HttpError(
          404,
          `the model ${JSON.stringify(req.params.model)} does not exist`,
          'model_not_found',
        );
      return modelCard();
    });

    app.post('/completions', async (req, reply) => completions(ctx, req, reply));
    app.post('/chat/completions', async (req, reply) => chatCompletions(ctx, req, reply));
  };
}

async function completions(ctx: HttpContext, req: FastifyRequest, reply: FastifyReply) {
  requireReady(ctx);
  const f = Fields.body(req.body);
  const prompts = readPrompts(ctx, f);
  const common = readCommon(f, ['max_tokens'], ctx.prompts.vocabRows);
  const logprobs = f.integer('logprobs', { min: 0, max: MAX_LOGPROBS });
  const echo = f.boolean('echo') ?? false;
  f.unsupported('suffix', (v) => v === '', 'Llama has no fill-in-the-middle');
  const bestOf = f.integer('best_of', { min: 1 });
  if (bestOf !== undefined && bestOf !== common.n)
    f.fail('best_of', `is not supported unless it equals n (${common.n}), got ${bestOf}`);
  if (echo && logprobs !== undefined && (logprobs > 0 || common.stream)) {
    f.fail(
      'logprobs',
      logprobs > 0
        ? 'with "echo": true must be 0: prompt tokens are scored, but their alternatives are not'
        : 'with "echo": true cannot be streamed: prompt tokens are scored only once the request ends',
    );
  }
  for (const p of prompts) {
    checkContext(ctx, p.ids.length, common.maxTokens, { prompt: 'prompt', maxTokens: 'max_tokens' });
  }
  const sampling = logprobs === undefined ? common.sampling : { ...common.sampling, logprobs };
  const id = newId('cmpl');
  const created = now();
  const model = ctx.serving.modelName;
  const abort = abortOnDisconnect(reply);
  const n = common.n;
  const request = (p: Prompt) => ({
    prompt: p.ids,
    maxTokens: common.maxTokens,
    n,
    sampling,
    stop: common.stop,
    ignoreEos: common.ignoreEos,
    promptLogprobs: echo && logprobs !== undefined,
  });

  if (!common.stream) {
    const runs = prompts.map((p) => ctx.runs.start(request(p), abort.signal));
    await admitAll(runs, abort);
    const results = await Promise.all(runs.map((r) => r.done));
    const choices = results.flatMap((r, pi) =>
      r.choices.map((c) => {
        const prompt = prompts[pi];
        let lp: CompletionLogprobs | null = null;
        if (logprobs !== undefined) {
          lp = new CompletionLogprobs(ctx);
          if (echo) lp.addPrompt(prompt.ids, r.promptLogprobs ?? []);
          for (const t of c.tokens) lp.addSampled(t);
        }
        return {
          index: pi * n + c.index,
          text: echo ? prompt.text + c.text : c.text,
          logprobs: lp,
          finish_reason: FINISH[c.finishReason],
          stop_reason: stopReason(c),
        };
      }),
    );
    return { id, object: 'text_completion', created, model, choices, usage: usageOf(results) };
  }

  const stream = new EventStream();
  const chunk = (choice: object) => ({
    id,
    object: 'text_completion',
    created,
    model,
    choices: [choice],
    ...(common.includeUsage ? { usage: null } : {}),
  });
  const offsets = new Map<number, CompletionLogprobs>();
  // Written before any token can be: the stream buffers them until it starts.
  if (echo) {
    prompts.forEach((p, pi) => {
      for (let c = 0; c < n; c++)
        stream.send(chunk({ index: pi * n + c, text: p.text, logprobs: null, finish_reason: null }));
    });
  }
  const runs = prompts.map((p, pi) =>
    ctx.runs.start(request(p), abort.signal, (e: TextEvent) => {
      const index = pi * n + e.choice;
      if (e.type === 'token') {
        let lp: CompletionLogprobs | null = null;
        if (logprobs !== undefined) {
          // Each chunk carries its own token; text_offset continues across chunks.
          const prev = offsets.get(index)?.end ?? (echo ? prompts[pi].text.length : 0);
          lp = new CompletionLogprobs(ctx, prev).add(e.id, e.logprob ?? null, e.topLogprobs ?? []);
          offsets.set(index, lp);
        }
        stream.send(chunk({ index, text: e.text, logprobs: lp, finish_reason: null }));
      } else {
        stream.send(
          chunk({
            index,
            text: e.text,
            logprobs: null,
            finish_reason: FINISH[e.finishReason],
            stop_reason: stopReason(e),
          }),
        );
      }
    }),
  );
  await admitAll(runs, abort);
  stream.start(reply);
  Promise.all(runs.map((r) => r.done)).then(
    (results) => {
      if (common.includeUsage)
        stream.send({ id, object: 'text_completion', created, model, choices: [], usage: usageOf(results) });
      stream.done();
      stream.end();
    },
    (err) => {
      abort.abort();
      streamFailure(ctx, stream, err);
    },
  );
  return reply;
}

/** Chat-only fields: OpenAI's logprobs switch with top_logprobs, and what this server does not do. */
function readChatFields(f: Fields): { logprobs?: number; addGenerationPrompt: boolean } {
  const wantLogprobs = f.boolean('logprobs') ?? false;
  const top = f.integer('top_logprobs', { min: 0, max: MAX_LOGPROBS });
  if (top !== undefined && !wantLogprobs) f.fail('top_logprobs', 'needs "logprobs": true');
  f.unsupported('tools', (v) => Array.isArray(v) && v.length === 0, 'this server makes no tool calls');
  f.unsupported(
    'response_format',
    (v) => typeof v === 'object' && (v as { type?: unknown }).type === 'text',
    'only {"type": "text"}',
  );
  const addGenerationPrompt = f.boolean('add_generation_prompt') ?? true;
  return { ...(wantLogprobs ? { logprobs: top ?? 0 } : {}), addGenerationPrompt };
}

async function chatCompletions(ctx: HttpContext, req: FastifyRequest, reply: FastifyReply) {
  requireReady(ctx);
  const f = Fields.body(req.body);
  const chat = readChatFields(f);
  const common: OpenAiCommon = readCommon(f, ['max_completion_tokens', 'max_tokens'], ctx.prompts.vocabRows);
  const { ids } = ctx.prompts.fromMessages(f, chat.addGenerationPrompt);
  checkContext(ctx, ids.length, common.maxTokens, { prompt: 'messages', maxTokens: common.maxTokensField });
  const sampling =
    chat.logprobs === undefined ? common.sampling : { ...common.sampling, logprobs: chat.logprobs };
  const id = newId('chatcmpl');
  const created = now();
  const model = ctx.serving.modelName;
  const abort = abortOnDisconnect(reply);
  const request = {
    prompt: ids,
    maxTokens: common.maxTokens,
    n: common.n,
    sampling,
    stop: common.stop,
    ignoreEos: common.ignoreEos,
  };

  if (!common.stream) {
    const run = ctx.runs.start(request, abort.signal);
    await admitAll([run], abort);
    const r = await run.done;
    return {
      id,
      object: 'chat.completion',
      created,
      model,
      choices: r.choices.map((c) => ({
        index: c.index,
        message: { role: 'assistant', content: c.text },
        logprobs:
          chat.logprobs === undefined
            ? null
            : { content: c.tokens.map((t) => chatLogprob(ctx, t)), refusal: null },
        finish_reason: FINISH[c.finishReason],
        stop_reason: stopReason(c),
      })),
      usage: usageOf([r]),
    };
  }

  const stream = new EventStream();
  const chunk = (choice: object) => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model,
    choices: [choice],
    ...(common.includeUsage ? { usage: null } : {}),
  });
  // OpenAI opens every choice with its role (buffered until the stream starts).
  for (let c = 0; c < common.n; c++) {
    stream.send(
      chunk({ index: c, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }),
    );
  }
  const run = ctx.runs.start(request, abort.signal, (e: TextEvent) => {
    if (e.type === 'token') {
      stream.send(
        chunk({
          index: e.choice,
          delta: { content: e.text },
          logprobs: chat.logprobs === undefined ? null : { content: [chatLogprob(ctx, e)], refusal: null },
          finish_reason: null,
        }),
      );
    } else {
      stream.send(
        chunk({
          index: e.choice,
          delta: e.text === '' ? {} : { content: e.text },
          logprobs: null,
          finish_reason: FINISH[e.finishReason],
          stop_reason: stopReason(e),
        }),
      );
    }
  });
  await admitAll([run], abort);
  stream.start(reply);
  run.done.then(
    (r) => {
      if (common.includeUsage)
        stream.send({
          id,
          object: 'chat.completion.chunk',
          created,
          model,
          choices: [],
          usage: usageOf([r]),
        });
      stream.done();
      stream.end();
    },
    (err) => {
      abort.abort();
      streamFailure(ctx, stream, err);
    },
  );
  return reply;
}
