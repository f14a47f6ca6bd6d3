// Shared test harness: real processes and real sockets, never stubs.
export { freePort } from '@medcluster/coordinator';
export {
  defaultSearchDirs,
  findNatsServer,
  NatsServerError,
  type NatsServerHandle,
  type NatsServerOptions,
  startNatsServer,
} from './nats-server.js';
