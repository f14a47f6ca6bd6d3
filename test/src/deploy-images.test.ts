// deploy/docker, tested without a Docker engine: every path the Dockerfiles COPY exists and is
// not excluded by their ignore files, the final stages run as non-root; the commands the
// manifests give the containers are accepted by the real CLI; and the worker pod's entrypoint
// starts one worker per GPU with the right flags, exits when any of them exits, forwards
// SIGTERM, and its probe asks every process.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type K8sObject, kustomize } from './deploy/k8s.js';
import { DOCKER, K8S, REPO } from './deploy/paths.js';
import { tool } from './deploy/tools.js';

/**
 * Flags the manifests pass that the CLI does not have yet (issue #13: the coordinator's HTTP
 * server, with GET /health and /metrics on --http-port, is being written). While `--help` does
 * not list one, it is left out of the CLI check; once it does, it is checked like every other.
 */
const PENDING_FLAGS: Record<'coordinator' | 'worker', string[]> = {
  coordinator: ['--http-port'],
  worker: [],
};

const CLI = join(REPO, 'coordinator', 'bin', 'medcluster.js');
const ENTRYPOINT = join(DOCKER, 'worker-pod.sh');

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

// ---- Dockerfiles ------------------------------------------------------------------------------

interface Instruction {
  op: string;
  args: string[];
  stage: number;
}

function instructions(dockerfile: string): Instruction[] {
  const text = readFileSync(dockerfile, 'utf8').replace(/\\\n/g, ' ');
  let stage = -1;
  const out: Instruction[] = [];
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const [op, ...args] = trimmed.split(/\s+/);
    if (op.toUpperCase() === 'FROM') stage++;
    out.push({ op: op.toUpperCase(), args, stage });
  }
  return out;
}

/** Docker's .dockerignore rules: the last pattern that matches a path (or a parent) decides. */
function ignored(patterns: string[], path: string): boolean {
  const toRegex = (pattern: string) => {
    const p = pattern.replace(/^\/+|\/+$/g, '');
    let re = '';
    for (let i = 0; i < p.length; i++) {
      if (p[i] === '*' && p[i + 1] === '*') {
        const dir = p[i + 2] === '/';
        re += dir ? '(?:.*/)?' : '.*';
        i += dir ? 2 : 1;
      } else if (p[i] === '*') re += '[^/]*';
      else if (p[i] === '?') re += '[^/]';
      else re += p[i].replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
    return new RegExp(`^${re}$`);
  };
  const prefixes = path
    .replace(/\/+$/, '')
    .split('/')
    .map((_, i, parts) => parts.slice(0, i + 1).join('/'));
  let excluded = false;
  for (const raw of patterns) {
    const negated = raw.startsWith('!');
    const re = toRegex(negated ? raw.slice(1) : raw);
    if (prefixes.some((p) => re.test(p))) excluded = !negated;
  }
  return excluded;
}

const ignorePatterns = (dockerfile: string) =>
  readFileSync(`${dockerfile}.dockerignore`, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));

