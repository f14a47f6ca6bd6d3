// Hugging Face text-generation-inference's routes: POST /generate, POST /generate_stream,
// POST / (either, by `stream`; the unary answer wrapped in a list as TGI's compat route does),
// GET /info, GET /health. Parameters and their rules are TGI's: greedy unless do_sample or a
// sampling parameter is set, temperature > 0, top_k > 0, 0 < top_p < 1. A stream is one
// `data: {index, token, top_tokens, generated_text: null, details: null}` per token; the last
// carries generated_text (and details when asked). TGI's token list ends with the EOS token;
// this server's lists only the generated tokens (the scheduler never hands out the stop token).

import { randomInt } from 'node:crypto';
import { MAX_LOGPROBS, type SamplingParams, type TokenLogprob } from '@medcluster/worker';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import {
  MAX_STOP_STRING_LENGTH,
  MAX_STOP_STRINGS,
  type TextEvent,
  type TextResult,
} from '../generation/text-generation.js';
import type { FinishReason } from '../scheduler/scheduler.js';
import { errorReply, HttpError } from './errors.js';
import { FieldError, Fields } from './fields.js';
import { checkContext, type HttpContext, requireReady } from './http-context.js';
import { abortOnDisconnect, EventStream } from './runs.js';

const FINISH: Record<FinishReason, string> = {
  length: 'length',
  eos: 'eos_token',
  stop: 'stop_sequence',
  cancelled: 'length',
};

interface TgiRequest {
  inputs: string;
  ids: number[];
  maxNewTokens?: number;
  sampling: SamplingParams;
  /** Whether the request samples (TGI's do_sample, or a sampling parameter set). */
  sampled: boolean;
  stop: string[];
  details: boolean;
  decoderInputDetails: boolean;
  returnFullText: boolean;
  topN: number;
  /** POST / only: stream the answer. */
  stream: boolean;
}

function readRequest(ctx: HttpContext, body: unknown): TgiRequest {
  const f: Fields = Fields.body(body);
  const inputs = f.string('inputs', { nonEmpty: true });
  if (inputs === undefined) f.fail('inputs', 'is required: the prompt text');
  const stream = f.boolean('stream') ?? false;
  const addSpecialTokens = f.boolean('add_special_tokens') ?? true;
  const p = f.object('parameters') ?? Fields.body({});
  const bestOf = p.integer('best_of', { min: 1 });
  if (bestOf !== undefined && bestOf > 1)
    p.fail('best_of', `is not supported by this server (got ${bestOf}; only 1)`);
  p.unsupported('typical_p', () => false, 'typical sampling is not implemented');
  p.unsupported('watermark', (v) => v === false, 'no watermarking');
  p.unsupported('grammar', () => false, 'no constrained decoding');
  p.unsupported('adapter_id', () => false, 'no adapters');
  const doSample = p.boolean('do_sample') ?? false;
  const temperature = p.number('temperature', { min: 0, minExclusive: true });
  const topK = p.integer('top_k', { min: 1 });
  const topP = p.number('top_p', { min: 0, minExclusive: true, max: 1, maxExclusive: true });
  const repetitionPenalty = p.number('repetition_penalty', { min: 0, minExclusive: true }) ?? 1;
  const frequencyPenalty = p.number('frequency_penalty', { min: -2, max: 2 }) ?? 0;
  const maxNewTokens = p.integer('max_new_tokens', { min: 1 });
  const stop = p.strings('stop', { maxItems: MAX_STOP_STRINGS, maxLength: MAX_STOP_STRING_LENGTH }) ?? [];
  const seed = p.integer('seed', { min: 0 });
  const details = p.boolean('details') ?? false;
  const decoderInputDetails = p.boolean('decoder_input_details') ?? false;
  const returnFullText = p.boolean('return_full_text') ?? false;
  const truncate = p.integer('truncate', { min: 1 });
  const topN = p.integer('top_n_tokens', { min: 0, max: MAX_LOGPROBS }) ?? 0;
  // TGI samples when asked to, or when any sampling parameter moves off its neutral value.
  const sampled =
    doSample || (temperature !== undefined && temperature !== 1) || topK !== undefined || topP !== undefined;
  let ids = ctx.prompts.fromPrompt(inputs, 'inputs', addSpecialTokens);
  if (truncate !== undefined && ids.length > truncate) ids = ids.slice(-truncate);
  checkContext(ctx, ids.length, maxNewTokens, { prompt: 'inputs', maxTokens: 'parameters.max_new_tokens' });
  return {
    inputs,
    ids,
    maxNewTokens,
    sampled,
    sampling: {
      temperature: sampled ? (temperature ?? 1) : 0,
      topK: topK ?? 0,
      topP: topP ?? 1,
      repetitionPenalty,
      presencePenalty: 0,
      frequencyPenalty,
      stopTokenIds: [],
      minTokens: 0,
      seed: sampled ? (seed ?? randomInt(2 ** 48 - 1)) : (seed ?? 0),
      // Every TGI token carries its logprob.
      logprobs: topN,
    },
    stop,
    details: details || decoderInputDetails,
    decoderInputDetails,
    returnFullText,
    topN,
    stream,
  };
}

