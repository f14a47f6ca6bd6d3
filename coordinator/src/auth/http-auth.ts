// API keys on the public HTTP server (and on the 503 server that holds the port while the model
// loads): an onRequest hook that answers 401 with `WWW-Authenticate: Bearer`, in the convention
// of the API the route belongs to, unless the request carries `Authorization: Bearer <key>`.
// Open without a key: the probes, GET (and HEAD) /health, /live and /ready, and CORS preflights
// (a browser sends them without credentials; they run no route).

import type { FastifyInstance } from 'fastify';
import { errorReply, HttpError } from '../http/errors.js';
import { type ApiKeys, refusalMessage } from './api-keys.js';

/** What a kubelet or load balancer asks, with no key to give. */
const PROBES = new Set(['/health', '/live', '/ready']);

function isOpen(method: string, url: string): boolean {
  if (method === 'OPTIONS') return true;
  const path = url.split('?')[0];
  return (method === 'GET' || method === 'HEAD') && PROBES.has(path);
}

export function requireApiKeys(app: FastifyInstance, keys: ApiKeys, bodyLimit: number): void {
  app.addHook('onRequest', async (req, reply) => {
    if (isOpen(req.method, req.url)) return;
    const refusal = keys.check(req.headers.authorization);
    if (refusal === undefined) return;
    const { status, body } = errorReply(
      new HttpError(401, refusalMessage(refusal), 'invalid_api_key'),
      req.url.startsWith('/v1/') ? 'openai' : 'tgi',
      { bodyLimit },
    );
    return reply.code(status).header('www-authenticate', 'Bearer realm="medcluster"').send(body);
  });
}
