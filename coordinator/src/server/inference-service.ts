// The public medcluster.v1.Inference service, on the generator's token events. Bad input becomes
// INVALID_ARGUMENT with a message naming the field; a full queue RESOURCE_EXHAUSTED; a failed
// step or a shutdown UNAVAILABLE. A client that goes away, cancels, or whose deadline passes
// cancels its request, which frees its KV blocks at once.

import { randomInt, randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { type inferenceV1, loadInferenceProto } from '@medcluster/proto';
import type { SampledToken, SamplingParams } from '@medcluster/worker';
import type { TextChoice, TextRequest, TextResult } from '../generation/text-generation.js';
import { QueueFullError, RequestError, RequestFailedError } from '../scheduler/errors.js';
import type { RequestTiming } from '../scheduler/events.js';
import type { ServingContext } from './serving-context.js';

const FINISH: Record<TextChoice['finishReason'], inferenceV1.FinishReason> = {
  length: 'FINISH_REASON_LENGTH',
  stop: 'FINISH_REASON_STOP',
  eos: 'FINISH_REASON_EOS',
  cancelled: 'FINISH_REASON_CANCELLED',
};

/** Longest client-chosen request id. */
const MAX_REQUEST_ID = 128;

function statusOf(err: unknown): Partial<grpc.StatusObject> {
  const details = err instanceof Error ? err.message : String(err);
  const code =
    err instanceof RequestError
      ? grpc.status.INVALID_ARGUMENT
      : err instanceof QueueFullError
        ? grpc.status.RESOURCE_EXHAUSTED
        : err instanceof RequestFailedError
          ? grpc.status.UNAVAILABLE
          : grpc.status.INTERNAL;
  return { code, details };
}

function requestIdOf(req: inferenceV1.GenerateRequest__Output): string {
  const id = req.requestId;
  if (id.length > MAX_REQUEST_ID || /[^\x21-\x7e]/.test(id))
    throw new RequestError(`request_id must be at most ${MAX_REQUEST_ID} printable ASCII characters`);
  return id || randomUUID();
}

function toTextRequest(
  req: inferenceV1.GenerateRequest__Output,
  requestId: string,
  signal: AbortSignal,
): TextRequest {
  let prompt: string | number[];
  if (req.prompt === 'text') prompt = req.text ?? '';
  else if (req.prompt === 'tokenIds') prompt = req.tokenIds?.ids ?? [];
  else throw new RequestError('prompt: set text or token_ids');
  if (typeof prompt !== 'string' && prompt.length === 0)
    throw new RequestError('token_ids: the prompt is empty');
  const seed = req.seed ? req.seed.value : randomInt(2 ** 48 - 1);
  if (!Number.isSafeInteger(seed)) throw new RequestError(`seed must be below 2^53, got ${seed}`);
  const sampling: SamplingParams = {
    temperature: req.temperature ? req.temperature.value : 0,
    topK: req.topK ? req.topK.value : 0,
    topP: req.topP ? req.topP.value : 1,
    repetitionPenalty: req.repetitionPenalty ? req.repetitionPenalty.value : 1,
    presencePenalty: req.presencePenalty ? req.presencePenalty.value : 0,
    frequencyPenalty: req.frequencyPenalty ? req.frequencyPenalty.value : 0,
    stopTokenIds: req.stopTokenIds,
    minTokens: req.minTokens,
    seed,
    ...(req.logprobs ? { logprobs: req.logprobs.value } : {}),
  };
  return {
    requestId,
    prompt,
    maxTokens: req.maxTokens === 0 ? undefined : req.maxTokens,
    n: req.n ? req.n.value : 1,
    sampling,
    ignoreEos: req.ignoreEos,
    stop: req.stop,
    signal,
  };
}

function usage(r: TextResult): inferenceV1.Usage {
  return {
    promptTokens: r.promptTokens,
    completionTokens: r.completionTokens,
    totalTokens: r.promptTokens + r.completionTokens,
  };
}

function timing(t: RequestTiming): inferenceV1.Timing {
  return {
    queueMs: t.queue * 1000,
    prefillMs: t.prefill * 1000,
    decodeMs: t.decode * 1000,
    timeToFirstTokenMs: t.timeToFirstToken * 1000,
    totalMs: t.total * 1000,
  };
}

function logprobOf(t: Pick<SampledToken, 'id' | 'logprob' | 'topLogprobs'>): inferenceV1.GeneratedLogprob {
  return {
    chosen: { tokenId: t.id, logprob: t.logprob as number },
    top: (t.topLogprobs ?? []).map((x) => ({ tokenId: x.id, logprob: x.logprob })),
  };
}

function choiceOf(c: TextChoice, withLogprobs: boolean): inferenceV1.Choice {
  return {
    index: c.index,
    text: c.text,
    tokenIds: c.tokens.map((t) => t.id),
    finishReason: FINISH[c.finishReason],
    stopSequence: c.stopSequence ?? '',
    logprobs: withLogprobs ? c.tokens.map(logprobOf) : [],
    stopTokenId: c.stopTokenId === undefined ? null : { value: c.stopTokenId },
  };
}

export function inferenceHandlers(ctx: ServingContext): grpc.UntypedServiceImplementation {
  return {
    Generate(
      call: grpc.ServerUnaryCall<inferenceV1.GenerateRequest__Output, inferenceV1.GenerateResponse>,
      callback: grpc.sendUnaryData<inferenceV1.GenerateResponse>,
    ) {
      const abort = new AbortController();
      call.on('cancelled', () => abort.abort());
      Promise.resolve()
        .then(() => {
          const requestId = requestIdOf(call.request);
          return ctx.generator.generate(toTextRequest(call.request, requestId, abort.signal));
        })
        .then((r) => {
          const withLogprobs = call.request.logprobs !== null;
          const choices = r.choices.map((c) => choiceOf(c, withLogprobs));
          const first = choices[0];
          callback(null, {
            text: first.text,
            tokenIds: first.tokenIds,
            finishReason: first.finishReason,
            stopSequence: first.stopSequence,
            usage: usage(r),
            timing: timing(r.timing),
            requestId: r.requestId,
            choices,
          });
        })
        .catch((err) => callback(statusOf(err)));
    },

    GenerateStream(
      call: grpc.ServerWritableStream<
        inferenceV1.GenerateRequest__Output,
        inferenceV1.GenerateStreamResponse
      >,
    ) {
      const abort = new AbortController();
      call.on('cancelled', () => abort.abort());
      // The last choice's finish waits for the request's usage and timing.
      let finishesLeft = call.request.n ? call.request.n.value : 1;
      let last: inferenceV1.GenerateStreamResponse | undefined;
      Promise.resolve()
        .then(() => {
          const requestId = requestIdOf(call.request);
          return ctx.generator.generate(toTextRequest(call.request, requestId, abort.signal), (event) => {
            if (event.type === 'token') {
              call.write({
                text: event.text,
                tokenIds: [event.id],
                index: event.index,
                requestId,
                choice: event.choice,
                logprobs: event.logprob === undefined ? null : logprobOf(event),
              });
              return;
            }
            const message: inferenceV1.GenerateStreamResponse = {
              text: event.text,
              tokenIds: [],
              index: event.completionTokens,
              requestId,
              choice: event.choice,
              finish: {
                finishReason: FINISH[event.finishReason],
                stopSequence: event.stopSequence ?? '',
                stopTokenId: event.stopTokenId === undefined ? null : { value: event.stopTokenId },
              },
            };
            if (--finishesLeft > 0) call.write(message);
            else last = message;
          });
        })
        .then((r) => {
          if (last?.finish) {
            last.finish.usage = usage(r);
            last.finish.timing = timing(r.timing);
            call.write(last);
          }
          call.end();
        })
        // 'error' is how a grpc-js server stream ends with a status (destroy() would end it without one).
        .catch((err) => call.emit('error', statusOf(err)));
    },

    Tokenize(
      call: grpc.ServerUnaryCall<inferenceV1.TokenizeRequest__Output, inferenceV1.TokenizeResponse>,
      callback: grpc.sendUnaryData<inferenceV1.TokenizeResponse>,
    ) {
      try {
        const tokenizer = ctx.generator.tokenizer;
        const text = call.request.text;
        const ids = call.request.addBos
          ? ctx.generator.promptIds(text)
          : tokenizer.encode(text, { addBos: false });
        callback(null, { ids: [...ids], pieces: ids.map((id) => tokenizer.idToToken(id) ?? '') });
      } catch (err) {
        callback(statusOf(err));
      }
    },

    GetModelInfo(
      _call: grpc.ServerUnaryCall<inferenceV1.GetModelInfoRequest__Output, inferenceV1.ModelInfo>,
      callback: grpc.sendUnaryData<inferenceV1.ModelInfo>,
    ) {
      const c = ctx.config;
      callback(null, {
        modelName: ctx.modelName,
        config: {
          numLayers: c.numLayers,
          hiddenSize: c.hiddenSize,
          intermediateSize: c.intermediateSize,
          numHeads: c.numHeads,
          numKvHeads: c.numKvHeads,
          headDim: c.headDim,
          ropeTheta: c.ropeTheta,
          rmsNormEps: c.rmsNormEps,
          bosTokenId: c.bosTokenId,
          eosTokenId: c.eosTokenId,
          quantBits: c.quant.bits,
          quantGroupSize: c.quant.groupSize,
        },
        vocabRows: c.vocabRows,
        maxContext: c.maxPositions,
        tp: ctx.cluster.tp,
        pp: ctx.cluster.pp,
        workers: ctx.cluster.workers().map((w) => ({ ...w, metricsUrl: w.metricsUrl ?? '' })),
      });
    },
  };
}

export function addInferenceService(server: grpc.Server, ctx: ServingContext): void {
  const { medcluster } = loadInferenceProto();
  server.addService(medcluster.v1.Inference.service, inferenceHandlers(ctx));
}
