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
