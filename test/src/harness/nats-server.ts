// Starts a real nats-server binary on a free port for tests, restarts it on the same port (an
// outage that clients reconnect through, JetStream's store kept), and stops it. nats.ts chooses
// between this and a container.
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as connectTcp } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { freePort } from '@medcluster/worker';

/** nats-server is missing, failed to start, or did not accept connections in time. */
export class NatsServerError extends Error {
  override name = 'NatsServerError';
}

export interface NatsServerOptions {
  /** Enable JetStream (with a temporary store directory removed on stop). */
  jetstream?: boolean;
  /** Path of the nats-server binary; default: $NATS_SERVER_BIN, then PATH, /usr/sbin, /usr/bin, /usr/local/bin. */
  binary?: string;
  /** How long to wait for the server to accept connections, in ms (default 10000). */
  startTimeoutMs?: number;
  /** Extra command-line arguments. */
  args?: string[];
  /** Clients must authenticate: as one of these users, or with this token (an authorization block). */
  authorization?: NatsAuthorization;
  /** Clients must connect over TLS (a tls block): the server's PEM certificate and key, and with
   * `verify` also a client certificate issued by `ca`. */
  tls?: NatsServerTls;
  /** Added to the server's environment (a config file may refer to $VARIABLES). */
  env?: Record<string, string>;
}

export type NatsAuthorization = { users: { user: string; password: string }[] } | { token: string };

export interface NatsServerTls {
  cert: string;
  key: string;
  ca?: string;
  verify?: boolean;
}

export interface NatsServerHandle {
  /** nats://127.0.0.1:PORT */
  url: string;
  port: number;
  /** How it runs: a local binary, or a container started through Testcontainers. */
  kind: 'binary' | 'container';
  /**
   * Stops the server, keeps it down for `downMs` (default 0), and starts it again on the same
   * port with the same JetStream store: what clients see of a NATS restart. Resolves once it
   * accepts connections again.
   */
  restart(downMs?: number): Promise<void>;
  /** Stops the server (SIGTERM, then SIGKILL after 5 s) and removes its temporary files. */
  stop(): Promise<void>;
  /** The server's last log lines (up to 4000 characters). */
  output(): string;
}

/** A config file with the authorization block (values JSON-quoted: NATS config reads JSON strings). */
function authorizationConfig(auth: NatsAuthorization): string {
  const q = JSON.stringify;
  if ('token' in auth) return `authorization { token: ${q(auth.token)} }\n`;
  const users = auth.users.map((u) => `    { user: ${q(u.user)}, password: ${q(u.password)} }`).join('\n');
  return `authorization {\n  users: [\n${users}\n  ]\n}\n`;
}

/** A tls block: file paths, JSON-quoted like the values above. */
function tlsConfig(tls: NatsServerTls): string {
  const q = JSON.stringify;
  const lines = [`  cert_file: ${q(tls.cert)}`, `  key_file: ${q(tls.key)}`];
  if (tls.ca !== undefined) lines.push(`  ca_file: ${q(tls.ca)}`);
  if (tls.verify) lines.push('  verify: true');
  return `tls {\n${lines.join('\n')}\n}\n`;
}

const CANDIDATE_DIRS = ['/usr/sbin', '/usr/bin', '/usr/local/bin', '/usr/local/sbin'];
const MAX_ATTEMPTS = 5;

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Directories searched for nats-server: PATH, then the usual system locations. */
export function defaultSearchDirs(): string[] {
  return [...(process.env.PATH ?? '').split(delimiter).filter((d) => d !== ''), ...CANDIDATE_DIRS];
}

/**
 * The nats-server binary to run: explicit, else $NATS_SERVER_BIN, else the first in searchDirs.
 * Throws NatsServerError saying how to install it when missing.
 */
export function findNatsServer(explicit?: string, searchDirs: string[] = defaultSearchDirs()): string {
  const fromEnv = process.env.NATS_SERVER_BIN;
  const candidates = [
    ...(explicit !== undefined ? [explicit] : []),
    ...(fromEnv !== undefined && fromEnv !== '' ? [fromEnv] : []),
    ...searchDirs.map((d) => join(d, 'nats-server')),
  ];
  const found = candidates.find(isExecutable);
  if (found === undefined) {
    throw new NatsServerError(
      `nats-server not found (looked at ${candidates.join(', ')}). ` +
        'Install it: `apt-get install -y nats-server` (Debian/Ubuntu) or download it from ' +
        'https://github.com/nats-io/nats-server/releases, or set NATS_SERVER_BIN.',
    );
  }
  return found;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connectTcp({ host: '127.0.0.1', port });
    let buffered = '';
    const finish = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => finish(false));
    socket.on('error', () => finish(false));
    // A NATS server greets every client with an INFO line.
    socket.on('data', (chunk) => {
      buffered += chunk.toString('utf8');
      if (buffered.includes('\r\n')) finish(buffered.startsWith('INFO '));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Attempt {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

function launch(binary: string, args: string[], env?: Record<string, string>): Attempt {
  const child = spawn(binary, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(env ? { env: { ...process.env, ...env } } : {}),
  });
  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-4000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', (err) => {
      keep(Buffer.from(String(err)));
      resolve(-1);
    });
  });
  return { child, output: () => output, exited };
}

