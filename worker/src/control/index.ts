export {
  type AssignmentHandler,
  type LoadedShard,
  type LoadReporter,
  WorkerAgent,
  WorkerAgentError,
  type WorkerAgentOptions,
} from './worker-agent.js';
