// Every NATS subject of the control plane, in one place. All live under `medcluster.<cluster>.`
// so that several clusters can share one NATS server.
import { ID_PATTERN } from './messages.js';
import { ControlMessageError } from './schema.js';

export interface ControlSubjects {
  /** Workers publish WorkerAnnounce. */
  announce: string;
  /** Workers publish WorkerHeartbeat. */
  heartbeat: string;
  /** Workers publish LoadEvent (progress, ready, failed). */
  load: string;
  /** Workers publish WorkerLeave. */
  leave: string;
  /** Coordinators publish DiscoverRequest; every worker answers by announcing again. */
  discover: string;
  /** Request/reply: the coordinator sends an Assignment, the worker replies AssignmentReply. */
  assign(workerId: string): string;
}

/** The subjects of one cluster. */
export function controlSubjects(cluster: string): ControlSubjects {
  if (!ID_PATTERN.test(cluster)) {
    throw new ControlMessageError(`cluster name ${JSON.stringify(cluster)} must match ${ID_PATTERN}`);
  }
  const base = `medcluster.${cluster}`;
  return {
    announce: `${base}.workers.announce`,
    heartbeat: `${base}.workers.heartbeat`,
    load: `${base}.workers.load`,
    leave: `${base}.workers.leave`,
    discover: `${base}.coordinator.discover`,
    assign(workerId: string): string {
      if (!ID_PATTERN.test(workerId)) {
        throw new ControlMessageError(`worker id ${JSON.stringify(workerId)} must match ${ID_PATTERN}`);
      }
      return `${base}.worker.${workerId}.assign`;
    },
  };
}
