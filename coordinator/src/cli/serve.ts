// What `up` and `coordinator` share once the cluster is ready: the scheduler, the generator,
// the public gRPC and HTTP servers, and an orderly shutdown on SIGINT/SIGTERM (stop admitting,
// let in-flight requests finish within the grace period, fail the rest, stop the workers).

import { readFile } from 'node:fs/promises';
import type { LlamaConfig, Logger } from '@medcluster/worker';
import type { ClusterHandle } from '../cluster/cluster-handle.js';
import { TextGenerator } from '../generation/text-generation.js';
import { createHttpServer, createLoadingServer, listenHttp } from '../http/index.js';
import { ServingMetrics } from '../metrics/serving-metrics.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import type { SchedulerEvent } from '../scheduler/events.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { createServer, listen } from '../server/create-server.js';
import type { ServingContext } from '../server/serving-context.js';
import { loadTokenizer } from '../tokenizer/index.js';
import type { ServeSettings } from './serve-flags.js';

/** The scheduler's events that deserve a line: one per request (never naming two). */
function logEvent(log: Logger, e: SchedulerEvent): void {
  const ms = (s: number) => Number((s * 1000).toFixed(1));
  if (e.type === 'admitted')
    log.debug('request admitted', { requestId: e.requestId, promptTokens: e.promptTokens, n: e.n });
  else if (e.type === 'rejected') log.info('request refused', { requestId: e.requestId, reason: e.reason });
  else if (e.type === 'preempted') {
    log.warn('preempted: the KV cache is full', {
      requestId: e.requestId,
      choice: e.choice,
      recomputeTokens: e.recomputeTokens,
    });
  } else if (e.type === 'cancelled')
    log.info('request cancelled', { requestId: e.requestId, stage: e.stage });
  else if (e.type === 'finished') {
    log.info('request finished', {
      requestId: e.requestId,
      outcome: e.outcome,
      promptTokens: e.promptTokens,
      completionTokens: e.completionTokens,
      queueMs: ms(e.timing.queue),
      ttftMs: ms(e.timing.timeToFirstToken),
      totalMs: ms(e.timing.total),
    });
  }
}

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
  log: Logger;
  /** The port's 503 answers while the cluster loaded (openLoadingPort); closed as serving starts. */
  loading?: LoadingPort;
}

export interface LoadingPort {
  port: number;
  close(): Promise<void>;
}

/**
 * Opens the HTTP port at once, answering 503 until serving starts: a cluster takes minutes to
 * load, and "not ready" is a clearer answer than a refused connection.
 */
export async function openLoadingPort(host: string, settings: ServeSettings): Promise<LoadingPort> {
  const app = createLoadingServer(settings.httpMaxBodyBytes, {
    apiKeys: settings.apiKeys,
    tls: settings.tls,
  });
  const port = await listenHttp(app, host, settings.httpPort);
  return { port, close: () => app.close() };
}

export async function serveUntilSignal({
  modelDir,
  label = modelDir,
  config,
  cluster,
  host,
  settings,
  log,
  loading,
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
      degradedWaitMs: settings.degradedWaitMs,
      maxContext: config.maxPositions,
      eosTokenId: tokenizer.eosTokenId,
    },
  );
  scheduler.observe((e) => {
    logEvent(log, e);
    // A step found the pipeline broken with no worker known lost: the cluster finds out why.
    if (e.type === 'suspended' && e.source === 'executor') cluster.reportUnavailable(e.reason);
  });
  // A lost worker takes its KV cache with it: no step runs until the cluster is whole again.
  cluster.events.on('workerLost', (_id, reason) => scheduler.suspend(reason));
  cluster.events.on('recovered', () => {
    log.info('the cluster is whole again: serving');
    scheduler.resume();
  });
  let draining = false;
  const serving: ServingContext = {
    modelName: settings.servedModelName,
    config,
    generator: new TextGenerator(tokenizer, scheduler, { maxTokens: settings.defaultMaxTokens }),
    cluster,
    healthy: () => cluster.healthy() && !draining,
  };
  const server = createServer(serving, {
    maxMessageBytes: settings.grpcMaxMessageBytes,
    apiKeys: settings.apiKeys,
  });
  const metrics = new ServingMetrics({ model: settings.servedModelName, scheduler, cluster });
  const http = createHttpServer(serving, scheduler, {
    bodyLimit: settings.httpMaxBodyBytes,
    corsOrigins: settings.httpCorsOrigins,
    metrics: () => metrics.scrape(),
    apiKeys: settings.apiKeys,
    tls: settings.tls,
    onResponse: (route, status) => metrics.httpResponse(route, status),
  });
  // The loading server's port, handed over: closed, then taken by the real server at once.
  await loading?.close();
  const httpPort = await listenHttp(http, host, loading ? loading.port : settings.httpPort);
  const port = await listen(server, `${host}:${settings.grpcPort}`, settings.tls);
  const local = host === '0.0.0.0' || host === '::' ? 'localhost' : host;
  const scheme = settings.tls ? 'https' : 'http';
  log.info(`HTTP APIs (OpenAI /v1, TGI, /cluster, /metrics) on ${scheme}://${local}:${httpPort}`);
  log.info(
    `serving ${label} as ${settings.servedModelName} (tp=${cluster.tp}, pp=${cluster.pp}) on ${host}:${port}${settings.tls ? ' (TLS)' : ''}`,
  );
  logAccess(log, settings);
  // A placeholder, never a key: keys do not go to logs.
  const auth = settings.apiKeys ? ` -H "Authorization: Bearer $API_KEY"` : '';
  log.info(
    `try \`curl ${scheme}://${local}:${httpPort}/v1/completions${auth} -H 'Content-Type: application/json' -d '{"prompt": "The patient presented with", "max_tokens": 32}'\``,
  );
  await new Promise<void>((resolve) => {
    const stop = async (signal: string) => {
      if (draining) return;
      draining = true;
      log.info(
        `${signal}: no new requests; letting in-flight ones finish (up to ${settings.shutdownGraceMs / 1000} s)`,
      );
      const grace = new Promise<void>((r) => setTimeout(r, settings.shutdownGraceMs).unref());
      await Promise.race([scheduler.drain(), grace]);
      scheduler.shutdown();
      // Every request is answered by now. A client that keeps its connection open (HTTP
      // keep-alive: fastify waits 72 s; a gRPC channel: for ever) would hold the exit, so the
      // connections close after a moment (the failed streams' last events are out by then).
      const force = setTimeout(() => {
        server.forceShutdown();
        http.server.closeAllConnections();
      }, 1_000);
      await Promise.all([http.close(), new Promise<void>((r) => server.tryShutdown(() => r()))]);
      clearTimeout(force);
      metrics.close();
      await cluster.stop();
      resolve();
    };
    process.once('SIGINT', () => void stop('SIGINT'));
    process.once('SIGTERM', () => void stop('SIGTERM'));
  });
}

/** How the public ports are protected: counts and file names, never a key. */
function logAccess(log: Logger, settings: ServeSettings): void {
  const { apiKeys, tls } = settings;
  log.info(
    apiKeys
      ? `API keys required on HTTP (but GET /health) and gRPC (but grpc.health.v1): ${apiKeys.size} key(s) configured`
      : 'API keys: off (anyone who reaches the ports may call the APIs)',
  );
  if (tls?.problem) log.warn(`--tls-cert ${tls.certPath} ${tls.problem}: clients will refuse it`);
}

async function readChatTemplate(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (cause) {
    throw new Error(`--chat-template: cannot read ${path} (${(cause as Error).message})`, { cause });
  }
}
