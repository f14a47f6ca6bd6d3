// The public HTTP APIs: OpenAI-compatible routes, TGI's routes and GET /cluster.
export { createHttpServer, type HttpServerOptions, listenHttp } from './create-http-server.js';
export { type ApiStyle, errorReply, HttpError } from './errors.js';
export { FieldError } from './fields.js';
export { createLoadingServer } from './loading-server.js';
export { PLAIN_CHAT_TEMPLATE } from './prompts.js';
