// createHttpServer() builds the public HTTP server (fastify): the OpenAI routes under /v1, TGI's
// routes at the root, GET /cluster, GET /metrics (Prometheus, when given), the probes GET /live
// and GET /ready, CORS for pages on other origins (preflight included);
// listenHttp() binds it. Kept apart so tests can bind port 0 and the CLI a configured port.
//
// With API keys, every route but GET /health needs `Authorization: Bearer <key>` (401 in the
// route's convention otherwise); with a certificate the port serves HTTPS only.
//
// Every body is read as JSON whatever its content type (curl without -H, a browser's text/plain
// fetch), up to `bodyLimit` bytes (413 past it, the rest of the body discarded); an empty body
// reads as none. Errors are answered in the convention of the API the route belongs to
// (errors.ts).

import type { AddressInfo } from 'node:net';
import cors from '@fastify/cors';
import Fastify, {
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import { type ApiKeys, type PublicTls, requireApiKeys } from '../auth/index.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { ServingContext } from '../server/serving-context.js';
import { ClusterActivity } from './cluster-status.js';
import { type ApiStyle, errorReply, HttpError } from './errors.js';
import { FieldError } from './fields.js';
import type { HttpContext } from './http-context.js';
import { openaiRoutes } from './openai.js';
import { Prompts } from './prompts.js';
import { Runs } from './runs.js';
import { tgiRoutes } from './tgi.js';
import { TokenTexts } from './token-text.js';

export interface HttpServerOptions {
  /** Largest request body, in bytes. */
  bodyLimit: number;
  /** Origins allowed to call the APIs from a browser: '*' or a list. */
  corsOrigins: '*' | string[];
  /** The Prometheus exposition GET /metrics answers with (no route without it). */
  metrics?: () => Promise<{ contentType: string; body: string }>;
  /** Called once per response with the route's pattern and the status (metrics). */
  onResponse?: (route: string, status: number) => void;
  /** Keys a request must carry (absent: the APIs are open). */
  apiKeys?: ApiKeys;
  /** Serve HTTPS with this certificate (absent: plain HTTP). */
  tls?: PublicTls;
}

/**
 * A fastify instance on HTTP, or on HTTPS with `tls`. Routes do not depend on which, so both are
 * typed as the HTTP one.
 */
export function fastifyFor(
  bodyLimit: number,
  tls: PublicTls | undefined,
  extra: { return503OnClosing?: boolean } = {},
): FastifyInstance {
  const common = { bodyLimit, logger: false, ...extra };
  return tls
    ? (Fastify({ ...common, https: { cert: tls.cert, key: tls.key } }) as unknown as FastifyInstance)
    : Fastify(common);
}

/** The most of a refused body read and thrown away so that its sender can read the 413. */
const REFUSED_BODY_DISCARD_BYTES = 64 << 20;

/**
 * A body refused as too large is usually still arriving when the 413 is sent. Fastify closes the
 * connection then; the kernel answers the bytes still coming with a reset, and a client that has
 * not yet read the 413 sees only the reset (fetch: EPIPE or ECONNRESET, no status). So the rest of
 * the body is read and discarded and the connection kept for its next request; a body declared,
 * or found, larger than REFUSED_BODY_DISCARD_BYTES is cut off instead.
 */
function discardRefusedBody(req: FastifyRequest, reply: FastifyReply): void {
  const raw = req.raw;
  if (Number(raw.headers['content-length']) > REFUSED_BODY_DISCARD_BYTES) return;
  reply.removeHeader('connection');
  let discarded = 0;
  raw.on('data', (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded > REFUSED_BODY_DISCARD_BYTES) raw.socket.destroy();
  });
  raw.resume();
}

/** The field a message about the prompt refers to, by route. */
function promptFieldOf(url: string | undefined): string {
  if (url === '/v1/chat/completions') return 'messages';
  if (url === '/v1/completions') return 'prompt';
  return 'inputs';
}