async function stopChild(attempt: Attempt): Promise<void> {
  if (attempt.child.exitCode !== null || attempt.child.signalCode !== null) return;
  attempt.child.kill('SIGTERM');
  const killed = await Promise.race([attempt.exited.then(() => true), sleep(5000).then(() => false)]);
  if (!killed) {
    attempt.child.kill('SIGKILL');
    await attempt.exited;
  }
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** One run of the binary on `port`; resolves once it accepts connections (its output if it exits). */
async function runOn(
  binary: string,
  port: number,
  args: { before: string[]; after: string[] },
  timeoutMs: number,
  env?: Record<string, string>,
): Promise<{ run: Attempt } | { exited: string } | { timedOut: string }> {
  const run = launch(binary, [...args.before, '-a', '127.0.0.1', '-p', String(port), ...args.after], env);
  running.add(run.child);
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void run.exited.then(() => {
    exited = true;
    running.delete(run.child);
  });
  while (!exited && Date.now() < deadline) {
    // Make sure the server answering is ours, not another process that took the port.
    if ((await canConnect(port)) && !exited) return { run };
    await sleep(25);
  }
  const output = run.output();
  await stopChild(run);
  running.delete(run.child);
  return exited ? { exited: output } : { timedOut: output };
}

/** Starts nats-server on a free 127.0.0.1 port; retries with another port on a collision. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServerHandle> {
  const binary = findNatsServer(options.binary);
  const timeoutMs = options.startTimeoutMs ?? 10_000;
  let lastOutput = '';
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const port = await freePort();
    const storeDir = options.jetstream === true ? mkdtempSync(join(tmpdir(), 'nats-js-')) : undefined;
    const blocks = [
      ...(options.authorization ? [authorizationConfig(options.authorization)] : []),
      ...(options.tls ? [tlsConfig(options.tls)] : []),
    ];
    const configDir = blocks.length > 0 ? mkdtempSync(join(tmpdir(), 'nats-conf-')) : undefined;
    const config = configDir ? join(configDir, 'nats.conf') : undefined;
    if (config) writeFileSync(config, blocks.join(''), { mode: 0o600 });
    const args = {
      before: config ? ['-c', config] : [],
      after: [...(storeDir ? ['-js', '-sd', storeDir] : []), ...(options.args ?? [])],
    };
    const removeFiles = () => {
      if (storeDir !== undefined) rmSync(storeDir, { recursive: true, force: true });
      if (configDir !== undefined) rmSync(configDir, { recursive: true, force: true });
    };
    const started = await runOn(binary, port, args, timeoutMs, options.env);
    if ('run' in started) {
      let current: Attempt | undefined = started.run;
      let last = '';
      return {
        url: `nats://127.0.0.1:${port}`,
        port,
        kind: 'binary',
        async restart(downMs = 0) {
          if (current) {
            await stopChild(current);
            last = current.output();
          }
          current = undefined;
          await sleep(downMs);
          const again = await runOn(binary, port, args, timeoutMs, options.env);
          if (!('run' in again)) {
            throw new NatsServerError(
              `nats-server (${binary}) did not come back on port ${port}:\n${'exited' in again ? again.exited : again.timedOut}`,
            );
          }
          current = again.run;
        },
        async stop() {
          if (current) {
            await stopChild(current);
            last = current.output();
          }
          current = undefined;
          removeFiles();
        },
        output: () => current?.output() ?? last,
      };
    }
    removeFiles();
    if ('timedOut' in started) {
      throw new NatsServerError(
        `nats-server (${binary}) did not accept connections on port ${port} within ${timeoutMs} ms:\n${started.timedOut}`,
      );
    }
    lastOutput = started.exited;
    if (!/address already in use|bind/i.test(lastOutput)) break;
  }
  throw new NatsServerError(`nats-server (${binary}) failed to start:\n${lastOutput}`);
}
