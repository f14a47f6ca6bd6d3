// `medcluster worker`: one worker process for one device. With --nats it announces itself
// and waits for the coordinator's assignment; with --assignment (how `medcluster up` starts
// workers) it loads that at once. Lifecycle events go to stdout as JSON lines.

import { hostname } from 'node:os';
import { controlCodecs } from '@medcluster/proto';
import { startWorker } from '@medcluster/worker';
import { CONFIG_USAGE, deviceFlag, intFlag, parseFlags, UsageError } from './args.js';
import { INTERNAL_TLS_FLAGS, INTERNAL_TLS_USAGE, internalTlsFromFlags } from './internal-tls-flags.js';
import { LOG_FLAGS, LOG_USAGE, loggerFor, logSettingsFromFlags } from './log-flags.js';
import { NATS_FLAGS, NATS_USAGE, natsTargetFromFlags } from './nats-flags.js';

const USAGE = `usage: medcluster worker (--nats URL [--cluster NAME] | --assignment JSON) [--id ID]
         [--listen HOST:PORT] [--advertise HOST:PORT] [--device cpu|cuda] [--ordinal N] [--threads N]
         [--memory-gb N] [--metrics-port N] [--exit-with-stdin] [NATS credentials] [internal TLS]

  --metrics-port N   serve /metrics (Prometheus), /health (alive) and /ready (shard loaded)
                     on the listen host (0 picks a free port)
  --exit-with-stdin  leave when stdin closes: \`medcluster up\` holds the other end, so a launcher
                     that dies, even by SIGKILL, leaves no worker behind

${NATS_USAGE}

${INTERNAL_TLS_USAGE}

${LOG_USAGE}

${CONFIG_USAGE}`;

export async function workerCommand(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      id: { type: 'string' },
      listen: { type: 'string', default: '0.0.0.0:0' },
      advertise: { type: 'string' },
      device: { type: 'string', default: 'cpu' },
      ordinal: { type: 'string' },
      threads: { type: 'string' },
      'memory-gb': { type: 'string' },
      'metrics-port': { type: 'string' },
      ...NATS_FLAGS,
      cluster: { type: 'string', default: 'medcluster' },
      assignment: { type: 'string' },
      'exit-with-stdin': { type: 'boolean' },
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
  if (!flags.nats === !flags.assignment)
    throw new UsageError(`give exactly one of --nats and --assignment\n\n${USAGE}`);
  const assignment = flags.assignment
    ? controlCodecs.assignment.decode(new TextEncoder().encode(flags.assignment))
    : undefined;
  const internalTls = internalTlsFromFlags(flags);
  const nats = natsTargetFromFlags(flags, internalTls);
  const workerId = flags.id ?? `${hostname().replace(/[^A-Za-z0-9_-]/g, '-')}-${process.pid}`;
  const log = loggerFor(logSettingsFromFlags(flags), { component: 'worker', worker: workerId });
  if (flags['exit-with-stdin']) {
    // The pipe's write end closes with the launcher, however it ends. SIGTERM takes the one way
    // out: a loading worker ends at once, a serving one stops as on any SIGTERM.
    process.stdin.once('end', () => {
      log.warn('stdin closed: the launcher is gone, leaving');
      process.kill(process.pid, 'SIGTERM');
    });
    process.stdin.resume();
    // Reading stdin must not keep the process alive once the worker has stopped (on SIGTERM it
    // exits when its servers close, while up still holds the pipe open and waits for that).
    (process.stdin as unknown as { unref?: () => void }).unref?.();
  }
  const worker = await startWorker({
    log,
    workerId,
    listen: flags.listen ?? '0.0.0.0:0',
    advertise: flags.advertise,
    device,
    ordinal: flags.ordinal === undefined ? undefined : intFlag(flags.ordinal, 'ordinal'),
    threads: flags.threads === undefined ? undefined : intFlag(flags.threads, 'threads'),
    memoryBytes: flags['memory-gb'] === undefined ? undefined : Number(flags['memory-gb']) * 2 ** 30,
    metricsPort:
      flags['metrics-port'] === undefined ? undefined : intFlag(flags['metrics-port'], 'metrics-port'),
    nats: nats
      ? { url: nats.servers, auth: nats.auth, tls: nats.tls, cluster: flags.cluster ?? 'medcluster' }
      : undefined,
    assignment,
    internalTls,
    onEvent: (event) => process.stdout.write(`${JSON.stringify(event)}\n`),
  });
  log.info(`serving on ${worker.address}`, {
    ...(worker.metricsAddress ? { metrics: `http://${worker.metricsAddress}/metrics` } : {}),
  });
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info(`${signal}, leaving`);
      worker.stop(signal).finally(resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    // No step can run on a lost device in this process; a new one (the launcher restarts it, as
    // Kubernetes restarts the pod) gets a working device.
    void worker.node.deviceLost.then((reason) => {
      log.error('leaving so that a new process takes the device');
      process.exitCode = 1;
      worker.stop(reason).finally(resolve);
    });
  });
}
