// NATS for tests, started the best way this machine offers: a container through Testcontainers
// (@testcontainers/nats) where a Docker engine answers, otherwise the local nats-server binary
// on a free port. Either way the handle is the same (url, restart, stop), so a test that restarts
// NATS does it through one interface. The choice, and why, is logged once per test process.
// MEDCLUSTER_TEST_NATS=container|binary forces one.

import { freePort } from '@medcluster/worker';
import {
  NatsServerError,
  type NatsServerHandle,
  type NatsServerOptions,
  startNatsServer,
} from './nats-server.js';

/** The NATS image the container runs (JetStream with a store that survives a restart). */
export const NATS_IMAGE = 'nats:2.10-alpine';

type Choice = { kind: 'container' | 'binary'; why: string };
let chosen: Promise<Choice> | undefined;

async function choose(): Promise<Choice> {
  const forced = process.env.MEDCLUSTER_TEST_NATS;
  if (forced === 'binary') return { kind: 'binary', why: 'MEDCLUSTER_TEST_NATS=binary' };
  try {
    const { getContainerRuntimeClient } = await import('testcontainers');
    const client = await getContainerRuntimeClient();
    return { kind: 'container', why: `a container runtime answers at ${client.info.containerRuntime.host}` };
  } catch (err) {
    if (forced === 'container')
      throw new NatsServerError(`MEDCLUSTER_TEST_NATS=container, but: ${(err as Error).message}`);
    return { kind: 'binary', why: `no container runtime (${(err as Error).message})` };
  }
}

/** NATS as a container or a binary (see the header); `jetstream` keeps its store across restarts. */
export async function startNats(options: NatsServerOptions = {}): Promise<NatsServerHandle> {
  const first = chosen === undefined;
  chosen ??= choose();
  const { kind, why } = await chosen;
  if (first)
    console.log(
      `test harness: NATS runs as a ${kind === 'container' ? `${NATS_IMAGE} container` : 'local nats-server binary'}: ${why}`,
    );
  return kind === 'container' ? startNatsContainer(options) : startNatsServer(options);
}

async function startNatsContainer(options: NatsServerOptions): Promise<NatsServerHandle> {
  const { NatsContainer } = await import('@testcontainers/nats');
  // A fixed host port, so that clients reconnect to the same address after a restart.
  const port = await freePort();
  const container = new NatsContainer(NATS_IMAGE).withExposedPorts({ container: 4222, host: port });
  // The module gives the server a user and password; the cluster under test connects without.
  const settings = container as unknown as { args?: Set<string>; values?: Map<string, string> };
  for (const key of ['--user', '--pass']) {
    settings.args?.delete(key);
    settings.values?.delete(key);
  }
  if (options.jetstream) container.withJetStream().withArg('--store_dir', '/data');
  for (const arg of options.args ?? []) container.withArg(arg);
  const started = await container.start();
  return {
    url: `nats://${started.getHost()}:${port}`,
    port,
    kind: 'container',
    // docker restart keeps the container's file system (the JetStream store) and its port
    // binding; the server is down for as long as the restart takes, whatever downMs says.
    async restart() {
      await started.restart({ timeout: 0 });
    },
    async stop() {
      await started.stop();
    },
    output: () => '(the container logs through Testcontainers: DEBUG=testcontainers:containers)',
  };
}
