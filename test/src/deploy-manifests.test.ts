// deploy/k8s: the base and both overlays render with `kubectl kustomize`, every object validates
// offline against its Kubernetes or CRD schema with no field its kind does not define, an object
// of an unknown kind fails, and the objects agree with each other and with the cluster layout
// (GPUs and processes per pod = tp, worker pods = pp, selectors, ports, volumes, grace periods,
// and access control: every key, certificate and password comes from a Secret mounted read-only,
// and NATS is reached over TLS through the internal CA). The rendered nats.conf runs in a real
// nats-server with certificates made like the README's.

import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { connectNats, InternalTls } from '@medcluster/worker';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parse, stringify } from 'yaml';
import {
  copyOfK8s,
  type K8sObject,
  kustomize,
  describe as name,
  podTemplates,
  schemaErrors,
  selects,
  unknownFieldErrors,
} from './deploy/k8s.js';
import { K8S } from './deploy/paths.js';
import { makeDevCa, startNatsServer } from './harness/index.js';

const LAYOUTS = {
  base: { dir: 'base', tp: 1, pp: 1 },
  'one-gpu': { dir: 'overlays/one-gpu', tp: 1, pp: 1 },
  'tp2-pp2': { dir: 'overlays/tp2-pp2', tp: 2, pp: 2 },
} as const;

type Container = {
  name: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: unknown }[];
  envFrom?: { configMapRef?: { name: string } }[];
  ports?: { name: string; containerPort: number }[];
  resources?: { limits?: Record<string, string | number> };
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
  securityContext?: Record<string, unknown>;
  // biome-ignore lint/suspicious/noExplicitAny: probes are walked as plain data
  [field: string]: any;
};

const only = (objects: K8sObject[], kind: string, objectName?: string): K8sObject => {
  const found = objects.filter(
    (o) => o.kind === kind && (objectName === undefined || o.metadata.name === objectName),
  );
  expect(found, `${kind} ${objectName ?? ''}`).toHaveLength(1);
  return found[0];
};
const container = (o: K8sObject, containerName: string): Container => {
  const c = (o.spec.template.spec.containers as Container[]).find((x) => x.name === containerName);
  if (!c) throw new Error(`${name(o)} has no container ${containerName}`);
  return c;
};
/** The generated ConfigMap named `prefix`-<hash>. */
const configMap = (objects: K8sObject[], prefix: string): K8sObject => {
  const found = objects.filter((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith(`${prefix}-`));
  expect(found, `ConfigMap ${prefix}`).toHaveLength(1);
  return found[0];
};
const configOf = (objects: K8sObject[]): Record<string, string> =>
  configMap(objects, 'medcluster-config').data as Record<string, string>;

/** The container's environment as the kubelet builds it: envFrom ConfigMaps, then env values. */
function environment(objects: K8sObject[], c: Container): Map<string, string | undefined> {
  const env = new Map<string, string | undefined>();
  for (const from of c.envFrom ?? []) {
    const ref = from.configMapRef?.name;
    const cm = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === ref);
    expect(cm, `envFrom ConfigMap ${ref} of container ${c.name}`).toBeDefined();
    for (const [k, v] of Object.entries((cm?.data ?? {}) as Record<string, string>)) env.set(k, v);
  }
  for (const e of c.env ?? []) env.set(e.name, e.value); // valueFrom: known name, value at run time
  return env;
}

/** `$(NAME)` references in `text`, expanded as the kubelet does from the variables defined so far. */
function expandReferences(text: string, env: Map<string, string | undefined>, where: string): string {
  return text.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (_, v: string) => {
    expect(env.has(v), `${where} refers to $(${v}), which its environment does not define`).toBe(true);
    return env.get(v) ?? '';
  });
}

/** `$(NAME)` references in a container's command and args, expanded from its environment. */
function expandArgs(objects: K8sObject[], c: Container): string[] {
  const env = environment(objects, c);
  return [...(c.command ?? []), ...(c.args ?? [])].map((arg) =>
    expandReferences(arg, env, `container ${c.name}`),
  );
}