interface TgiToken {
  id: number;
  text: string;
  logprob: number | null;
  special: boolean;
}

function topTokens(ctx: HttpContext, top: readonly TokenLogprob[] | undefined): TgiToken[] {
  return (top ?? []).map((t) => {
    const s = ctx.texts.of(t.id);
    return { id: t.id, text: s.text, logprob: t.logprob, special: s.special };
  });
}

/** Prompt tokens with their logprobs: the first has none (nothing predicts it), as in TGI. */
function prefill(ctx: HttpContext, ids: readonly number[], scored: readonly TokenLogprob[] | undefined) {
  if (!scored) return [];
  return ids.map((id, i) => ({
    id,
    text: ctx.texts.of(id).text,
    logprob: i === 0 ? null : scored[i - 1].logprob,
  }));
}

export function tgiRoutes(ctx: HttpContext) {
  return async (app: FastifyInstance): Promise<void> => {
    app.post('/', async (req, reply) => {
      const r = readRequestReady(ctx, req);
      return r.stream ? generateStream(ctx, r, reply) : [await generate(ctx, r, reply)];
    });
    app.post('/generate', async (req, reply) => generate(ctx, readRequestReady(ctx, req), reply));
    app.post('/generate_stream', async (req, reply) =>
      generateStream(ctx, readRequestReady(ctx, req), reply),
    );

    app.get('/health', async (_req, reply) => {
      if (!ctx.serving.healthy()) throw new HttpError(503, 'unhealthy', 'healthcheck');
      return reply.code(200).send();
    });

    app.get('/info', async () => {
      const limits = ctx.scheduler.limits;
      return {
        model_id: ctx.serving.modelName,
        model_sha: null,
        model_dtype: 'float16',
        model_device_type: ctx.serving.cluster.workers()[0]?.device ?? 'cpu',
        model_pipeline_tag: 'text-generation',
        max_concurrent_requests: limits.maxRunning + limits.maxWaiting,
        max_best_of: 1,
        max_stop_sequences: MAX_STOP_STRINGS,
        max_input_tokens: limits.maxContext - 1,
        max_total_tokens: limits.maxContext,
        max_batch_total_tokens: limits.maxBatchTokens,
        max_batch_size: limits.maxRunning,
        max_client_batch_size: 1,
        validation_workers: 1,
        router: 'medcluster',
        // TGI's own version; this is not TGI.
        version: null,
        sha: null,
        docker_label: null,
      };
    });
  };
}

function readRequestReady(ctx: HttpContext, req: FastifyRequest): TgiRequest {
  requireReady(ctx);
  return readRequest(ctx, req.body);
}

