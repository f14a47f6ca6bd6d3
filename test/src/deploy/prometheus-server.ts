// A real Prometheus (Debian's `prometheus`) running the scrape configuration and alert rules the
// repository ships (deploy/prometheus), on targets a test names: the configuration is copied to
// a temporary directory with the file_sd target files written beside it, and only the global
// scrape and evaluation intervals shortened so a test does not wait 15 s per scrape.

import { type ChildProcess, spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { PROMETHEUS } from './paths.js';
import { tool } from './tools.js';

export interface PrometheusTargets {
  /** host:port of the coordinator's HTTP server (its /metrics). */
  coordinator: string[];
  /** host:port of each worker process's metrics server. */
  workers: string[];
}

export interface RunningPrometheus {
  /** http://127.0.0.1:PORT */
  url: string;
  /** The directory holding prometheus.yml, alerts.yml and targets/. */
  dir: string;
  /** GET /api/v1/<path>: the `data` of a successful answer. */
  api<T = unknown>(path: string): Promise<T>;
  stop(): Promise<void>;
}

/** Writes the shipped configuration and the targets into `dir`; returns the config file's path. */
export function writePrometheusConfig(dir: string, targets: PrometheusTargets, interval?: string): string {
  const config = parse(readFileSync(join(PROMETHEUS, 'prometheus.yml'), 'utf8')) as {
    global: Record<string, string>;
  };
  if (interval !== undefined) {
    config.global.scrape_interval = interval;
    config.global.evaluation_interval = interval;
  }
  const file = join(dir, 'prometheus.yml');
  writeFileSync(file, stringify(config));
  copyFileSync(join(PROMETHEUS, 'alerts.yml'), join(dir, 'alerts.yml'));
  mkdirSync(join(dir, 'targets'), { recursive: true });
  writeFileSync(join(dir, 'targets', 'coordinator.json'), JSON.stringify([{ targets: targets.coordinator }]));
  writeFileSync(join(dir, 'targets', 'workers.json'), JSON.stringify([{ targets: targets.workers }]));
  return file;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export async function startPrometheus(
  targets: PrometheusTargets,
  { interval = '1s', readyTimeoutMs = 30_000 } = {},
): Promise<RunningPrometheus> {
  const binary = tool('prometheus');
  const dir = mkdtempSync(join(tmpdir(), 'medcluster-prometheus-'));
  const config = writePrometheusConfig(dir, targets, interval);
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let log = '';
  const child: ChildProcess = spawn(
    binary,
    [
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stdout?.on('data', (d) => {
    log += d;
  });
  child.stderr?.on('data', (d) => {
    log += d;
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  };
  const api = async <T>(path: string): Promise<T> => {
    const res = await fetch(`${url}/api/v1/${path}`);
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`GET /api/v1/${path}: ${body.error}`);
    return body.data;
  };

  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`prometheus exited with ${child.exitCode}:\n${log}`);
    }
    const ready = await fetch(`${url}/-/ready`).then(
      (r) => r.ok,
      () => false,
    );
    if (ready) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`prometheus was not ready within ${readyTimeoutMs} ms:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url, dir, api, stop };
}
