export {
  type AssignmentHandler,
  type LoadReporter,
  WorkerAgent,
  WorkerAgentError,
  type WorkerAgentOptions,
} from './worker-agent.js';
