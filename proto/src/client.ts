// A typed client of the public API (medcluster.v1.Inference and grpc.health.v1), with promises
// and async iteration over grpc-js. The request and response types are the generated ones.

import * as grpc from '@grpc/grpc-js';
import type * as healthV1 from '../generated/grpc/health/v1/index.js';
import type * as inferenceV1 from '../generated/medcluster/v1/index.js';
import { loadHealthProto, loadInferenceProto } from './loader.js';

export interface CallOptions {
  /** Milliseconds from now after which the server gives up (DEADLINE_EXCEEDED). */
  timeoutMs?: number;
  /** Aborting cancels the call (the server frees what the request held). */
  signal?: AbortSignal;
}

export interface InferenceClientOptions {
  /** Default: insecure (plaintext); `grpc.credentials.createSsl(ca)` for a server with TLS. */
  credentials?: grpc.ChannelCredentials;
  /** Sent as `authorization: Bearer <key>` on every call, for a server that requires API keys. */
  apiKey?: string;
  /** More channel options (`grpc.ssl_target_name_override`, ...). */
  channelOptions?: grpc.ChannelOptions;
  /** Largest response accepted (default 64 MiB). */
  maxReceiveBytes?: number;
  /** Largest request sent (default 64 MiB; the server has its own limit). */
  maxSendBytes?: number;
}

export class InferenceClient {
  private readonly inference: inferenceV1.InferenceClient;
  private readonly health: healthV1.HealthClient;
  private readonly apiKey?: string;

  constructor(
    readonly address: string,
    options: InferenceClientOptions = {},
  ) {
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    this.apiKey = options.apiKey;
    const channel = {
      'grpc.max_receive_message_length': options.maxReceiveBytes ?? 64 << 20,
      'grpc.max_send_message_length': options.maxSendBytes ?? 64 << 20,
      ...options.channelOptions,
    };
    this.inference = new (loadInferenceProto().medcluster.v1.Inference)(address, credentials, channel);
    this.health = new (loadHealthProto().grpc.health.v1.Health)(address, credentials, {
      channelOverride: this.inference.getChannel(),
    });
  }

  generate(
    request: inferenceV1.GenerateRequest,
    options: CallOptions = {},
  ): Promise<inferenceV1.GenerateResponse__Output> {
    return this.unary((cb, o) => this.inference.Generate(request, this.metadata(), o, cb), options);
  }

  /** The stream's messages in order; the iteration throws the call's error, if any. */
  generateStream(
    request: inferenceV1.GenerateRequest,
    options: CallOptions = {},
  ): AsyncIterable<inferenceV1.GenerateStreamResponse__Output> {
    const call = this.inference.GenerateStream(request, this.metadata(), callOptions(options));
    options.signal?.addEventListener('abort', () => call.cancel(), { once: true });
    return call;
  }

  tokenize(
    request: inferenceV1.TokenizeRequest,
    options: CallOptions = {},
  ): Promise<inferenceV1.TokenizeResponse__Output> {
    return this.unary((cb, o) => this.inference.Tokenize(request, this.metadata(), o, cb), options);
  }

  getModelInfo(options: CallOptions = {}): Promise<inferenceV1.ModelInfo__Output> {
    return this.unary((cb, o) => this.inference.GetModelInfo({}, this.metadata(), o, cb), options);
  }

  /** grpc.health.v1 Check for `service` ('' is the whole server). */
  healthCheck(service = '', options: CallOptions = {}): Promise<healthV1.HealthCheckResponse__Output> {
    return this.unary((cb, o) => this.health.Check({ service }, this.metadata(), o, cb), options);
  }

  /** Resolves once the channel is connected, or rejects after timeoutMs. */
  waitForReady(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) =>
      this.inference.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve())),
    );
  }

  close(): void {
    this.inference.close();
  }

  /** The API key, when there is one (a fresh object per call: grpc-js may modify it). */
  private metadata(): grpc.Metadata {
    const metadata = new grpc.Metadata();
    if (this.apiKey !== undefined) metadata.set('authorization', `Bearer ${this.apiKey}`);
    return metadata;
  }

  private unary<T>(
    start: (cb: grpc.requestCallback<T>, options: grpc.CallOptions) => grpc.ClientUnaryCall,
    options: CallOptions,
  ): Promise<T> {
    return new Promise((resolve, reject) => {
      const call = start((err, value) => (err ? reject(err) : resolve(value as T)), callOptions(options));
      options.signal?.addEventListener('abort', () => call.cancel(), { once: true });
    });
  }
}

function callOptions(options: CallOptions): grpc.CallOptions {
  return options.timeoutMs === undefined ? {} : { deadline: Date.now() + options.timeoutMs };
}
