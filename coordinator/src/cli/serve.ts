// What `up` and `coordinator` share once the workers are ready: the scheduler, the public gRPC
// server, and an orderly shutdown on SIGINT/SIGTERM.

import type { LlamaConfig } from '@medcluster/worker';
import type { KvGeometry } from '../cluster/kv-cache.js';
import { TextGenerator } from '../generation/text-generation.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import type { StepExecutor } from '../scheduler/executor.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { createServer, listen } from '../server/create-server.js';
import type { ServedWorker } from '../server/serving-context.js';
import { loadTokenizer } from '../tokenizer/index.js';

export interface ServeOptions {
  modelDir: string;
  config: LlamaConfig;
  executor: StepExecutor;
  /** The cache every worker holds (the least count they allocated). */
  kvCache: KvGeometry;
  tp: number;
  pp: number;
  grpcAddress: string;
  /** Tokens one step may carry (decode tokens plus prompt chunks). */
  maxBatchTokens: number;
  workers: () => ServedWorker[];
  healthy: () => boolean;
  /** Stops the workers after the server closed. */
  stopCluster: () => Promise<void>;
}

export async function serveUntilSignal(options: ServeOptions): Promise<void> {
  const tokenizer = await loadTokenizer(options.modelDir);
  const blocks = new BlockAllocator(options.kvCache.numBlocks, options.kvCache.blockSize);
  const scheduler = new Scheduler(options.executor, blocks, {
    maxBatchTokens: options.maxBatchTokens,
    maxRunning: 64,
    maxContext: options.config.maxPositions,
  });
  const server = createServer({
    modelName: options.modelDir,
    config: options.config,
    generator: new TextGenerator(tokenizer, scheduler),
    tp: options.tp,
    pp: options.pp,
    workers: options.workers,
    defaults: { maxTokens: 128, temperature: 0 },
    healthy: options.healthy,
  });
  const port = await listen(server, options.grpcAddress);
  const host = options.grpcAddress.slice(0, options.grpcAddress.lastIndexOf(':'));
  console.error(
    `medcluster: serving ${options.modelDir} (tp=${options.tp}, pp=${options.pp}) on ${host}:${port}`,
  );
  console.error(
    `medcluster: try \`npx medcluster generate --server localhost:${port} --prompt "The patient presented with"\``,
  );
  await new Promise<void>((resolve) => {
    const stop = async (signal: string) => {
      console.error(`medcluster: ${signal}, shutting down`);
      scheduler.shutdown();
      await new Promise<void>((r) => server.tryShutdown(() => r()));
      await options.executor.close();
      await options.stopCluster();
      resolve();
    };
    process.once('SIGINT', () => void stop('SIGINT'));
    process.once('SIGTERM', () => void stop('SIGTERM'));
  });
}
