// The serving flags `up` and `coordinator` share: where the public APIs listen (gRPC and HTTP),
// who may call them (API keys) and over what (TLS), the chat template, and how the scheduler
// batches. Defaults reach the GPU's larger decode graph buckets (up to 256 rows).

import { TlsFilesError } from '@medcluster/worker';
import { ApiKeys, ApiKeysError, loadPublicTls, type PublicTls } from '../auth/index.js';
import { intFlag, UsageError } from './args.js';

export const SERVE_FLAGS = {
  'grpc-port': { type: 'string', default: '50051' },
  'http-port': { type: 'string', default: '8080' },
  'http-max-body-bytes': { type: 'string', default: String(4 << 20) },
  'http-cors-origins': { type: 'string', default: '*' },
  'chat-template': { type: 'string' },
  'max-batch-tokens': { type: 'string', default: '512' },
  'max-running': { type: 'string', default: '256' },
  'max-waiting': { type: 'string', default: '1024' },
  'default-max-tokens': { type: 'string', default: '256' },
  'grpc-max-message-bytes': { type: 'string', default: String(4 << 20) },
  'served-model-name': { type: 'string', default: 'meditron-70b-awq' },
  'shutdown-grace-s': { type: 'string', default: '30' },
  'degraded-wait-s': { type: 'string', default: '60' },
  'step-timeout-s': { type: 'string', default: '60' },
  'collective-timeout-s': { type: 'string', default: '30' },
  'api-keys-file': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
} as const;

export const SERVE_USAGE = `Serving:
  --grpc-port 50051             public gRPC API (medcluster.v1.Inference, grpc.health.v1, reflection)
  --http-port 8080              public HTTP APIs: OpenAI (/v1/chat/completions, /v1/completions,
                                /v1/models), TGI (/generate, /generate_stream, /, /info, /health),
                                GET /cluster
  --http-max-body-bytes N       largest HTTP request body accepted (default 4 MiB; larger get 413)
  --http-cors-origins '*'       origins whose pages may call the HTTP APIs: '*' or a comma-separated list
  --chat-template FILE          a Jinja chat template instead of tokenizer_config.json's chat_template
                                (without either, chat requests use a plain-text template)
  --max-batch-tokens 512        tokens per step: decode rows plus prompt chunks (GPUs prefill faster
                                with 2048; the matmuls of larger steps run more efficiently)
  --max-running 256             most sequences holding KV blocks at once
  --max-waiting 1024            most sequences queued; past it requests are refused (429 / RESOURCE_EXHAUSTED)
  --default-max-tokens 256      max_tokens of a request that gives none (capped by the context left)
  --grpc-max-message-bytes N    largest gRPC request accepted (default 4 MiB)
  --served-model-name NAME      the model name the APIs report (default meditron-70b-awq)
  --shutdown-grace-s 30         on SIGTERM/SIGINT, how long in-flight requests may finish
  --degraded-wait-s 60          while a lost worker comes back, how long a request may wait
                                (requests that had streamed tokens fail at once, retryable)
  --step-timeout-s 60           a step with no result after this fails as a lost worker (a stage
                                that hangs); the workers' relays to the next stage wait as long
  --collective-timeout-s 30     a tensor-parallel collective call whose ranks do not all arrive
                                within this fails its stage's group (a peer that hangs)

Access (off by default):
  --api-keys-file FILE          API keys, one per line (# comments; at least 16 characters each), or
                                $MEDCLUSTER_API_KEYS (comma-separated): every HTTP route but the probes
                                (GET /health, /live, /ready) then needs \`Authorization: Bearer <key>\` (401 without), every gRPC call
                                but grpc.health.v1 \`authorization: Bearer <key>\` metadata (UNAUTHENTICATED)
  --tls-cert FILE               PEM certificate (chain) for the public ports: HTTPS and gRPC over TLS
  --tls-key FILE                its PEM private key (give both or neither)`;

export interface ServeSettings {
  grpcPort: number;
  httpPort: number;
  httpMaxBodyBytes: number;
  httpCorsOrigins: '*' | string[];
  /** A chat template file to use instead of the tokenizer's. */
  chatTemplatePath?: string;
  maxBatchTokens: number;
  maxRunning: number;
  maxWaiting: number;
  defaultMaxTokens: number;
  grpcMaxMessageBytes: number;
  servedModelName: string;
  shutdownGraceMs: number;
  degradedWaitMs: number;
  stepTimeoutMs: number;
  collectiveTimeoutMs: number;
  /** Keys the public APIs require (absent: open). */
  apiKeys?: ApiKeys;
  /** Certificate and key of the public ports (absent: plaintext). */
  tls?: PublicTls;
}

