// What `up` and `coordinator` share once the cluster is ready: the scheduler, the generator,
// the public gRPC and HTTP servers, and an orderly shutdown on SIGINT/SIGTERM (stop admitting,
// let in-flight requests finish within the grace period, fail the rest, stop the workers).

import { readFile } from 'node:fs/promises';
import type { LlamaConfig } from '@medcluster/worker';
import type { ClusterHandle } from '../cluster/cluster-handle.js';
import { TextGenerator } from '../generation/text-generation.js';
import { createHttpServer, listenHttp } from '../http/index.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { createServer, listen } from '../server/create-server.js';
import type { ServingContext } from '../server/serving-context.js';
import { loadTokenizer } from '../tokenizer/index.js';
import type { ServeSettings } from './serve-flags.js';

export interface ServeOptions {
  /** Where the tokenizer is read (and the checkpoint, unless the workers serve synthetic weights). */
  modelDir: string;
  /** What is served, for the log (default: modelDir). */
  label?: string;
  config: LlamaConfig;
  cluster: ClusterHandle;
  /** Interface the public API binds to. */
  host: string;
  settings: ServeSettings;
}

export async function serveUntilSignal({
  modelDir,
  label = modelDir,
  config,
  cluster,
  host,
  settings,
}: ServeOptions): Promise<void> {
  const chatTemplate =
    settings.chatTemplatePath === undefined ? undefined : await readChatTemplate(settings.chatTemplatePath);
  const tokenizer = await loadTokenizer(modelDir, { chatTemplate });
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
  const serving: ServingContext = {
    modelName: settings.servedModelName,
    config,
    generator: new TextGenerator(tokenizer, scheduler, { maxTokens: settings.defaultMaxTokens }),
    cluster,
    healthy: () => cluster.healthy() && !draining,
  };
  const server = createServer(serving, { maxMessageBytes: settings.grpcMaxMessageBytes });
  const http = createHttpServer(serving, scheduler, {
    bodyLimit: settings.httpMaxBodyBytes,
    corsOrigins: settings.httpCorsOrigins,
  });
  const httpPort = await listenHttp(http, host, settings.httpPort);
  const port = await listen(server, `${host}:${settings.grpcPort}`);
  const local = host === '0.0.0.0' || host === '::' ? 'localhost' : host;
  console.error(`medcluster: HTTP APIs (OpenAI /v1, TGI, /cluster) on http://${local}:${httpPort}`);
  console.error(
    `medcluster: serving ${label} as ${settings.servedModelName} (tp=${cluster.tp}, pp=${cluster.pp}) on ${host}:${port}`,
  );
  console.error(
    `medcluster: try \`curl http://${local}:${httpPort}/v1/completions -H 'Content-Type: application/json' -d '{"prompt": "The patient presented with", "max_tokens": 32}'\``,
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
      await Promise.all([http.close(), new Promise<void>((r) => server.tryShutdown(() => r()))]);
      await cluster.stop();
      resolve();
    };
    process.once('SIGINT', () => void stop('SIGINT'));
    process.once('SIGTERM', () => void stop('SIGTERM'));
  });
}

async function readChatTemplate(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (cause) {
    throw new Error(`--chat-template: cannot read ${path} (${(cause as Error).message})`, { cause });
  }
}
