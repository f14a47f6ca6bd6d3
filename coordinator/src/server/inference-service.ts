// The public medcluster.v1.Inference service. Bad input becomes INVALID_ARGUMENT with a
// message that says what is wrong; a failed step becomes UNAVAILABLE for the requests in it;
// a client that goes away cancels its request and frees its KV blocks.

import { randomInt, randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { type inferenceV1, loadInferenceProto } from '@medcluster/proto';
import type { SamplingParams } from '../generation/sampler.js';
import type { TextRequest, TextResult } from '../generation/text-generation.js';
import { RequestError, RequestFailedError } from '../scheduler/scheduler.js';
import type { ServingContext } from './serving-context.js';

const FINISH: Record<TextResult['finishReason'], inferenceV1.FinishReason> = {
  length: 'FINISH_REASON_LENGTH',
  stop: 'FINISH_REASON_STOP',
  eos: 'FINISH_REASON_EOS',
  cancelled: 'FINISH_REASON_UNSPECIFIED',
};

function statusOf(err: unknown): grpc.StatusObject {
  const details = err instanceof Error ? err.message : String(err);
  const code =
    err instanceof RequestError
      ? grpc.status.INVALID_ARGUMENT
      : err instanceof RequestFailedError
        ? grpc.status.UNAVAILABLE
        : grpc.status.INTERNAL;
  return { code, details, metadata: new grpc.Metadata() };
}

function toTextRequest(
  ctx: ServingContext,
  req: inferenceV1.GenerateRequest__Output,
  signal: AbortSignal,
): TextRequest {
  let prompt: string | number[];
  if (req.prompt === 'text') prompt = req.text ?? '';
  else if (req.prompt === 'tokenIds') prompt = req.tokenIds?.ids ?? [];
  else throw new RequestError('the request has no prompt: set text or token_ids');
  if (typeof prompt === 'string' && prompt.length === 0) throw new RequestError('the prompt text is empty');
  const sampling: SamplingParams = {
    temperature: req.temperature ? req.temperature.value : ctx.defaults.temperature,
    topK: req.topK ? req.topK.value : 0,
    topP: req.topP ? req.topP.value : 1,
    seed: req.seed ? Number(req.seed.value) : randomInt(2 ** 31),
  };
  return { prompt, maxTokens: req.maxTokens || ctx.defaults.maxTokens, sampling, stop: req.stop, signal };
}

function usage(r: TextResult): inferenceV1.Usage {
  return {
    promptTokens: r.promptTokens,
    completionTokens: r.completionTokens,
    totalTokens: r.promptTokens + r.completionTokens,
  };
}

function timing(r: TextResult): inferenceV1.Timing {
  return {
    timeToFirstTokenMs: r.timeToFirstTokenMs,
    decodeMs: r.totalMs - r.timeToFirstTokenMs,
    totalMs: r.totalMs,
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
      const requestId = call.request.requestId || randomUUID();
      Promise.resolve()
        .then(() => ctx.generator.generate(toTextRequest(ctx, call.request, abort.signal)))
        .then((r) =>
          callback(null, {
            text: r.text,
            tokenIds: r.tokenIds,
            finishReason: FINISH[r.finishReason],
            stopSequence: r.stopSequence ?? '',
            usage: usage(r),
            timing: timing(r),
            requestId,
          }),
        )
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
      const requestId = call.request.requestId || randomUUID();
      let index = 0;
      let pendingIds: number[] = [];
      Promise.resolve()
        .then(() =>
          ctx.generator.generate(toTextRequest(ctx, call.request, abort.signal), (delta, tokenId) => {
            if (tokenId >= 0) pendingIds.push(tokenId);
            call.write({ text: delta, tokenIds: pendingIds, index, requestId });
            index += pendingIds.length;
            pendingIds = [];
          }),
        )
        .then((r) => {
          const rest = r.tokenIds.slice(index);
          call.write({
            text: '',
            tokenIds: rest,
            index,
            requestId,
            finish: {
              finishReason: FINISH[r.finishReason],
              stopSequence: r.stopSequence ?? '',
              usage: usage(r),
              timing: timing(r),
            },
          });
          call.end();
        })
        .catch((err) => call.destroy(Object.assign(new Error(statusOf(err).details), statusOf(err))));
    },

    Tokenize(
      call: grpc.ServerUnaryCall<inferenceV1.TokenizeRequest__Output, inferenceV1.TokenizeResponse>,
      callback: grpc.sendUnaryData<inferenceV1.TokenizeResponse>,
    ) {
      const tokenizer = ctx.generator.tokenizer;
      const ids = tokenizer.encode(call.request.text, { addBos: call.request.addBos });
      callback(null, { ids, pieces: ids.map((id) => tokenizer.idToToken(id) ?? '') });
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
        tp: ctx.tp,
        pp: ctx.pp,
        workers: ctx.workers(),
      });
    },
  };
}

export function addInferenceService(server: grpc.Server, ctx: ServingContext): void {
  const { medcluster } = loadInferenceProto();
  server.addService(medcluster.v1.Inference.service, inferenceHandlers(ctx));
}
