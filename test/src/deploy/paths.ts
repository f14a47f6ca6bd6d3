import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const DEPLOY = join(REPO, 'deploy');
export const K8S = join(DEPLOY, 'k8s');
export const PROMETHEUS = join(DEPLOY, 'prometheus');
export const GRAFANA = join(DEPLOY, 'grafana');
export const DOCKER = join(DEPLOY, 'docker');
