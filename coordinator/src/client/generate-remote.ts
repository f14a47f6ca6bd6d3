// Client side of `medcluster generate --server`: streams a completion from a running cluster
// over the public gRPC API and hands text to the caller as it arrives.

import { InferenceClient, type InferenceClientOptions, type inferenceV1 } from '@medcluster/proto';

export interface RemoteRequest {
  prompt: string;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  stop: string[];
}

/** Resolves with the finish message once the stream ends; rejects with the server's error. */
export async function generateRemote(
  address: string,
  request: RemoteRequest,
  onText: (text: string) => void,
  connection: Pick<InferenceClientOptions, 'credentials' | 'apiKey' | 'channelOptions'> = {},
): Promise<inferenceV1.GenerateFinish__Output> {
  const client = new InferenceClient(address, connection);
  try {
    let finish: inferenceV1.GenerateFinish__Output | null = null;
    for await (const message of client.generateStream({
      text: request.prompt,
      maxTokens: request.maxTokens,
      temperature: { value: request.temperature },
      topK: { value: request.topK },
      topP: { value: request.topP },
      seed: { value: request.seed },
      stop: request.stop,
    })) {
      if (message.text) onText(message.text);
      if (message.finish) finish = message.finish;
    }
    if (!finish) throw new Error(`${address}: the stream ended without a finish message`);
    return finish;
  } catch (err) {
    const e = err as { details?: string; message: string };
    throw new Error(`${address}: ${e.details || e.message}`, { cause: err });
  } finally {
    client.close();
  }
}
