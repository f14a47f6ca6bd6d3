// The HTTP port while the cluster loads (minutes for a 70B checkpoint): every route answers 503
// in its API's convention, so clients and load balancers see "not ready" instead of a refused
// connection. Closed once the real server takes the port over.

import Fastify, { type FastifyInstance } from 'fastify';
import { errorReply, HttpError } from './errors.js';

export function createLoadingServer(bodyLimit: number): FastifyInstance {
  const app = Fastify({ bodyLimit, logger: false });
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
