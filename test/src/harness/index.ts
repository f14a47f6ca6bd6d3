// Shared test harness: real processes and real sockets, never stubs.
export { freePort } from '@medcluster/worker';
export { type DevCa, issueExpired, makeDevCa, privateKeyLines } from './certificates.js';
export { reflectedServices } from './grpc-reflection.js';
export { NATS_IMAGE, startNats } from './nats.js';
export {
  defaultSearchDirs,
  findNatsServer,
  type NatsAuthorization,
  NatsServerError,
  type NatsServerHandle,
  type NatsServerOptions,
  type NatsServerTls,
  startNatsServer,
} from './nats-server.js';
export {
  CLI,
  type CliProcess,
  type CliResult,
  REPO,
  type RunningUp,
  runCli,
  startCli,
  startUp,
  stopAll,
  type UpOptions,
  waitForStderr,
} from './processes.js';