function textRequest(r: TgiRequest) {
  return {
    prompt: r.ids,
    maxTokens: r.maxNewTokens,
    sampling: r.sampling,
    stop: r.stop,
    promptLogprobs: r.decoderInputDetails,
  };
}

async function generate(ctx: HttpContext, r: TgiRequest, reply: FastifyReply) {
  const abort = abortOnDisconnect(reply);
  // TGI's token texts are what each token adds to the text, as the stream shows them.
  const texts: string[] = [];
  const run = ctx.runs.start(textRequest(r), abort.signal, (e: TextEvent) => {
    if (e.type === 'token') texts.push(e.text);
    else if (texts.length > 0) texts[texts.length - 1] += e.text;
  });
  await run.admitted;
  const result: TextResult = await run.done;
  const c = result.choices[0];
  reply
    .header('x-prompt-tokens', String(result.promptTokens))
    .header('x-generated-tokens', String(c.tokens.length));
  const generated_text = r.returnFullText ? r.inputs + c.text : c.text;
  if (!r.details) return { generated_text };
  return {
    generated_text,
    details: {
      finish_reason: FINISH[c.finishReason],
      generated_tokens: c.tokens.length,
      seed: r.sampled ? r.sampling.seed : null,
      prefill: prefill(ctx, result.promptIds, r.decoderInputDetails ? result.promptLogprobs : undefined),
      tokens: c.tokens.map((t, i) => ({
        id: t.id,
        text: texts[i] ?? '',
        logprob: t.logprob ?? null,
        special: ctx.texts.of(t.id).special,
      })),
      ...(r.topN > 0 ? { top_tokens: c.tokens.map((t) => topTokens(ctx, t.topLogprobs)) } : {}),
    },
  };
}

async function generateStream(ctx: HttpContext, r: TgiRequest, reply: FastifyReply) {
  if (r.decoderInputDetails)
    throw new FieldError(
      'parameters.decoder_input_details',
      'parameters.decoder_input_details is not supported when streaming tokens (as in TGI); use /generate',
    );
  const abort = abortOnDisconnect(reply);
  const stream = new EventStream();
  // Each token is sent once the next one exists, so the last can carry the end of the text.
  let held: { index: number; token: TgiToken; top_tokens: TgiToken[] } | undefined;
  let text = '';
  const tokenOf = (e: Extract<TextEvent, { type: 'token' }>) => ({
    index: e.index + 1,
    token: { id: e.id, text: e.text, logprob: e.logprob ?? null, special: ctx.texts.of(e.id).special },
    top_tokens: topTokens(ctx, e.topLogprobs),
  });
  const run = ctx.runs.start(textRequest(r), abort.signal, (e: TextEvent) => {
    text += e.text;
    if (e.type === 'token') {
      if (held) stream.send({ ...held, generated_text: null, details: null });
      held = tokenOf(e);
      return;
    }
    // A choice that ends before its first token (EOS at once) still ends with a token, as TGI's do.
    const last = held ?? {
      index: 1,
      token: { id: ctx.serving.generator.tokenizer.eosTokenId, text: '', logprob: null, special: true },
      top_tokens: [],
    };
    last.token.text += e.text;
    stream.send({
      ...last,
      generated_text: r.returnFullText ? r.inputs + text : text,
      details: r.details
        ? {
            finish_reason: FINISH[e.finishReason],
            generated_tokens: e.completionTokens,
            seed: r.sampled ? r.sampling.seed : null,
            input_length: r.ids.length,
          }
        : null,
    });
    held = undefined;
  });
  await run.admitted;
  stream.start(reply);
  run.done.then(
    () => stream.end(),
    (err) => {
      stream.send(errorReply(err, 'tgi', { bodyLimit: ctx.bodyLimit }).body);
      stream.end();
    },
  );
  return reply;
}