describe.each(['coordinator.Dockerfile', 'worker.Dockerfile'])('deploy/docker/%s', (file) => {
  const dockerfile = join(DOCKER, file);
  const steps = instructions(dockerfile);
  const patterns = ignorePatterns(dockerfile);

  test('every path it copies from the build context exists and is not ignored', () => {
    const copies = steps.filter(
      (s) => (s.op === 'COPY' || s.op === 'ADD') && !s.args.some((a) => a.startsWith('--from')),
    );
    expect(copies.length).toBeGreaterThan(5);
    for (const { args } of copies) {
      const sources = args.filter((a) => !a.startsWith('--')).slice(0, -1);
      for (const source of sources) {
        expect(
          existsSync(join(REPO, source)),
          `${file}: COPY ${source}: no such path in the repository`,
        ).toBe(true);
        expect(ignored(patterns, source), `${file}: COPY ${source} is excluded by ${file}.dockerignore`).toBe(
          false,
        );
      }
    }
  });

  test('its ignore file keeps host build output and node_modules out of the context', () => {
    for (const path of [
      'node_modules/typescript/package.json',
      'kernels/build/CMakeCache.txt',
      'kernels/build/Release/medcluster_kernels.node',
      'coordinator/dist/cli/main.js',
      'proto/generated/inference.ts',
      '.git/HEAD',
      '.models/tiny/config.json',
    ])
      expect(ignored(patterns, path), path).toBe(true);
    for (const path of [
      'kernels/native/binding.cc',
      'kernels/CMakeLists.txt',
      'proto/medcluster/v1/inference.proto',
    ])
      expect(ignored(patterns, path), path).toBe(false);
  });

  test('is multi-stage, and its final stage runs as a non-root user with an entrypoint', () => {
    const last = Math.max(...steps.map((s) => s.stage));
    expect(last).toBeGreaterThanOrEqual(1);
    const final = steps.filter((s) => s.stage === last);
    const user = final.filter((s) => s.op === 'USER').at(-1)?.args[0] ?? 'root';
    expect(user.split(':')[0]).not.toMatch(/^(0|root)$/);
    expect(final.some((s) => s.op === 'ENTRYPOINT')).toBe(true);
  });
});

test('the worker image builds the addon with the CUDA backend, and installs the pod entrypoint', () => {
  const text = readFileSync(join(DOCKER, 'worker.Dockerfile'), 'utf8');
  expect(text).toMatch(/^FROM nvidia\/cuda:\$\{CUDA_VERSION\}-devel-/m);
  expect(text).toMatch(/^FROM nvidia\/cuda:\$\{CUDA_VERSION\}-runtime-/m);
  expect(text).toContain('cudaCompiledIn()');
  expect(text).toMatch(/^COPY deploy\/docker\/worker-pod\.sh \/usr\/local\/bin\/medcluster-worker-pod$/m);
  expect(text).toMatch(/^ENTRYPOINT \["medcluster-worker-pod"\]$/m);
  // sm_80, sm_90a and compute_90 PTX come from kernels/CMakeLists.txt, which the image builds.
  expect(readFileSync(join(REPO, 'kernels', 'CMakeLists.txt'), 'utf8')).toContain(
    '"80-real;90a-real;90-virtual"',
  );
  expect(readFileSync(join(DOCKER, 'coordinator.Dockerfile'), 'utf8')).toContain('ENV MEDCLUSTER_CUDA=0');
});

// ---- The commands the manifests run ------------------------------------------------------------

