// Real processes of the medcluster CLI for integration tests: workers, a local cluster, and
// one-shot commands. Every process started here is killed by stopAll().

import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '../../../coordinator/bin/medcluster.js');
export const REPO = resolve(dirname(CLI), '../..');

const started = new Set<ChildProcess>();

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `medcluster ...args` to completion. */
export function runCli(args: string[], timeoutMs = 120_000, env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolvePromise) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { timeout: timeoutMs, maxBuffer: 64 << 20, env: { ...process.env, ...env } },
      (err, stdout, stderr) => {
        const code =
          err && typeof (err as NodeJS.ErrnoException).code === 'number'
            ? (err as unknown as { code: number }).code
            : err
              ? 1
              : 0;
        resolvePromise({ code, stdout, stderr });
      },
    );
  });
}

/**
 * Starts a long-running `medcluster ...args`; its stderr and stdout are kept (for error
 * messages, and for tests of what a process writes). `env` is added to this process's environment.
 */
export function startCli(
  args: string[],
  options: { env?: Record<string, string> } = {},
): { child: ChildProcess; stderr: () => string; stdout: () => string } {
  const child = spawn(process.execPath, [CLI, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: join(REPO),
    ...(options.env ? { env: { ...process.env, ...options.env } } : {}),
  });
  started.add(child);
  child.on('exit', () => started.delete(child));
  let err = '';
  let out = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  return { child, stderr: () => err, stdout: () => out };
}

/** Resolves when a line of the child's stderr matches; rejects if it exits first or times out. */
export function waitForStderr(
  child: ChildProcess,
  pattern: RegExp,
  timeoutMs = 60_000,
): Promise<RegExpMatchArray> {
  return new Promise((resolvePromise, reject) => {
    const lines = createInterface({ input: child.stderr as NodeJS.ReadableStream });
    // The last lines seen, so a failure says what the process printed.
    const tail: string[] = [];
    const said = () => (tail.length ? `; its last lines:\n${tail.join('\n')}` : '');
    const timer = setTimeout(
      () => reject(new Error(`no stderr line matched ${pattern} in ${timeoutMs} ms${said()}`)),
      timeoutMs,
    );
    lines.on('line', (line) => {
      tail.push(line);
      if (tail.length > 20) tail.shift();
      const m = pattern.exec(line);
      if (m) {
        clearTimeout(timer);
        resolvePromise(m);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`process exited with ${code} before printing ${pattern}${said()}`));
    });
  });
}

/** A long-running CLI process, as startCli returns it. */
export type CliProcess = ReturnType<typeof startCli>;

export interface UpOptions {
  /** Added to this process's environment, as startCli's `env`. */
  env?: Record<string, string>;
  /**
   * --threads for each worker (default 1: the tests share a few cores); null gives no --threads,
   * so up picks.
   */
  threads?: number | null;
  /**
   * The public ports speak TLS (the caller passes --tls-cert and --tls-key): the HTTP port is
   * awaited on https and the gRPC port must say (TLS).
   */
  tls?: boolean;
  /** How long the model may take to load before both ports are named (default 90 s). */
  timeoutMs?: number;
}

export interface RunningUp {
  up: CliProcess;
  grpcPort: number;
  httpPort: number;
  /** `127.0.0.1:<grpcPort>`, for gRPC clients. */
  grpc: string;
  /** `http(s)://127.0.0.1:<httpPort>`, the HTTP APIs' base URL. */
  http: string;
}

/**
 * Starts `medcluster up --grpc-port 0 --http-port 0 --threads 1 ...args` and resolves once it
 * serves, with the ports it names. up binds port 0 itself and prints what it got, so there is
 * no race with other tests for a port chosen beforehand.
 */
export async function startUp(args: string[], options: UpOptions = {}): Promise<RunningUp> {
  const threads = options.threads === undefined ? 1 : options.threads;
  const up = startCli(
    [
      'up',
      '--grpc-port',
      '0',
      '--http-port',
      '0',
      ...(threads === null ? [] : ['--threads', String(threads)]),
      ...args,
    ],
    options.env ? { env: options.env } : {},
  );
  const timeoutMs = options.timeoutMs ?? 90_000;
  const scheme = options.tls ? 'https' : 'http';
  const httpLine = options.tls
    ? /HTTP APIs .* on https:\/\/127\.0\.0\.1:(\d+)/
    : /HTTP APIs .* on http:\/\/127\.0\.0\.1:(\d+)/;
  const grpcLine = options.tls
    ? /serving .* on 127\.0\.0\.1:(\d+) \(TLS\)/
    : /serving .* on 127\.0\.0\.1:(\d+)/;
  // Both waits start now: up prints the two lines one after the other, maybe in one chunk, and a
  // wait sees only the lines printed after it starts.
  const [[, http], [, grpc]] = await Promise.all([
    waitForStderr(up.child, httpLine, timeoutMs),
    waitForStderr(up.child, grpcLine, timeoutMs),
  ]);
  const grpcPort = Number(grpc);
  const httpPort = Number(http);
  return { up, grpcPort, httpPort, grpc: `127.0.0.1:${grpcPort}`, http: `${scheme}://127.0.0.1:${httpPort}` };
}

/** Sends SIGTERM to every process started here and waits for them. */
export async function stopAll(): Promise<void> {
  await Promise.all(
    [...started].map(
      (child) =>
        new Promise<void>((r) => {
          if (child.exitCode !== null || child.signalCode !== null) return r();
          child.once('exit', () => r());
          child.kill('SIGTERM');
          setTimeout(() => child.kill('SIGKILL'), 5000).unref();
        }),
    ),
  );
}
