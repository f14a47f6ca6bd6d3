// Client side of `medcluster generate --server`: streams a completion from a running cluster
// over the public gRPC API and hands text deltas to the caller as they arrive.

import * as grpc from '@grpc/grpc-js';
import { type inferenceV1, loadInferenceProto } from '@medcluster/proto';
import type { SamplingParams } from '../generation/sampler.js';

export interface RemoteRequest {
  prompt: string;
  maxTokens: number;
  sampling: SamplingParams;
  stop: string[];
}

export function inferenceClient(address: string) {
  const { medcluster } = loadInferenceProto();
  return new medcluster.v1.Inference(address, grpc.credentials.createInsecure());
}

/** Resolves with the finish message once the stream ends; rejects with the server's error. */
export function generateRemote(
  address: string,
  request: RemoteRequest,
  onText: (delta: string) => void,
): Promise<inferenceV1.GenerateFinish__Output> {
  const client = inferenceClient(address);
  return new Promise((resolve, reject) => {
    let finish: inferenceV1.GenerateFinish__Output | null = null;
    const call = client.GenerateStream({
      text: request.prompt,
      maxTokens: request.maxTokens,
      temperature: { value: request.sampling.temperature },
      topK: { value: request.sampling.topK },
      topP: { value: request.sampling.topP },
      seed: { value: request.sampling.seed },
      stop: request.stop,
    });
    call.on('data', (message: inferenceV1.GenerateStreamResponse__Output) => {
      if (message.text) onText(message.text);
      if (message.finish) finish = message.finish;
    });
    call.on('error', (err: grpc.ServiceError) => {
      client.close();
      reject(new Error(`${address}: ${err.details || err.message}`, { cause: err }));
    });
    call.on('end', () => {
      client.close();
      if (finish) resolve(finish);
      else reject(new Error(`${address}: the stream ended without a finish message`));
    });
  });
}