describe('the manifests run commands the CLI accepts', () => {
  let objects: K8sObject[];
  beforeAll(() => {
    objects = kustomize(join(K8S, 'overlays', 'tp2-pp2'));
  });
  const config = () =>
    objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('medcluster-config-'))
      ?.data as Record<string, string>;

  /** Drops the pending flags that `--help` does not list yet; returns what is left and what was dropped. */
  function withoutPending(args: string[], help: string, pending: string[]) {
    const missing = pending.filter((f) => !help.includes(f));
    const kept: string[] = [];
    for (let i = 0; i < args.length; i++) {
      const flag = args[i].split('=')[0];
      if (missing.includes(flag)) {
        if (!args[i].includes('=')) i++; // and its value
        continue;
      }
      kept.push(args[i]);
    }
    return { kept, missing };
  }

  test('medcluster coordinator takes every flag of the coordinator container', () => {
    const help = cli(['coordinator', '--help']);
    expect(help.code, help.stderr).toBe(0);
    const deployment = objects.find(
      (o) => o.kind === 'Deployment' && o.metadata.name === 'medcluster-coordinator',
    );
    const c = deployment?.spec.template.spec.containers[0];
    expect(c.command).toEqual(['medcluster']);
    const args = (c.args as string[]).map((a) => a.replace(/\$\((\w+)\)/g, (_, v: string) => config()[v]));
    const { kept, missing } = withoutPending(args, help.stdout, PENDING_FLAGS.coordinator);
    expect(PENDING_FLAGS.coordinator).toEqual(expect.arrayContaining(missing));
    const r = cli([...kept, '--help']);
    expect(r.code, `medcluster ${kept.join(' ')}: ${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/^usage: medcluster coordinator/);
  });

  test('medcluster worker takes every flag the pod entrypoint passes', async () => {
    const help = cli(['worker', '--help']);
    expect(help.code, help.stderr).toBe(0);
    const workers = objects.find((o) => o.kind === 'StatefulSet' && o.metadata.name === 'medcluster-worker');
    // The container's args (TLS and NATS credential files) reach every worker process.
    const containerArgs = (workers?.spec.template.spec.containers[0].args ?? []) as string[];
    expect(containerArgs).toContain('--nats-user=worker');
    const pod = startEntrypoint(
      {
        ...config(),
        POD_NAME: 'medcluster-worker-1',
        POD_NAMESPACE: 'medcluster',
      },
      containerArgs,
    );
    await pod.waitForWorkers(2);
    await pod.stop();
    for (const args of Object.values(pod.args())) {
      expect(args[0]).toBe('worker');
      expect(args.slice(-containerArgs.length)).toEqual(containerArgs);
      const { kept, missing } = withoutPending(args, help.stdout, PENDING_FLAGS.worker);
      expect(PENDING_FLAGS.worker).toEqual(expect.arrayContaining(missing));
      const r = cli([...kept, '--help']);
      expect(r.code, `medcluster ${kept.join(' ')}: ${r.stderr}`).toBe(0);
    }
  });
});

// ---- The worker pod entrypoint -------------------------------------------------------------

const FAKE_MEDCLUSTER = `#!/usr/bin/env bash
# Stands in for medcluster: records its arguments, then runs until SIGTERM, or exits on cue.
id=''; prev=''
for a in "$@"; do [[ $prev == --id ]] && id=$a; prev=$a; done
printf '%s\\n' "$@" > "$FAKE_DIR/$id.args"
if [[ \${FAKE_IGNORE_TERM:-} == "$id" ]]; then
  trap 'echo ignored >> "$FAKE_DIR/$id.term"' TERM
else
  trap 'echo term > "$FAKE_DIR/$id.term"; exit 0' TERM
fi
if [[ \${FAKE_EXIT_ID:-} == "$id" ]]; then sleep 0.3; exit "\${FAKE_EXIT_CODE:-3}"; fi
while :; do sleep 0.05; done
`;

const scratch = mkdtempSync(join(tmpdir(), 'medcluster-worker-pod-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
let runs = 0;

interface Pod {
  child: ChildProcess;
  dir: string;
  exit: Promise<{ code: number | null; stderr: string }>;
  waitForWorkers(n: number): Promise<void>;
  args(): Record<string, string[]>;
  terminated(): string[];
  stop(): Promise<{ code: number | null; stderr: string }>;
}

function startEntrypoint(env: Record<string, string>, args: string[] = []): Pod {
  const dir = join(scratch, `run-${runs++}`);
  const bin = join(dir, 'bin');
  spawnSync('mkdir', ['-p', bin]);
  writeFileSync(join(bin, 'medcluster'), FAKE_MEDCLUSTER);
  chmodSync(join(bin, 'medcluster'), 0o755);
  const child = spawn(tool('bash'), [ENTRYPOINT, ...args], {
    env: { PATH: `${bin}:${process.env.PATH}`, FAKE_DIR: dir, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d) => {
    stderr += d;
  });
  const exit = new Promise<{ code: number | null; stderr: string }>((resolve) =>
    child.once('exit', (code) => resolve({ code, stderr })),
  );
  const files = (suffix: string) => readdirSync(dir).filter((f) => f.endsWith(suffix));
  return {
    child,
    dir,
    exit,
    async waitForWorkers(n) {
      for (let i = 0; i < 100 && files('.args').length < n; i++) await new Promise((r) => setTimeout(r, 50));
      expect(files('.args')).toHaveLength(n);
    },
    args: () =>
      Object.fromEntries(
        files('.args').map((f) => [
          f.replace(/\.args$/, ''),
          readFileSync(join(dir, f), 'utf8').trim().split('\n'),
        ]),
      ),
    terminated: () =>
      files('.term')
        .map((f) => f.replace(/\.term$/, ''))
        .sort(),
    async stop() {
      child.kill('SIGTERM');
      return exit;
    },
  };
}

describe('deploy/docker/worker-pod.sh', () => {
  const env = {
    MEDCLUSTER_TP: '2',
    MEDCLUSTER_NATS_URL: 'nats://nats:4222',
    MEDCLUSTER_CLUSTER: 'medcluster',
    POD_NAME: 'medcluster-worker-1',
    POD_NAMESPACE: 'prod',
    MEDCLUSTER_WORKER_SERVICE: 'medcluster-worker',
    MEDCLUSTER_CLUSTER_DOMAIN: 'cluster.local',
    MEDCLUSTER_WORKER_MEMORY_GB: '75',
    MEDCLUSTER_LOG_FORMAT: 'json',
    MEDCLUSTER_LOG_LEVEL: 'info',
  };

  test('starts one worker per GPU: its id, ordinal, ports and DNS name, plus extra flags', async () => {
    const pod = startEntrypoint(env, ['--threads', '4']);
    await pod.waitForWorkers(2);
    const { code } = await pod.stop();
    expect(code).toBe(0);
    const host = 'medcluster-worker-1.medcluster-worker.prod.svc.cluster.local';
    const expected = (i: number) => [
      'worker',
      '--nats',
      'nats://nats:4222',
      '--cluster',
      'medcluster',
      '--id',
      `medcluster-worker-1-gpu${i}`,
      '--device',
      'cuda',
      '--ordinal',
      String(i),
      '--listen',
      `0.0.0.0:${7000 + i}`,
      '--advertise',
      `${host}:${7000 + i}`,
      '--metrics-port',
      String(9400 + i),
      '--memory-gb',
      '75',
      '--log-format',
      'json',
      '--log-level',
      'info',
      '--threads',
      '4',
    ];
    expect(pod.args()).toEqual({
      'medcluster-worker-1-gpu0': expected(0),
      'medcluster-worker-1-gpu1': expected(1),
    });
  });

  test('SIGTERM reaches every worker, and the pod exits once they have left', async () => {
    const pod = startEntrypoint({ ...env, MEDCLUSTER_TP: '3' });
    await pod.waitForWorkers(3);
    const { code, stderr } = await pod.stop();
    expect(code).toBe(0);
    expect(stderr).toContain('SIGTERM: stopping 3 worker(s)');
    expect(pod.terminated()).toEqual([
      'medcluster-worker-1-gpu0',
      'medcluster-worker-1-gpu1',
      'medcluster-worker-1-gpu2',
    ]);
  });

  test('when one worker exits, the others are stopped and the pod exits with its status', async () => {
    const pod = startEntrypoint({
      ...env,
      MEDCLUSTER_TP: '3',
      FAKE_EXIT_ID: 'medcluster-worker-1-gpu1',
      FAKE_EXIT_CODE: '7',
    });
    const { code, stderr } = await pod.exit;
    expect(code).toBe(7);
    expect(stderr).toContain('medcluster-worker-1-gpu1 exited with status 7; stopping the others');
    expect(pod.terminated()).toEqual(['medcluster-worker-1-gpu0', 'medcluster-worker-1-gpu2']);
  });

  test('a worker that exits cleanly still ends the pod (status 1), and one that ignores SIGTERM is killed', async () => {
    const pod = startEntrypoint({
      ...env,
      FAKE_EXIT_ID: 'medcluster-worker-1-gpu0',
      FAKE_EXIT_CODE: '0',
      FAKE_IGNORE_TERM: 'medcluster-worker-1-gpu1',
      MEDCLUSTER_STOP_TIMEOUT_S: '1',
    });
    const started = Date.now();
    const { code, stderr } = await pod.exit;
    expect(code).toBe(1);
    expect(stderr).toContain('medcluster-worker-1-gpu1 did not stop within 1s: SIGKILL');
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  test('refuses to start without what it needs, saying what is missing', async () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ ...env, MEDCLUSTER_TP: '0' }, /MEDCLUSTER_TP must be a positive integer/],
      [{ ...env, MEDCLUSTER_TP: 'two' }, /MEDCLUSTER_TP must be a positive integer/],
      [{ ...env, MEDCLUSTER_NATS_URL: '' }, /MEDCLUSTER_NATS_URL is not set/],
      [{ ...env, POD_NAME: '' }, /POD_NAME is not set/],
      [{ ...env, POD_NAMESPACE: '' }, /set MEDCLUSTER_WORKER_SERVICE and POD_NAMESPACE/],
      [{ ...env, MEDCLUSTER_BIN: 'no-such-medcluster' }, /'no-such-medcluster' is not on PATH/],
    ];
    for (const [e, message] of cases) {
      const { code, stderr } = await startEntrypoint(e).exit;
      expect(code, stderr).toBe(2);
      expect(stderr).toMatch(message);
    }
  });

  describe('probe', () => {
    const servers: Server[] = [];
    const status: Record<string, number> = {};
    let base = 0;
    beforeAll(async () => {
      // Two stand-in worker metrics servers on consecutive ports (9400+i in a pod).
      for (let attempt = 0; attempt < 20 && servers.length < 2; attempt++) {
        for (const s of servers.splice(0)) s.close();
        base = 20_000 + Math.floor(Math.random() * 40_000);
        for (const i of [0, 1]) {
          const server = createServer((req, res) => res.writeHead(status[`${i}${req.url}`] ?? 404).end());
          const ok = await new Promise<boolean>((resolve) => {
            server.once('error', () => resolve(false));
            server.listen(base + i, '127.0.0.1', () => resolve(true));
          });
          if (ok) servers.push(server);
          else break;
        }
      }
      expect(servers).toHaveLength(2);
    });
    afterAll(() => {
      for (const s of servers) s.close();
    });

    // Asynchronous: the stand-in servers live in this process and must answer meanwhile.
    const probe = (what: string, tp = '2') =>
      new Promise<{ code: number | null; stdout: string }>((resolve) => {
        const env = { MEDCLUSTER_TP: tp, MEDCLUSTER_METRICS_PORT_BASE: String(base), PATH: process.env.PATH };
        const child = spawn(tool('bash'), [ENTRYPOINT, 'probe', what], {
          env,
          stdio: ['ignore', 'pipe', 'ignore'],
        });
        let stdout = '';
        child.stdout.on('data', (d) => {
          stdout += d;
        });
        child.once('exit', (code) => resolve({ code, stdout }));
      });

    test('ready only when every process answers 200 to /ready; alive when every one answers /health', async () => {
      Object.assign(status, { '0/health': 200, '1/health': 200, '0/ready': 200, '1/ready': 503 });
      expect(await probe('health')).toEqual({
        code: 0,
        stdout: 'all 2 worker processes answer 200 to GET /health\n',
      });
      const loading = await probe('ready');
      expect(loading.code).toBe(1);
      expect(loading.stdout).toBe(
        `worker process 1 (port ${base + 1}): GET /ready: HTTP/1.1 503 Service Unavailable\n`,
      );
      status['1/ready'] = 200;
      expect((await probe('ready')).code).toBe(0);
    });

    test('a process that does not answer fails the probe, and so does an unknown probe', async () => {
      const three = await probe('health', '3'); // nothing listens on base + 2
      expect(three.code).toBe(1);
      expect(three.stdout).toBe(`worker process 2 (port ${base + 2}): GET /health: no answer\n`);
      expect((await probe('startup')).code).toBe(2);
    });
  });
});
