// Everything the public API needs to answer requests, assembled once the cluster is ready.

import type { LlamaConfig } from '@medcluster/worker';
import type { TextGenerator } from '../generation/text-generation.js';

export interface ServedWorker {
  id: string;
  address: string;
  device: string;
  stage: number;
  tpRank: number;
  layerStart: number;
  layerEnd: number;
  state: string;
}

export interface ServingContext {
  modelName: string;
  config: LlamaConfig;
  generator: TextGenerator;
  tp: number;
  pp: number;
  workers: () => ServedWorker[];
  /** Defaults for fields a request leaves unset. */
  defaults: { maxTokens: number; temperature: number };
  /** False while the cluster is degraded (a worker lost); health reports NOT_SERVING. */
  healthy: () => boolean;
}
