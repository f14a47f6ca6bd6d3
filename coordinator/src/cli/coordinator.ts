// `medcluster coordinator`: cluster mode. Waits for workers over NATS, assigns shards, serves.

import { connectNats, describeNatsConnection, openCheckpoint } from '@medcluster/worker';
import { startNatsCluster } from '../cluster/nats-cluster.js';
import { CONFIG_USAGE, intFlag, parseFlags, requiredString } from './args.js';
import {
  INTERNAL_TLS_FLAGS,
  INTERNAL_TLS_USAGE,
  internalTlsFromFlags,
  logInternalTls,
} from './internal-tls-flags.js';
import { KV_USAGE, kvCacheFromFlags } from './kv-flags.js';
import { LOG_FLAGS, LOG_USAGE, loggerFor, logSettingsFromFlags } from './log-flags.js';
import { NATS_FLAGS, NATS_USAGE, natsTargetFromFlags } from './nats-flags.js';
import { openLoadingPort, serveUntilSignal } from './serve.js';
import { SERVE_FLAGS, SERVE_USAGE, serveSettingsFromFlags } from './serve-flags.js';

const USAGE = `usage: medcluster coordinator --nats URL --model DIR [--cluster NAME] [--tp N] [--pp N]
         [--host 0.0.0.0] [--kv-blocks N | --kv-memory-fraction F] [--block-size 16]
         [--worker-timeout-s 300] [--heartbeat-timeout-s 5] [serving flags] [NATS credentials]
         [internal TLS]

  --heartbeat-timeout-s 5  a worker silent this long is lost (the cluster is degraded until it
                           is back; NATS outages do not count)

${SERVE_USAGE}

${NATS_USAGE}

${INTERNAL_TLS_USAGE}

${LOG_USAGE}

${KV_USAGE}

${CONFIG_USAGE}`;

export async function coordinatorCommand(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      ...SERVE_FLAGS,
      ...NATS_FLAGS,
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
  const modelDir = requiredString(flags.model, 'model');
  const tp = intFlag(flags.tp, 'tp');
  const pp = intFlag(flags.pp, 'pp');
  // Without --kv-blocks or --kv-memory-fraction each worker's device picks (known once it announces).
  const kvCache = kvCacheFromFlags(flags);
  const settings = serveSettingsFromFlags(flags);
  requiredString(flags.nats, 'nats');
  const internalTls = internalTlsFromFlags(flags);
  const nats = natsTargetFromFlags(flags, internalTls);
  const log = loggerFor(logSettingsFromFlags(flags), {});
  const { config } = await openCheckpoint(modelDir);
  const host = flags.host ?? '0.0.0.0';
  const loading = await openLoadingPort(host, settings);
  log.info(`HTTP port ${loading.port} answers 503 until every worker is ready`);
  logInternalTls(log, internalTls);
  // connectNats reconnects for ever: serving needs no NATS, and membership resynchronizes once
  // it is back.
  const target = nats as NonNullable<typeof nats>;
  const nc = await connectNats(target, 'medcluster-coordinator').catch(async (err) => {
    await loading.close();
    throw err;
  });
  log.info(`connected to ${describeNatsConnection(target)}`);
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
      internalTls,
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