type ServeFlagValues = { [K in keyof typeof SERVE_FLAGS]?: string };

function positive(value: string | undefined, name: string, min = 1): number {
  const n = intFlag(value, name);
  if (n < min) throw new UsageError(`--${name} must be at least ${min}, got ${n}`);
  return n;
}

function port(value: string | undefined, name: string): number {
  const n = intFlag(value, name);
  if (n < 0 || n > 65535) throw new UsageError(`--${name} must be a port number, got ${n}`);
  return n;
}

function origins(value: string | undefined): '*' | string[] {
  const list = (value ?? '*')
    .split(',')
    .map((o) => o.trim())
    .filter((o) => o !== '');
  if (list.length === 0) throw new UsageError("--http-cors-origins must be '*' or a list of origins");
  if (list.includes('*')) return '*';
  for (const o of list) {
    if (!/^https?:\/\/[^/]+$/.test(o))
      throw new UsageError(`--http-cors-origins: ${o} is not an origin (scheme://host[:port], no path)`);
  }
  return list;
}

function apiKeysFrom(file: string | undefined, env: string | undefined): ApiKeys | undefined {
  if (file !== undefined && env !== undefined && env !== '')
    throw new UsageError('give --api-keys-file or $MEDCLUSTER_API_KEYS, not both');
  try {
    if (file !== undefined) return ApiKeys.fromFile(file);
    if (env !== undefined && env !== '') return ApiKeys.parse(env, '$MEDCLUSTER_API_KEYS');
  } catch (err) {
    if (err instanceof ApiKeysError) throw new UsageError(err.message);
    throw err;
  }
  return undefined;
}

function publicTlsFrom(cert: string | undefined, key: string | undefined): PublicTls | undefined {
  if (cert === undefined && key === undefined) return undefined;
  if (cert === undefined || key === undefined) throw new UsageError('--tls-cert and --tls-key go together');
  try {
    return loadPublicTls(cert, key);
  } catch (err) {
    if (err instanceof TlsFilesError) throw new UsageError(err.message);
    throw err;
  }
}

export function serveSettingsFromFlags(
  flags: ServeFlagValues,
  env: Record<string, string | undefined> = process.env,
): ServeSettings {
  const grpcPort = port(flags['grpc-port'], 'grpc-port');
  const httpPort = port(flags['http-port'], 'http-port');
  if (httpPort !== 0 && httpPort === grpcPort)
    throw new UsageError(`--http-port and --grpc-port must differ, both are ${httpPort}`);
  const servedModelName = flags['served-model-name'] ?? '';
  if (servedModelName.trim() === '') throw new UsageError('--served-model-name must not be empty');
  const apiKeys = apiKeysFrom(flags['api-keys-file'], env.MEDCLUSTER_API_KEYS);
  const tls = publicTlsFrom(flags['tls-cert'], flags['tls-key']);
  return {
    grpcPort,
    httpPort,
    httpMaxBodyBytes: positive(flags['http-max-body-bytes'], 'http-max-body-bytes', 1024),
    httpCorsOrigins: origins(flags['http-cors-origins']),
    ...(flags['chat-template'] === undefined ? {} : { chatTemplatePath: flags['chat-template'] }),
    maxBatchTokens: positive(flags['max-batch-tokens'], 'max-batch-tokens'),
    maxRunning: positive(flags['max-running'], 'max-running'),
    maxWaiting: positive(flags['max-waiting'], 'max-waiting', 0),
    defaultMaxTokens: positive(flags['default-max-tokens'], 'default-max-tokens'),
    grpcMaxMessageBytes: positive(flags['grpc-max-message-bytes'], 'grpc-max-message-bytes', 1024),
    servedModelName,
    shutdownGraceMs: positive(flags['shutdown-grace-s'], 'shutdown-grace-s', 0) * 1000,
    degradedWaitMs: positive(flags['degraded-wait-s'], 'degraded-wait-s', 0) * 1000,
    stepTimeoutMs: positive(flags['step-timeout-s'], 'step-timeout-s') * 1000,
    collectiveTimeoutMs: positive(flags['collective-timeout-s'], 'collective-timeout-s') * 1000,
    ...(apiKeys ? { apiKeys } : {}),
    ...(tls ? { tls } : {}),
  };
}