export function createHttpServer(
  serving: ServingContext,
  scheduler: Pick<Scheduler, 'stats' | 'observe' | 'limits'>,
  options: HttpServerOptions,
): FastifyInstance {
  const app = fastifyFor(options.bodyLimit, options.tls, { return503OnClosing: true });
  const ctx: HttpContext = {
    serving,
    scheduler,
    prompts: new Prompts(serving.generator, serving.config.vocabRows),
    texts: new TokenTexts(serving.generator.tokenizer),
    runs: new Runs(serving.generator, scheduler),
    bodyLimit: options.bodyLimit,
  };
  const activity = new ClusterActivity(scheduler.observe.bind(scheduler));
  const { onResponse } = options;
  if (onResponse) {
    app.addHook('onResponse', async (req, reply) => {
      onResponse(req.routeOptions.url ?? 'unmatched', reply.statusCode);
    });
  }
  app.addHook('onClose', async () => {
    ctx.runs.close();
    activity.close();
  });

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    if (body === '') return done(null, undefined);
    try {
      // A "__proto__" key stays an own property (JSON.parse never sets a prototype); the
      // routes read only the fields they know, with Object.hasOwn.
      done(null, JSON.parse(body as string));
    } catch (err) {
      done(new FieldError('', `the request body is not valid JSON (${(err as Error).message})`), undefined);
    }
  });

  const handler = (style: ApiStyle) => (err: FastifyError, req: FastifyRequest, reply: FastifyReply) => {
    const { status, body } = errorReply(err, style, {
      promptField: promptFieldOf(req.routeOptions.url),
      bodyLimit: options.bodyLimit,
    });
    if (status >= 500 && !(err instanceof HttpError) && err.name !== 'RequestFailedError') {
      console.error(`medcluster http: ${req.method} ${req.url}: ${err.stack ?? err.message}`);
    }
    if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') discardRefusedBody(req, reply);
    return reply.code(status).send(body);
  };
  app.setErrorHandler(handler('tgi'));
  app.setNotFoundHandler((req, reply) => {
    const style: ApiStyle = req.url.startsWith('/v1/') ? 'openai' : 'tgi';
    const { status, body } = errorReply(
      new HttpError(404, `no route ${req.method} ${req.url.split('?')[0]}`, 'not_found'),
      style,
      { bodyLimit: options.bodyLimit },
    );
    return reply.code(status).send(body);
  });

  app.register(cors, {
    origin: options.corsOrigins === '*' ? '*' : options.corsOrigins,
    methods: ['GET', 'POST', 'OPTIONS'],
    maxAge: 600,
  });
  // Once CORS's own hook is in place, so that a 401 carries the headers a page needs to read it.
  const { apiKeys } = options;
  if (apiKeys) app.after(() => requireApiKeys(app, apiKeys, options.bodyLimit));
  app.register(
    async (v1) => {
      v1.setErrorHandler(handler('openai'));
      await openaiRoutes(ctx)(v1);
    },
    { prefix: '/v1' },
  );
  app.register(async (tgi) => {
    tgi.setErrorHandler(handler('tgi'));
    await tgiRoutes(ctx)(tgi);
  });
  app.get('/cluster', async () => activity.snapshot(ctx));
  // Probes: alive while the process answers (draining and degraded included: restarting it would
  // not help), ready while it can serve (what a load balancer routes on).
  app.get('/live', async () => ({ status: 'alive' }));
  app.get('/ready', async (_req, reply) =>
    ctx.serving.healthy()
      ? { status: 'ready' }
      : reply.code(503).header('retry-after', '5').send({ status: 'not ready' }),
  );
  const { metrics } = options;
  if (metrics) {
    app.get('/metrics', async (_req, reply) => {
      const { contentType, body } = await metrics();
      return reply.type(contentType).send(body);
    });
  }
  return app;
}

/** Binds host:port (port 0 picks one) and resolves with the bound port. */
export async function listenHttp(app: FastifyInstance, host: string, port: number): Promise<number> {
  await app.listen({ host, port });
  return (app.server.address() as AddressInfo).port;
}
