// Everything the public APIs need to answer requests, assembled once the cluster is ready.

import type { LlamaConfig } from '@medcluster/worker';
import type { ClusterHandle } from '../cluster/cluster-handle.js';
import type { TextGenerator } from '../generation/text-generation.js';

export interface ServingContext {
  /** The name the APIs report (--served-model-name), never a filesystem path. */
  modelName: string;
  config: LlamaConfig;
  generator: TextGenerator;
  cluster: ClusterHandle;
  /** False while the cluster is degraded or shutting down; health reports NOT_SERVING. */
  healthy: () => boolean;
}
