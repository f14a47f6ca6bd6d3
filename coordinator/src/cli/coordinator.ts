// `medcluster coordinator`: cluster mode. Waits for workers over NATS, assigns shards, serves.

import { openCheckpoint } from '@medcluster/worker';
import { connect } from 'nats';
import { startNatsCluster } from '../cluster/nats-cluster.js';
import { CONFIG_USAGE, intFlag, parseFlags, requiredString } from './args.js';
import { KV_USAGE, kvCacheFromFlags } from './kv-flags.js';
import { LOG_FLAGS, LOG_USAGE, loggerFor, logSettingsFromFlags } from './log-flags.js';
import { openLoadingPort, serveUntilSignal } from './serve.js';
import { SERVE_FLAGS, SERVE_USAGE, serveSettingsFromFlags } from './serve-flags.js';

const USAGE = `usage: medcluster coordinator --nats URL --model DIR [--cluster NAME] [--tp N] [--pp N]
         [--host 0.0.0.0] [--kv-blocks N | --kv-memory-fraction F] [--block-size 16]
         [--worker-timeout-s 300] [--heartbeat-timeout-s 5] [serving flags]

  --heartbeat-timeout-s 5  a worker silent this long is lost (the cluster is degraded until it
                           is back; NATS outages do not count)

${SERVE_USAGE}

${LOG_USAGE}

${KV_USAGE}

${CONFIG_USAGE}`;

export async function coordinatorCommand(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      ...SERVE_FLAGS,
      nats: { type: 'string' },
      cluster: { type: 'string', default: 'medcluster' },
      model: { type: 'string' },
      tp: { type: 'string', default: '1' },
      pp: { type: 'string', default: '1' },
      host: { type: 'string', default: '0.0.0.0' },
      'kv-blocks': { type: 'string' },
      'kv-memory-fraction': { type: 'string' },
      'block-size': { type: 'string', default: '16' },
      'worker-timeout-s': { type: 'string', default: '300' },
      'heartbeat-timeout-s': { type: 'string', default: '5' },
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
  const modelDir = requiredString(flags.model, 'model');
  const tp = intFlag(flags.tp, 'tp');
  const pp = intFlag(flags.pp, 'pp');
  // Without --kv-blocks or --kv-memory-fraction each worker's device picks (known once it announces).
  const kvCache = kvCacheFromFlags(flags);
  const settings = serveSettingsFromFlags(flags);
  const log = loggerFor(logSettingsFromFlags(flags), {});
  const { config } = await openCheckpoint(modelDir);
  const host = flags.host ?? '0.0.0.0';
  const loading = await openLoadingPort(host, settings);
  log.info(`HTTP port ${loading.port} answers 503 until every worker is ready`);
  // Reconnects for ever: serving needs no NATS, and membership resynchronizes once it is back.
  const nc = await connect({
    servers: requiredString(flags.nats, 'nats'),
    name: 'medcluster-coordinator',
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
  });
  try {
    const cluster = await startNatsCluster({
      nc,
      cluster: flags.cluster ?? 'medcluster',
      modelDir,
      config,
      tp,
      pp,
      kvCache,
      workerTimeoutMs: intFlag(flags['worker-timeout-s'], 'worker-timeout-s') * 1000,
      heartbeatTimeoutMs: intFlag(flags['heartbeat-timeout-s'], 'heartbeat-timeout-s') * 1000,
      stepTimeoutMs: settings.stepTimeoutMs,
      collectiveTimeoutMs: settings.collectiveTimeoutMs,
      servedModelName: settings.servedModelName,
      log: (line) => log.info(line),
    });
    await serveUntilSignal({ modelDir, config, cluster, host, settings, log, loading });
  } catch (err) {
    await loading.close();
    throw err;
  } finally {
    await nc.drain();
  }
}
