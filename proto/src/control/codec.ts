// JSON codecs of the control messages: encode validates what is sent, decode validates what
// arrives, so a malformed message fails at the boundary with a message naming the field.
import {
  type Assignment,
  type AssignmentReply,
  assignmentReplySchema,
  assignmentSchema,
  type DiscoverRequest,
  discoverRequestSchema,
  type LoadEvent,
  loadEventSchema,
  type WorkerAnnounce,
  type WorkerHeartbeat,
  type WorkerLeave,
  workerAnnounceSchema,
  workerHeartbeatSchema,
  workerLeaveSchema,
} from './messages.js';
import { type PlacementRecord, placementRecordSchema } from './placement.js';
import { ControlMessageError, type Validator } from './schema.js';

export interface ControlCodec<T> {
  readonly name: string;
  encode(message: T): Uint8Array;
  decode(data: Uint8Array): T;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

function jsonCodec<T>(name: string, schema: Validator<T>): ControlCodec<T> {
  return {
    name,
    encode(message: T): Uint8Array {
      return encoder.encode(JSON.stringify(schema(message, name)));
    },
    decode(data: Uint8Array): T {
      let value: unknown;
      try {
        value = JSON.parse(decoder.decode(data));
      } catch (cause) {
        throw new ControlMessageError(`${name}: not valid UTF-8 JSON`, { cause });
      }
      return schema(value, name);
    },
  };
}

/** One codec per control message type. */
export const controlCodecs = {
  announce: jsonCodec<WorkerAnnounce>('WorkerAnnounce', workerAnnounceSchema),
  heartbeat: jsonCodec<WorkerHeartbeat>('WorkerHeartbeat', workerHeartbeatSchema),
  assignment: jsonCodec<Assignment>('Assignment', assignmentSchema),
  assignmentReply: jsonCodec<AssignmentReply>('AssignmentReply', assignmentReplySchema),
  load: jsonCodec<LoadEvent>('LoadEvent', loadEventSchema),
  leave: jsonCodec<WorkerLeave>('WorkerLeave', workerLeaveSchema),
  discover: jsonCodec<DiscoverRequest>('DiscoverRequest', discoverRequestSchema),
  placement: jsonCodec<PlacementRecord>('PlacementRecord', placementRecordSchema),
} as const;
