export {
  AssignmentError,
  type AssignmentSpec,
  type AssignOptions,
  type WorkerRecord,
  type WorkerRecordState,
  WorkerRegistry,
  WorkerRegistryError,
  type WorkerRegistryEvents,
  type WorkerRegistryOptions,
} from './worker-registry.js';
