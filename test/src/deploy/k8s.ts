// Offline Kubernetes checks for the manifests in deploy/k8s: render with `kubectl kustomize`,
// then validate every object against its schema. Core kinds use the npm package
// kubernetes-models (the Kubernetes OpenAPI schemas as JSON-schema validators), custom resources
// @kubernetes-models/prometheus-operator (the operator's CRD schemas). An apiVersion/kind that
// neither knows is an error, never a pass.
//
// Those schemas (like the API server's) accept fields they do not define, so a misspelt field
// (`readinesProbe`) would pass them; the same packages' TypeScript interfaces do not, so
// `unknownFieldErrors` type-checks every object as an object literal of its kind's interface.

import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';
import { K8S, REPO } from './paths.js';
import { run } from './tools.js';

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  // biome-ignore lint/suspicious/noExplicitAny: manifests are walked as plain data
  [field: string]: any;
}

/** `kubectl kustomize DIR`, parsed; throws with kubectl's message when it does not render. */
export function kustomize(dir: string): K8sObject[] {
  const r = run('kubectl', ['kustomize', dir]);
  if (r.code !== 0) throw new Error(`kubectl kustomize ${dir} failed:\n${r.stderr}`);
  return parseAllDocuments(r.stdout).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`kubectl kustomize ${dir}: ${doc.errors[0].message}`);
    return doc.toJS() as K8sObject;
  });
}

/** A copy of deploy/k8s in a temporary directory, to render variations of it; remove() it after. */
export function copyOfK8s(): { root: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'medcluster-k8s-'));
  const root = join(dir, 'k8s');
  cpSync(K8S, root, { recursive: true });
  return { root, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The module with the models of an apiVersion (each kind's interface is in `<module>/<Kind>`). */
function modelModule(apiVersion: string): string | undefined {
  const slash = apiVersion.indexOf('/');
  if (slash < 0) return apiVersion === 'v1' ? 'kubernetes-models/v1' : undefined;
  const group = apiVersion.slice(0, slash);
  if (group === 'monitoring.coreos.com') return `@kubernetes-models/prometheus-operator/${apiVersion}`;
  // Core groups: apps/v1, batch/v1, policy/v1, networking.k8s.io/v1, ...; CRDs of other groups
  // have no models here, so they are unknown.
  if (group.includes('.') && !group.endsWith('.k8s.io')) return undefined;
  return `kubernetes-models/${apiVersion}`;
}

const require = createRequire(import.meta.url);

interface Model {
  new (data: unknown): { validate(): void };
}

function modelFor(apiVersion: string, kind: string): Model | undefined {
  const module = modelModule(apiVersion);
  if (module === undefined) return undefined;
  let exports: Record<string, unknown>;
  try {
    exports = require(module) as Record<string, unknown>;
  } catch {
    return undefined; // no such group/version
  }
  const model = exports[kind];
  return typeof model === 'function' ? (model as Model) : undefined;
}

/** The name an object goes by in messages. */
export const describe = (o: K8sObject) => `${o.kind} ${o.metadata?.name ?? '(no name)'} (${o.apiVersion})`;

/** Schema errors of one object: empty when it validates. */
export function schemaErrors(o: K8sObject): string[] {
  const model = modelFor(o.apiVersion, o.kind);
  if (model === undefined) {
    return [`${describe(o)}: unknown kind: no Kubernetes or CRD schema for ${o.apiVersion} ${o.kind}`];
  }
  try {
    new model(o).validate();
    return [];
  } catch (err) {
    return [`${describe(o)}: ${(err as Error).message}`];
  }
}

/**
 * Fields that the kind's TypeScript interface does not define (and wrong types), for every
 * object whose kind has models; one TypeScript program for all of them.
 */
export function unknownFieldErrors(objects: K8sObject[]): string[] {
  const typed = objects.filter((o) => modelFor(o.apiVersion, o.kind) !== undefined);
  // A virtual file inside test/, so that module resolution finds the packages.
  const file = join(REPO, 'test', 'known-fields.ts');
  const lines: string[] = [];
  const owners: { line: number; object: K8sObject }[] = [];
  typed.forEach((o, i) => {
    lines.push(`import type { I${o.kind} as T${i} } from '${modelModule(o.apiVersion)}/${o.kind}';`);
  });
  typed.forEach((o, i) => {
    owners.push({ line: lines.length, object: o });
    lines.push(...`export const o${i}: T${i} = ${JSON.stringify(o, null, 1)};`.split('\n'));
  });
  const source = lines.join('\n');
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, language, ...rest) =>
    name === file ? ts.createSourceFile(name, source, language) : getSourceFile(name, language, ...rest);
  host.fileExists = (name) => name === file || fileExists(name);
  host.readFile = (name) => (name === file ? source : readFile(name));
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const message = ts.flattenDiagnosticMessageText(d.messageText, '\n').split('\n')[0];
    if (d.file?.fileName !== file || d.start === undefined) return message;
    const line = d.file.getLineAndCharacterOfPosition(d.start).line;
    const owner = owners.filter((o) => o.line <= line).at(-1);
    const at = owner ? `${describe(owner.object)}: ` : '';
    return `${at}${message.replace(/\{[\s\S]*\}/, '{...}')}`;
  });
}

/** The pod templates of the workload objects, with their owner. */
export function podTemplates(objects: K8sObject[]): { owner: K8sObject; template: K8sObject['spec'] }[] {
  return objects
    .filter((o) => ['Deployment', 'StatefulSet', 'Job', 'DaemonSet'].includes(o.kind))
    .map((owner) => ({ owner, template: owner.spec.template }));
}

/** Whether a label selector (matchLabels and matchExpressions, or a Service's map) selects the labels. */
export function selects(
  selector:
    | {
        matchLabels?: Record<string, string>;
        matchExpressions?: { key: string; operator: string; values?: string[] }[];
      }
    | Record<string, string>,
  labels: Record<string, string> = {},
): boolean {
  const s = selector as {
    matchLabels?: Record<string, string>;
    matchExpressions?: { key: string; operator: string; values?: string[] }[];
  };
  const isLabelSelector = 'matchLabels' in s || 'matchExpressions' in s;
  const matchLabels = isLabelSelector ? (s.matchLabels ?? {}) : (selector as Record<string, string>);
  for (const [k, v] of Object.entries(matchLabels)) if (labels[k] !== v) return false;
  for (const e of (isLabelSelector ? s.matchExpressions : undefined) ?? []) {
    const value = labels[e.key];
    const ok =
      e.operator === 'In'
        ? value !== undefined && (e.values ?? []).includes(value)
        : e.operator === 'NotIn'
          ? value === undefined || !(e.values ?? []).includes(value)
          : e.operator === 'Exists'
            ? value !== undefined
            : value === undefined;
    if (!ok) return false;
  }
  return true;
}