/** A container's `env` at run time: Secret keys looked up in `secret`, values expanded in order. */
function kubernetesEnv(
  entries: NonNullable<Container['env']>,
  secret: Record<string, string>,
): Record<string, string> {
  const env = new Map<string, string | undefined>();
  for (const e of entries) {
    const key = (e.valueFrom as { secretKeyRef?: { key: string } } | undefined)?.secretKeyRef?.key;
    if (key !== undefined) {
      expect(secret[key], `Secret key ${key} of ${e.name}`).toBeDefined();
      env.set(e.name, secret[key]);
    } else env.set(e.name, expandReferences(e.value ?? '', env, e.name));
  }
  return Object.fromEntries([...env].map(([k, v]) => [k, v ?? '']));
}

describe.each(Object.entries(LAYOUTS))('deploy/k8s/%s', (_label, layout) => {
  let objects: K8sObject[];
  beforeAll(() => {
    objects = kustomize(join(K8S, layout.dir));
  });

  test('renders, and every object validates against its schema', () => {
    const kinds = objects.map((o) => o.kind).sort();
    const expected = [
      'ConfigMap',
      'ConfigMap',
      'Deployment',
      'Deployment',
      'PersistentVolumeClaim',
      'PodDisruptionBudget',
    ];
    expected.push('Service', 'Service', 'Service', 'StatefulSet');
    if (layout.dir !== 'base') expected.push('Namespace', 'PodMonitor');
    expect(kinds).toEqual(expected.sort());
    expect(objects.flatMap(schemaErrors)).toEqual([]);
  });

  test('has tp GPUs, tp worker processes and their ports per worker pod, and pp worker pods', () => {
    const config = configOf(objects);
    expect(Number(config.MEDCLUSTER_TP)).toBe(layout.tp);
    expect(Number(config.MEDCLUSTER_PP)).toBe(layout.pp);
    const workers = only(objects, 'StatefulSet', 'medcluster-worker');
    expect(workers.spec.replicas).toBe(layout.pp);
    const worker = container(workers, 'worker');
    expect(Number(worker.resources?.limits?.['nvidia.com/gpu'])).toBe(layout.tp);
    const ports = Object.fromEntries((worker.ports ?? []).map((p) => [p.name, p.containerPort]));
    const expected: Record<string, number> = {};
    for (let i = 0; i < layout.tp; i++) {
      expected[`worker-${i}`] = 7000 + i;
      expected[`metrics-${i}`] = 9400 + i;
    }
    expect(ports).toEqual(expected);
    // The coordinator takes the same layout, from the same ConfigMap.
    const args = expandArgs(
      objects,
      container(only(objects, 'Deployment', 'medcluster-coordinator'), 'coordinator'),
    );
    expect(args).toContain(`--tp=${layout.tp}`);
    expect(args).toContain(`--pp=${layout.pp}`);
    // No GPU for anything but the workers.
    for (const { owner, template } of podTemplates(objects)) {
      if (owner === workers) continue;
      for (const c of template.spec.containers as Container[])
        expect(c.resources?.limits?.['nvidia.com/gpu'], name(owner)).toBeUndefined();
    }
  });

  test('workers start together and are reachable before they are ready', () => {
    const workers = only(objects, 'StatefulSet', 'medcluster-worker');
    expect(workers.spec.podManagementPolicy).toBe('Parallel');
    const service = only(objects, 'Service', workers.spec.serviceName);
    expect(service.spec.clusterIP).toBe('None');
    expect(service.spec.publishNotReadyAddresses).toBe(true);
    expect(selects(service.spec.selector, workers.spec.template.metadata.labels)).toBe(true);
    // The entrypoint advertises <pod>.<MEDCLUSTER_WORKER_SERVICE>.<ns>.svc...: the headless Service.
    const env = environment(objects, container(workers, 'worker'));
    expect(env.get('MEDCLUSTER_WORKER_SERVICE')).toBe(workers.spec.serviceName);
    expect(env.has('POD_NAME') && env.has('POD_NAMESPACE')).toBe(true);
    expect(container(workers, 'worker').command).toEqual(['medcluster-worker-pod']);
    // One coordinator at a time: two would both assign the workers.
    const coordinator = only(objects, 'Deployment', 'medcluster-coordinator');
    expect(coordinator.spec.replicas).toBe(1);
    expect(coordinator.spec.strategy.type).toBe('Recreate');
  });

  test('every $(VAR) in a command is defined, and the coordinator reaches NATS through its Service, over TLS', () => {
    for (const { template } of podTemplates(objects))
      for (const c of template.spec.containers as Container[]) expandArgs(objects, c);
    const config = configOf(objects);
    const nats = only(objects, 'Service', 'nats');
    const url = new URL(config.MEDCLUSTER_NATS_URL);
    expect(url.protocol).toBe('tls:');
    expect(url.hostname).toBe(nats.metadata.name);
    expect(nats.spec.ports.map((p: { port: number }) => p.port)).toContain(Number(url.port));
  });

  test('Services, the disruption budget and the PodMonitor select pods, and name ports those pods have', () => {
    const templates = podTemplates(objects);
    const selectedBy = (selector: Parameters<typeof selects>[0]) =>
      templates.filter((t) => selects(selector, t.template.metadata.labels));
    for (const o of objects.filter((x) =>
      ['Service', 'PodDisruptionBudget', 'PodMonitor'].includes(x.kind),
    )) {
      const pods = selectedBy(o.spec.selector);
      expect(pods.length, `${name(o)} selects no pod`).toBeGreaterThan(0);
      const portNames = new Set(
        pods.flatMap((p) =>
          (p.template.spec.containers as Container[]).flatMap((c) => (c.ports ?? []).map((x) => x.name)),
        ),
      );
      if (o.kind === 'Service')
        for (const p of o.spec.ports ?? [])
          if (typeof p.targetPort === 'string')
            expect(portNames, `${name(o)} port ${p.name}`).toContain(p.targetPort);
      if (o.kind === 'PodMonitor')
        for (const ep of o.spec.podMetricsEndpoints)
          if (ep.port) expect(portNames, `${name(o)} endpoint ${ep.port}`).toContain(ep.port);
    }
    // The budget covers the pods every request depends on; the PodMonitor every /metrics.
    const budget = only(objects, 'PodDisruptionBudget');
    expect(
      selectedBy(budget.spec.selector)
        .map((t) => t.owner.metadata.name)
        .sort(),
    ).toEqual(['medcluster-coordinator', 'medcluster-worker', 'nats']);
    if (layout.dir !== 'base') {
      const monitor = only(objects, 'PodMonitor');
      expect(
        selectedBy(monitor.spec.selector)
          .map((t) => t.owner.metadata.name)
          .sort(),
      ).toEqual(['medcluster-coordinator', 'medcluster-worker']);
      // The worker endpoint keeps exactly the worker pod's metrics-<i> ports.
      const keep = monitor.spec.podMetricsEndpoints
        .flatMap((ep: { relabelings?: { action: string; regex: string }[] }) => ep.relabelings ?? [])
        .find((r: { action: string }) => r.action === 'keep');
      const regex = new RegExp(`^(?:${keep.regex})$`);
      const worker = container(only(objects, 'StatefulSet'), 'worker');
      const scraped = (worker.ports ?? []).filter((p) => regex.test(p.name)).map((p) => p.containerPort);
      expect(scraped.sort()).toEqual(Array.from({ length: layout.tp }, (_, i) => 9400 + i));
    }
  });

  test('the model volume is mounted read-only at the same path by the coordinator and every worker', () => {
    const config = configOf(objects);
    const claims = new Set(
      objects.filter((o) => o.kind === 'PersistentVolumeClaim').map((o) => o.metadata.name),
    );
    const mounts: string[] = [];
    for (const owner of [
      only(objects, 'Deployment', 'medcluster-coordinator'),
      only(objects, 'StatefulSet', 'medcluster-worker'),
    ]) {
      const spec = owner.spec.template.spec;
      const volume = spec.volumes.find((v: { persistentVolumeClaim?: unknown }) => v.persistentVolumeClaim);
      expect(claims).toContain(volume.persistentVolumeClaim.claimName);
      expect(volume.persistentVolumeClaim.readOnly).toBe(true);
      for (const c of spec.containers as Container[]) {
        const mount = (c.volumeMounts ?? []).find((m) => m.name === volume.name);
        expect(mount?.readOnly, `${name(owner)} mounts the model read-only`).toBe(true);
        mounts.push(mount?.mountPath ?? '');
      }
    }
    expect(new Set(mounts).size).toBe(1);
    expect(config.MEDCLUSTER_MODEL_DIR.startsWith(`${mounts[0]}/`)).toBe(true);
  });

  test('probes: /ready and /live over HTTPS for the coordinator, every process alive and ready for workers', () => {
    const coordinator = container(only(objects, 'Deployment', 'medcluster-coordinator'), 'coordinator');
    // The kubelet's gRPC probe cannot speak TLS; the probes need no API key. Readiness (startup
    // too) is "can serve"; liveness is "the process answers", so a degraded or draining
    // coordinator is not restarted.
    for (const probe of ['startupProbe', 'readinessProbe'])
      expect(coordinator[probe].httpGet, probe).toEqual({ path: '/ready', port: 'http', scheme: 'HTTPS' });
    expect(coordinator.livenessProbe.httpGet).toEqual({ path: '/live', port: 'http', scheme: 'HTTPS' });
    const worker = container(only(objects, 'StatefulSet', 'medcluster-worker'), 'worker');
    expect(worker.startupProbe.exec.command).toEqual(['medcluster-worker-pod', 'probe', 'health']);
    expect(worker.livenessProbe.exec.command).toEqual(['medcluster-worker-pod', 'probe', 'health']);
    expect(worker.readinessProbe.exec.command).toEqual(['medcluster-worker-pod', 'probe', 'ready']);
  });

  test('grace periods cover the drain: the coordinator finishes in-flight requests while workers still serve', () => {
    const drain = Number(configOf(objects).MEDCLUSTER_SHUTDOWN_GRACE_S);
    const preStopSleep = (c: Container) => Number(c.lifecycle?.preStop?.exec?.command?.[1] ?? 0);
    const coordinator = only(objects, 'Deployment', 'medcluster-coordinator');
    const c = container(coordinator, 'coordinator');
    expect(coordinator.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(
      preStopSleep(c) + drain + 5,
    );
    expect(expandArgs(objects, c)).toContain(`--shutdown-grace-s=${drain}`);
    const workers = only(objects, 'StatefulSet', 'medcluster-worker');
    const w = container(workers, 'worker');
    expect(preStopSleep(w)).toBeGreaterThan(preStopSleep(c) + drain);
    expect(workers.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThan(preStopSleep(w) + 10);
  });

  test('access control: every key, certificate and password is a file of a Secret mounted read-only', () => {
    // No Secret is rendered: keys and passwords are made in the cluster, never committed.
    expect(objects.filter((o) => o.kind === 'Secret')).toEqual([]);
    /** The Secret and key behind a file path the container reads, through its volumes. */
    const secretFileOf = (owner: K8sObject, c: Container, path: string) => {
      const mount = (c.volumeMounts ?? []).find((m) => m.mountPath === dirname(path));
      expect(mount, `${name(owner)} mounts ${dirname(path)}`).toBeDefined();
      expect(mount?.readOnly, `${name(owner)} mounts ${dirname(path)} read-only`).toBe(true);
      const volume = owner.spec.template.spec.volumes.find((v: { name: string }) => v.name === mount?.name);
      expect(volume?.secret, `${name(owner)} volume ${mount?.name} is a Secret`).toBeDefined();
      const item = volume.secret.items?.find((i: { path: string }) => i.path === basename(path));
      expect(
        item,
        `${name(owner)}: ${basename(path)} is an item of Secret ${volume.secret.secretName}`,
      ).toBeDefined();
      // Readable by the pod's group (fsGroup, which the kubelet gives the files), not by everyone.
      expect(volume.secret.defaultMode & 0o007).toBe(0);
      expect(owner.spec.template.spec.securityContext?.fsGroup, `${name(owner)} fsGroup`).toBeDefined();
      return { secret: volume.secret.secretName as string, key: item.key as string };
    };
    const fileFlags = (c: Container) =>
      new Map(
        expandArgs(objects, c)
          .map((a) => /^--([a-z-]+)=(\/.*)$/.exec(a))
          .filter((m): m is RegExpExecArray => m !== null && /file|tls|internal/.test(m[1]))
          .map((m) => [m[1], m[2]]),
      );
    const coordinatorOwner = only(objects, 'Deployment', 'medcluster-coordinator');
    const coordinator = container(coordinatorOwner, 'coordinator');
    const workerOwner = only(objects, 'StatefulSet', 'medcluster-worker');
    const worker = container(workerOwner, 'worker');
    const coordinatorFiles = fileFlags(coordinator);
    const workerFiles = fileFlags(worker);
    expect([...coordinatorFiles.keys()].sort()).toEqual(
      [
        'api-keys-file',
        'internal-ca',
        'internal-cert',
        'internal-key',
        'nats-password-file',
        'tls-cert',
        'tls-key',
      ].sort(),
    );
    expect([...workerFiles.keys()].sort()).toEqual([
      'internal-ca',
      'internal-cert',
      'internal-key',
      'nats-password-file',
    ]);
    const files = new Map<string, { secret: string; key: string }>();
    for (const [flag, path] of coordinatorFiles)
      files.set(`coordinator ${flag}`, secretFileOf(coordinatorOwner, coordinator, path));
    for (const [flag, path] of workerFiles)
      files.set(`worker ${flag}`, secretFileOf(workerOwner, worker, path));
    // The coordinator and the workers share the internal CA, each presents a certificate and key
    // of the same Secret; the public certificate is another Secret.
    for (const flag of ['internal-ca', 'internal-cert', 'internal-key'])
      expect(files.get(`worker ${flag}`)).toEqual(files.get(`coordinator ${flag}`));
    expect(files.get('coordinator tls-key')?.secret).not.toBe(files.get('coordinator internal-key')?.secret);

    // NATS: each --nats-user is a user of nats.conf whose password variable the NATS container
    // takes from the same Secret key the client reads its password file from.
    const natsOwner = only(objects, 'Deployment', 'nats');
    const nats = container(natsOwner, 'nats');
    const configPath = (nats.args ?? [])[(nats.args ?? []).indexOf('--config') + 1];
    const conf = configMap(objects, 'nats-config');
    const natsMount = (nats.volumeMounts ?? []).find((m) => m.mountPath === dirname(configPath));
    expect(natsMount?.readOnly).toBe(true);
    const natsVolume = natsOwner.spec.template.spec.volumes.find(
      (v: { name: string }) => v.name === natsMount?.name,
    );
    expect(natsVolume.configMap.name).toBe(conf.metadata.name);
    const users = new Map(
      [
        ...(conf.data[basename(configPath)] as string).matchAll(
          /\{\s*user:\s*(\w+),\s*password:\s*\$(\w+)\s*\}/g,
        ),
      ].map((m) => [m[1], m[2]]),
    );
    for (const [who, c] of [
      ['coordinator', coordinator],
      ['worker', worker],
    ] as const) {
      const user = expandArgs(objects, c)
        .find((a) => a.startsWith('--nats-user='))
        ?.split('=')[1];
      const variable = users.get(user ?? '');
      expect(variable, `${who} logs in as a user of nats.conf`).toBeDefined();
      // The variable quotes another, which reads the Secret (nats.yaml says why).
      const quoted = (nats.env ?? []).find((e) => e.name === variable)?.value?.match(/^"\$\((\w+)\)"$/);
      expect(quoted, `${variable} is a quoted reference`).not.toBeNull();
      const env = (nats.env ?? []).find((e) => e.name === quoted?.[1]);
      expect((env?.valueFrom as { secretKeyRef: unknown })?.secretKeyRef).toEqual({
        name: files.get(`${who} nats-password-file`)?.secret,
        key: files.get(`${who} nats-password-file`)?.key,
      });
    }

    // NATS requires TLS with a client certificate (verify: true), from the files of the Secret
    // behind the clients' --internal-ca, --internal-cert and --internal-key: one trust root.
    const tlsBlock = /^tls\s*\{([^}]*)\}/m.exec(conf.data[basename(configPath)] as string)?.[1] ?? '';
    const tlsFile = (field: string) => new RegExp(`${field}:\\s*"?([^"\\s]+)"?`).exec(tlsBlock)?.[1] ?? '';
    expect(tlsBlock).toMatch(/\bverify:\s*true\b/);
    for (const [field, flag] of [
      ['ca_file', 'internal-ca'],
      ['cert_file', 'internal-cert'],
      ['key_file', 'internal-key'],
    ])
      expect(secretFileOf(natsOwner, nats, tlsFile(field)), `nats.conf ${field}`).toEqual(
        files.get(`coordinator ${flag}`),
      );

    // The PodMonitor scrapes the coordinator over HTTPS with a key from the API keys' Secret.
    if (layout.dir !== 'base') {
      const monitor = only(objects, 'PodMonitor');
      const endpoint = monitor.spec.podMetricsEndpoints.find((ep: { port?: string }) => ep.port === 'http');
      expect(endpoint.scheme).toBe('https');
      expect(endpoint.authorization.type).toBe('Bearer');
      expect(endpoint.authorization.credentials.name).toBe(files.get('coordinator api-keys-file')?.secret);
      expect(endpoint.tlsConfig.ca.secret.name).toBe(files.get('coordinator tls-cert')?.secret);
    }
  });

  test('every pod runs as non-root with no privilege escalation, no capabilities and a read-only root', () => {
    for (const { owner, template } of podTemplates(objects)) {
      const pod = template.spec.securityContext ?? {};
      expect(pod.runAsNonRoot, name(owner)).toBe(true);
      expect(pod.runAsUser, name(owner)).toBeGreaterThan(0);
      for (const c of template.spec.containers as Container[]) {
        expect(c.securityContext, `${name(owner)} ${c.name}`).toMatchObject({
          allowPrivilegeEscalation: false,
          readOnlyRootFilesystem: true,
          capabilities: { drop: ['ALL'] },
        });
      }
    }
  });
});

describe('deploy/k8s validation', () => {
  let copy: ReturnType<typeof copyOfK8s>;
  beforeAll(() => {
    copy = copyOfK8s();
  });
  afterAll(() => copy.remove());

  test('no rendered object has a field its kind does not define', () => {
    const all = Object.values(LAYOUTS).flatMap((l) => kustomize(join(K8S, l.dir)));
    expect(unknownFieldErrors(all)).toEqual([]);
  });

  test('an object of an unknown kind, a schema violation and a misspelt field each fail', () => {
    // Added to a copy of the tp2-pp2 overlay, so they go through the same render as the real ones.
    const overlay = join(copy.root, 'overlays', 'tp2-pp2');
    const widget = { apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'gadget' } };
    const misspeltCrd = {
      apiVersion: 'monitoring.coreos.com/v1',
      kind: 'PodMonitorr',
      metadata: { name: 'typo' },
    };
    const badPdb = {
      apiVersion: 'policy/v1',
      kind: 'PodDisruptionBudget',
      metadata: { name: 'bad' },
      spec: { maxUnavailable: 0, selector: { matchLabels: { a: 'b' } }, unhealthyPodEvictionPolicy: 7 },
    };
    const typo = {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'typo' },
      spec: { selector: { a: 'b' }, ports: [{ port: 80, targetPort: 8080 }], publishNotReadyAdresses: true },
    };
    writeFileSync(
      join(overlay, 'bad.yaml'),
      [widget, misspeltCrd, badPdb, typo].map((o) => stringify(o)).join('---\n'),
    );
    const kustomization = parse(readFileSync(join(overlay, 'kustomization.yaml'), 'utf8')) as {
      resources: string[];
    };
    kustomization.resources.push('bad.yaml');
    writeFileSync(join(overlay, 'kustomization.yaml'), stringify(kustomization));

    const objects = kustomize(overlay);
    const errors = objects.flatMap(schemaErrors).sort();
    expect(errors).toEqual([
      expect.stringMatching(
        /^PodDisruptionBudget bad \(policy\/v1\): .*unhealthyPodEvictionPolicy must be string/,
      ),
      expect.stringMatching(/^PodMonitorr typo \(monitoring\.coreos\.com\/v1\): unknown kind/),
      expect.stringMatching(/^Widget gadget \(example\.com\/v1\): unknown kind/),
    ]);
    // The schemas accept undefined fields; the kinds' interfaces do not (and catch the type too).
    expect(unknownFieldErrors(objects).sort()).toEqual([
      expect.stringMatching(
        /^PodDisruptionBudget bad \(policy\/v1\): Type 'number' is not assignable to type '"AlwaysAllow" \| "IfHealthyBudget"/,
      ),
      expect.stringMatching(
        /^Service typo \(v1\): .*'"?publishNotReadyAdresses"?' does not exist in type 'IServiceSpec'/,
      ),
    ]);
  });

  test("nats.conf runs in nats-server: the manifests' users log in over TLS with their passwords, no one else", async () => {
    const objects = kustomize(join(K8S, 'overlays', 'one-gpu'));
    const natsOwner = only(objects, 'Deployment', 'nats');
    const nats = container(natsOwner, 'nats');
    const dir = mkdtempSync(join(tmpdir(), 'nats-conf-'));
    // The TLS Secret as the README makes it (scripts/dev-ca.sh), its items where the pod mounts
    // them: nats.conf's paths point into the mount, here a directory of the test's.
    const pki = await makeDevCa(join(dir, 'pki'));
    const other = await makeDevCa(join(dir, 'other'));
    const fromDevCa: Record<string, string> = {
      'ca.crt': pki.ca,
      'tls.crt': pki.node.cert,
      'tls.key': pki.node.key,
    };
    const tlsVolume = natsOwner.spec.template.spec.volumes.find(
      (v: { secret?: { secretName: string } }) => v.secret?.secretName === 'medcluster-internal-tls',
    );
    const tlsMount = (nats.volumeMounts ?? []).find((m) => m.name === tlsVolume?.name);
    expect(tlsMount?.mountPath).toBeDefined();
    const mounted = join(dir, 'mounted');
    mkdirSync(mounted);
    for (const item of tlsVolume.secret.items as { key: string; path: string }[])
      copyFileSync(fromDevCa[item.key], join(mounted, item.path));
    const file = join(dir, 'nats.conf');
    const conf = configMap(objects, 'nats-config').data['nats.conf'] as string;
    writeFileSync(file, conf.replaceAll(`${tlsMount?.mountPath}/`, `${mounted}/`));
    // The Secret's values (hex, as the README makes them); one looks like a float (9e5), which nats-server
    // would read as a number were it not quoted.
    const secret: Record<string, string> = {
      'coordinator-password': `9e5f${randomBytes(16).toString('hex')}`,
      'worker-password': randomBytes(16).toString('hex'),
    };
    const env = kubernetesEnv(nats.env ?? [], secret);
    // The harness's port and address win over the file's; no monitoring port in a test.
    const server = await startNatsServer({ args: ['-c', file, '-m', '0'], env });
    const member = InternalTls.load({ ca: pki.ca, ...pki.node }).natsTls();
    try {
      for (const [user, key] of [
        ['coordinator', 'coordinator-password'],
        ['worker', 'worker-password'],
      ]) {
        const nc = await connectNats(
          { servers: server.url, auth: { user, pass: secret[key] }, tls: member },
          user,
        );
        await nc.close();
        await expect(
          connectNats({ servers: server.url, auth: { user, pass: 'guess' }, tls: member }, user),
        ).rejects.toThrow(/authorization violation/);
      }
      await expect(connectNats({ servers: server.url, tls: member }, 'anonymous')).rejects.toThrow(
        /requires credentials/,
      );
      // Without TLS, or with a certificate of another CA, nobody gets as far as logging in.
      const worker = { user: 'worker', pass: secret['worker-password'] };
      await expect(connectNats({ servers: server.url, auth: worker }, 'plain')).rejects.toThrow(
        /requires TLS/,
      );
      const foreign = InternalTls.load({ ca: pki.ca, ...other.node }).natsTls();
      await expect(
        connectNats({ servers: server.url, auth: worker, tls: foreign }, 'foreign'),
      ).rejects.toThrow(/ended the TLS handshake with foreign \(TLS alert: bad certificate\)/);
    } finally {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the model download component fills the volume that the serving pods mount read-only', () => {
    // As a user adds it: to the overlay's components.
    const overlay = join(copy.root, 'overlays', 'one-gpu');
    const file = join(overlay, 'kustomization.yaml');
    const kustomization = parse(readFileSync(file, 'utf8')) as { components: string[] };
    kustomization.components.push('../../components/model-download');
    writeFileSync(file, stringify(kustomization));
    const objects = kustomize(overlay);
    expect(objects.flatMap(schemaErrors)).toEqual([]);
    expect(unknownFieldErrors(objects)).toEqual([]);
    const job = only(objects, 'Job', 'medcluster-model-download');
    expect(job.metadata.namespace).toBe('medcluster');
    const spec = job.spec.template.spec;
    const download = spec.containers[0] as Container;
    expect(download.args?.join(' ')).toMatch(
      /huggingface-cli download TheBloke\/meditron-70B-AWQ\s+\\?\s*--local-dir "\$MEDCLUSTER_MODEL_DIR"/,
    );
    // The model directory comes from the (generated, hashed) ConfigMap the serving pods use.
    const config = configMap(objects, 'medcluster-config');
    const ref = download.env?.find((e) => e.name === 'MEDCLUSTER_MODEL_DIR')?.valueFrom as {
      configMapKeyRef: { name: string; key: string };
    };
    expect(ref.configMapKeyRef).toEqual({ name: config.metadata.name, key: 'MEDCLUSTER_MODEL_DIR' });
    const volume = spec.volumes.find((v: { persistentVolumeClaim?: unknown }) => v.persistentVolumeClaim);
    expect(volume.persistentVolumeClaim.claimName).toBe('medcluster-model');
    const mount = download.volumeMounts?.find((m) => m.name === volume.name);
    expect(mount?.mountPath).toBe('/models');
    expect(mount?.readOnly).not.toBe(true);
    // Its pods are outside the disruption budget (a Job's pods have no scale to budget against).
    const budget = only(objects, 'PodDisruptionBudget');
    expect(selects(budget.spec.selector, job.spec.template.metadata.labels)).toBe(false);
  });
});
