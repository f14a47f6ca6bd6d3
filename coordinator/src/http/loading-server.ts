// The HTTP port while the cluster loads (minutes for a 70B checkpoint): every route answers 503
// in its API's convention, so clients and load balancers see "not ready" instead of a refused
// connection. Closed once the real server takes the port over. It asks for the same API keys
// and serves the same TLS as the real server, so a client's answer never depends on timing.

import type { FastifyInstance } from 'fastify';
import { type ApiKeys, type PublicTls, requireApiKeys } from '../auth/index.js';
import { fastifyFor } from './create-http-server.js';
import { errorReply, HttpError } from './errors.js';

export interface LoadingServerOptions {
  apiKeys?: ApiKeys;
  tls?: PublicTls;
}

export function createLoadingServer(bodyLimit: number, options: LoadingServerOptions = {}): FastifyInstance {
  const app = fastifyFor(bodyLimit, options.tls);
  if (options.apiKeys) requireApiKeys(app, options.apiKeys, bodyLimit);
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, _body, done) => done(null, undefined));
  const notReady = new HttpError(503, 'the model is still loading; retry in a moment', 'loading');
  app.get('/live', async () => ({ status: 'alive' }));
  app.all('*', async (req, reply) => {
    const { status, body } = errorReply(notReady, req.url.startsWith('/v1/') ? 'openai' : 'tgi', {
      bodyLimit,
    });
    return reply.code(status).header('retry-after', '5').send(body);
  });
  return app;
}
