// The serving flags `up` and `coordinator` share: where the public API listens and how the
// scheduler batches. Defaults reach the GPU's larger decode graph buckets (up to 256 rows).

import { intFlag, UsageError } from './args.js';

export const SERVE_FLAGS = {
  'grpc-port': { type: 'string', default: '50051' },
  'max-batch-tokens': { type: 'string', default: '512' },
  'max-running': { type: 'string', default: '256' },
  'max-waiting': { type: 'string', default: '1024' },
  'default-max-tokens': { type: 'string', default: '256' },
  'grpc-max-message-bytes': { type: 'string', default: String(4 << 20) },
  'served-model-name': { type: 'string', default: 'meditron-70b-awq' },
  'shutdown-grace-s': { type: 'string', default: '30' },
  'degraded-wait-s': { type: 'string', default: '60' },
} as const;

export const SERVE_USAGE = `Serving:
  --grpc-port 50051             public gRPC API (medcluster.v1.Inference, grpc.health.v1, reflection)
  --max-batch-tokens 512        tokens per step: decode rows plus prompt chunks (GPUs prefill faster
                                with 2048; the matmuls of larger steps run more efficiently)
  --max-running 256             most sequences holding KV blocks at once
  --max-waiting 1024            most sequences queued; past it requests are refused (429 / RESOURCE_EXHAUSTED)
  --default-max-tokens 256      max_tokens of a request that gives none (capped by the context left)
  --grpc-max-message-bytes N    largest gRPC request accepted (default 4 MiB)
  --served-model-name NAME      the model name the APIs report (default meditron-70b-awq)
  --shutdown-grace-s 30         on SIGTERM/SIGINT, how long in-flight requests may finish
  --degraded-wait-s 60          while a lost worker comes back, how long a request may wait
                                (requests that had streamed tokens fail at once, retryable)`;

export interface ServeSettings {
  grpcPort: number;
  maxBatchTokens: number;
  maxRunning: number;
  maxWaiting: number;
  defaultMaxTokens: number;
  grpcMaxMessageBytes: number;
  servedModelName: string;
  shutdownGraceMs: number;
  degradedWaitMs: number;
}

type ServeFlagValues = { [K in keyof typeof SERVE_FLAGS]?: string };

function positive(value: string | undefined, name: string, min = 1): number {
  const n = intFlag(value, name);
  if (n < min) throw new UsageError(`--${name} must be at least ${min}, got ${n}`);
  return n;
}

export function serveSettingsFromFlags(flags: ServeFlagValues): ServeSettings {
  const grpcPort = intFlag(flags['grpc-port'], 'grpc-port');
  if (grpcPort < 0 || grpcPort > 65535)
    throw new UsageError(`--grpc-port must be a port number, got ${grpcPort}`);
  const servedModelName = flags['served-model-name'] ?? '';
  if (servedModelName.trim() === '') throw new UsageError('--served-model-name must not be empty');
  return {
    grpcPort,
    maxBatchTokens: positive(flags['max-batch-tokens'], 'max-batch-tokens'),
    maxRunning: positive(flags['max-running'], 'max-running'),
    maxWaiting: positive(flags['max-waiting'], 'max-waiting', 0),
    defaultMaxTokens: positive(flags['default-max-tokens'], 'default-max-tokens'),
    grpcMaxMessageBytes: positive(flags['grpc-max-message-bytes'], 'grpc-max-message-bytes', 1024),
    servedModelName,
    shutdownGraceMs: positive(flags['shutdown-grace-s'], 'shutdown-grace-s', 0) * 1000,
    degradedWaitMs: positive(flags['degraded-wait-s'], 'degraded-wait-s', 0) * 1000,
  };
}
