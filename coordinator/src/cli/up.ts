// `medcluster up`: a whole cluster on this machine with no NATS: a coordinator (this process)
// and tp x pp worker processes. Without --model it serves the tiny generated model; with
// --synthetic PRESET its workers serve random weights of the preset's exact shapes (no file),
// with the generated model's tokenizer, for measurements where the checkpoint cannot be had.

import type { DeviceKind } from '@medcluster/kernels';
import { openCheckpoint, presetConfig } from '@medcluster/worker';
import { startLocalCluster } from '../cluster/local-cluster.js';
import { ensureGeneratedModel } from '../model-cache.js';
import { CONFIG_USAGE, deviceFlag, intFlag, parseFlags, UsageError } from './args.js';
import {
  INTERNAL_TLS_FLAGS,
  INTERNAL_TLS_USAGE,
  internalTlsFromFlags,
  logInternalTls,
} from './internal-tls-flags.js';
import { KV_USAGE, kvCacheFromFlags } from './kv-flags.js';
import { LOG_FLAGS, LOG_USAGE, logArgs, loggerFor, logSettingsFromFlags } from './log-flags.js';
import { openLoadingPort, serveUntilSignal } from './serve.js';
import { SERVE_FLAGS, SERVE_USAGE, serveSettingsFromFlags } from './serve-flags.js';

const USAGE = `usage: medcluster up [--model DIR | --synthetic tiny|llama-2-70b [--layers N]] [--tp N] [--pp N]
         [--host 127.0.0.1] [--device cpu|cuda] [--kv-blocks N | --kv-memory-fraction F] [--block-size 16]
         [--threads N] [serving flags] [internal TLS]

  --synthetic PRESET   random weights of the preset's exact shapes, made on each worker's device, with
                       the generated tokenizer (llama-2-70b: 32000 embedding rows, so ChatML's ids
                       32017/32018 are refused: measure with /v1/completions)

${SERVE_USAGE}

${INTERNAL_TLS_USAGE}
                                (up hands the same files to its workers)

${LOG_USAGE}

${KV_USAGE}

${CONFIG_USAGE}`;

export async function upCommand(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      ...SERVE_FLAGS,
      model: { type: 'string' },
      synthetic: { type: 'string' },
      layers: { type: 'string' },
      tp: { type: 'string', default: '1' },
      pp: { type: 'string', default: '1' },
      host: { type: 'string', default: '127.0.0.1' },
      device: { type: 'string', default: 'cpu' },
      'kv-blocks': { type: 'string' },
      'kv-memory-fraction': { type: 'string' },
      'block-size': { type: 'string', default: '16' },
      threads: { type: 'string' },
      ...INTERNAL_TLS_FLAGS,
      ...LOG_FLAGS,
      help: { type: 'boolean' },
    },
    USAGE,
    { env: process.env },
  );
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  const device = deviceFlag(flags.device);
  const tp = intFlag(flags.tp, 'tp');
  const pp = intFlag(flags.pp, 'pp');
  const kvCache = kvCacheFromFlags(flags);
  const settings = serveSettingsFromFlags(flags);
  const logSettings = logSettingsFromFlags(flags);
  const internalTls = internalTlsFromFlags(flags);
  const log = loggerFor(logSettings, {});
  logInternalTls(log, internalTls);
  if (flags.synthetic !== undefined && flags.model !== undefined)
    throw new UsageError('give either --model or --synthetic, not both');
  if (flags.layers !== undefined && flags.synthetic === undefined)
    throw new UsageError('--layers applies to --synthetic');
  const synthetic =
    flags.synthetic === undefined
      ? undefined
      : {
          preset: flags.synthetic,
          seed: 1,
          ...(flags.layers === undefined ? {} : { layers: intFlag(flags.layers, 'layers') }),
        };
  // Synthetic weights take the generated model's tokenizer (and its directory as modelDir).
  const modelDir = flags.model ?? (await ensureGeneratedModel());
  const config = synthetic
    ? presetConfig(synthetic.preset, { layers: synthetic.layers })
    : (await openCheckpoint(modelDir)).config;
  const label = synthetic
    ? `synthetic ${synthetic.preset}${synthetic.layers ? ` (${synthetic.layers} layers)` : ''} weights`
    : modelDir;
  const host = flags.host ?? '127.0.0.1';
  const loading = await openLoadingPort(host, settings);
  log.info(`up: starting ${tp * pp} worker processes (tp=${tp}, pp=${pp}) for ${label}`);
  log.info(`HTTP port ${loading.port} answers 503 until the model is loaded`);
  // The port must not outlive a cluster that failed to start (it would keep the process alive).
  const cluster = await startLocalCluster({
    modelDir,
    config,
    tp,
    pp,
    device: device as DeviceKind,
    kvCache,
    synthetic,
    threadsPerWorker: flags.threads === undefined ? undefined : intFlag(flags.threads, 'threads'),
    workerMetrics: true,
    workerArgs: logArgs(logSettings),
    internalTls,
    servedModelName: settings.servedModelName,
    stepTimeoutMs: settings.stepTimeoutMs,
    collectiveTimeoutMs: settings.collectiveTimeoutMs,
    log: (line) => log.info(line),
  }).catch(async (err) => {
    await loading.close();
    throw err;
  });
  await serveUntilSignal({
    modelDir,
    label,
    config,
    cluster,
    host,
    settings,
    log,
    loading,
  });
}
