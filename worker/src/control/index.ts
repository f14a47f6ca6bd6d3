export {
  connectNats,
  describeNatsAuth,
  describeNatsConnection,
  type NatsAuth,
  NatsConnectError,
  type NatsTarget,
  parseNatsUrl,
} from './nats-connect.js';
export type { NatsTls } from './nats-tls.js';
export {
  type AssignmentHandler,
  type LoadedShard,
  type LoadReporter,
  WorkerAgent,
  WorkerAgentError,
  type WorkerAgentOptions,
} from './worker-agent.js';
