// Access control of the public APIs: API keys (HTTP and gRPC) and TLS for their ports.
export { ApiKeys, ApiKeysError, type AuthRefusal, MIN_API_KEY_LENGTH, refusalMessage } from './api-keys.js';
export { apiKeyInterceptor } from './grpc-auth.js';
export { requireApiKeys } from './http-auth.js';
export { loadPublicTls, type PublicTls, publicServerCredentials } from './public-tls.js';
