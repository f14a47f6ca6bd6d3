// What `up` and `coordinator` share once the cluster is ready: the scheduler, the generator,
// the public gRPC server, and an orderly shutdown on SIGINT/SIGTERM (stop admitting, let
// in-flight requests finish within the grace period, fail the rest, stop the workers).

import type { LlamaConfig } from '@medcluster/worker';
import type { ClusterHandle } from '../cluster/cluster-handle.js';
import { TextGenerator } from '../generation/text-generation.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { createServer, listen } from '../server/create-server.js';
import { loadTokenizer } from '../tokenizer/index.js';
import type { ServeSettings } from './serve-flags.js';

export interface ServeOptions {
  modelDir: string;
  config: LlamaConfig;
  cluster: ClusterHandle;
  /** Interface the public API binds to. */
  host: string;
  settings: ServeSettings;
}

export async function serveUntilSignal({
  modelDir,
  config,
  cluster,
  host,
  settings,
}: ServeOptions): Promise<void> {
  const tokenizer = await loadTokenizer(modelDir);
  const { kvGeometry } = cluster;
  const scheduler = new Scheduler(
    cluster.executor,
    new BlockAllocator(kvGeometry.numBlocks, kvGeometry.blockSize),
    {
      maxBatchTokens: settings.maxBatchTokens,
      maxRunning: settings.maxRunning,
      maxWaiting: settings.maxWaiting,
      maxContext: config.maxPositions,
      eosTokenId: tokenizer.eosTokenId,
    },
  );
  scheduler.observe((e) => {
    if (e.type === 'preempted') {
      console.error(
        `medcluster: preempted ${e.requestId} (choice ${e.choice}): the KV cache is full; ${e.recomputeTokens} tokens will be recomputed`,
      );
    }
  });
  let draining = false;
  const server = createServer(
    {
      modelName: settings.servedModelName,
      config,
      generator: new TextGenerator(tokenizer, scheduler, { maxTokens: settings.defaultMaxTokens }),
      cluster,
      healthy: () => cluster.healthy() && !draining,
    },
    { maxMessageBytes: settings.grpcMaxMessageBytes },
  );
  const port = await listen(server, `${host}:${settings.grpcPort}`);
  console.error(
    `medcluster: serving ${modelDir} as ${settings.servedModelName} (tp=${cluster.tp}, pp=${cluster.pp}) on ${host}:${port}`,
  );
  console.error(
    `medcluster: try \`npx medcluster generate --server localhost:${port} --prompt "The patient presented with"\``,
  );
  await new Promise<void>((resolve) => {
    const stop = async (signal: string) => {
      if (draining) return;
      draining = true;
      console.error(
        `medcluster: ${signal}: no new requests; letting in-flight ones finish (up to ${settings.shutdownGraceMs / 1000} s)`,
      );
      const grace = new Promise<void>((r) => setTimeout(r, settings.shutdownGraceMs).unref());
      await Promise.race([scheduler.drain(), grace]);
      scheduler.shutdown();
      await new Promise<void>((r) => server.tryShutdown(() => r()));
      await cluster.stop();
      resolve();
    };
    process.once('SIGINT', () => void stop('SIGINT'));
    process.once('SIGTERM', () => void stop('SIGTERM'));
  });
}
