// The worker's side of the NATS control plane: announce, heartbeat, take an assignment, report
// load progress and readiness, leave. Loading itself is the caller's (onAssignment).
import {
  type Assignment,
  CONTROL_PROTOCOL_VERSION,
  type CollectiveTransportName,
  type ControlSubjects,
  controlCodecs,
  controlSubjects,
  type DeviceInfo,
  type LoadPhase,
  type WorkerLifecycleState,
} from '@medcluster/proto';
import type { Msg, NatsConnection, Subscription } from 'nats';

/** A control-plane failure on the worker side. */
export class WorkerAgentError extends Error {
  override name = 'WorkerAgentError';
}

/** Lets an assignment handler report load progress. */
export interface LoadReporter {
  progress(bytesLoaded: number, bytesTotal: number, message?: string): void;
}

/** What a loaded shard tells the coordinator in its ready event. */
export interface LoadedShard {
  /** KV cache blocks allocated: the count asked for, or what the memory share held. */
  kvBlocks: number;
  /** tp > 1: the transport the stage's ranks chose for their collectives. */
  collective?: CollectiveTransportName;
}

/**
 * Loads the assigned shard. Resolving means ready; rejecting means failed (the error message is
 * reported). The signal aborts when the agent leaves.
 */
export type AssignmentHandler = (
  assignment: Assignment,
  reporter: LoadReporter,
  signal: AbortSignal,
) => Promise<LoadedShard>;

export interface WorkerAgentOptions {
  /** Connection owned by the caller; the agent never closes it. */
  nc: NatsConnection;
  cluster: string;
  workerId: string;
  /** host:port of this worker's gRPC server. */
  grpcAddress: string;
  /** host:port of its metrics server, when it runs one. */
  metricsAddress?: string;
  devices: DeviceInfo[];
  memoryBytes: number;
  /** Heartbeat period in ms (default 1000). */
  heartbeatIntervalMs?: number;
  onAssignment: AssignmentHandler;
  /** Called with messages that fail validation or publishes that fail; default: ignored. */
  onError?: (error: Error) => void;
}

export class WorkerAgent {
  private readonly subjects: ControlSubjects;
  private readonly subscriptions: Subscription[] = [];
  private readonly startedAt = Date.now();
  private readonly heartbeatIntervalMs: number;
  private readonly abort = new AbortController();
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private heartbeatSeq = 0;
  private lifecycle: WorkerLifecycleState = 'idle';
  private current: Assignment | undefined;

  private constructor(private readonly options: WorkerAgentOptions) {
    this.subjects = controlSubjects(options.cluster);
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 1000;
    if (!(this.heartbeatIntervalMs > 0)) {
      throw new WorkerAgentError(`heartbeatIntervalMs must be > 0, got ${this.heartbeatIntervalMs}`);
    }
  }

  /** Subscribes, announces the worker and starts heartbeats. */
  static async start(options: WorkerAgentOptions): Promise<WorkerAgent> {
    const agent = new WorkerAgent(options);
    await agent.begin();
    return agent;
  }

  get state(): WorkerLifecycleState {
    return this.lifecycle;
  }

  /** The current (loading, ready or failed) assignment. */
  get assignment(): Assignment | undefined {
    return this.current;
  }

  private async begin(): Promise<void> {
    const { nc, workerId } = this.options;
    this.subscriptions.push(
      nc.subscribe(this.subjects.assign(workerId), { callback: (err, msg) => this.onAssign(err, msg) }),
      nc.subscribe(this.subjects.discover, { callback: (err) => (err ? this.report(err) : this.announce()) }),
    );
    this.announce();
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.heartbeatIntervalMs);
    this.heartbeatTimer.unref();
    void nc.closed().then(() => this.stopTimers());
    await nc.flush();
  }

  private report(error: Error): void {
    this.options.onError?.(error);
  }

  private publish(subject: string, data: Uint8Array): void {
    try {
      this.options.nc.publish(subject, data);
    } catch (cause) {
      this.report(new WorkerAgentError(`cannot publish on ${subject}`, { cause }));
    }
  }

  private announce(): void {
    const { workerId, grpcAddress, metricsAddress, devices, memoryBytes } = this.options;
    this.publish(
      this.subjects.announce,
      controlCodecs.announce.encode({
        v: CONTROL_PROTOCOL_VERSION,
        workerId,
        grpcAddress,
        ...(metricsAddress ? { metricsAddress } : {}),
        devices,
        memoryBytes,
        heartbeatIntervalMs: this.heartbeatIntervalMs,
        startedAt: this.startedAt,
        // A coordinator that restarted re-adopts a worker that still holds its shard.
        state: this.lifecycle,
        ...(this.current ? { assignmentId: this.current.assignmentId } : {}),
      }),
    );
  }

  private heartbeat(): void {
    this.publish(
      this.subjects.heartbeat,
      controlCodecs.heartbeat.encode({
        v: CONTROL_PROTOCOL_VERSION,
        workerId: this.options.workerId,
        seq: this.heartbeatSeq++,
        state: this.lifecycle,
        ...(this.current ? { assignmentId: this.current.assignmentId } : {}),
        sentAt: Date.now(),
      }),
    );
  }

  private loadEvent(
    assignment: Assignment,
    phase: LoadPhase,
    bytesLoaded: number,
    bytesTotal: number,
    message?: string,
    kvBlocks?: number,
    collective?: CollectiveTransportName,
  ) {
    this.publish(
      this.subjects.load,
      controlCodecs.load.encode({
        v: CONTROL_PROTOCOL_VERSION,
        workerId: this.options.workerId,
        assignmentId: assignment.assignmentId,
        phase,
        bytesLoaded,
        bytesTotal,
        ...(message !== undefined ? { message } : {}),
        ...(kvBlocks !== undefined ? { kvBlocks } : {}),
        ...(collective !== undefined ? { collective } : {}),
      }),
    );
  }

  private reply(msg: Msg, assignmentId: string, accepted: boolean, error?: string): void {
    const data = controlCodecs.assignmentReply.encode({
      v: CONTROL_PROTOCOL_VERSION,
      workerId: this.options.workerId,
      assignmentId,
      accepted,
      ...(error !== undefined ? { error } : {}),
    });
    if (!msg.respond(data))
      this.report(new WorkerAgentError(`assignment ${assignmentId} came without a reply subject`));
  }

  private onAssign(err: Error | null, msg: Msg): void {
    if (err) {
      this.report(err);
      return;
    }
    let assignment: Assignment;
    try {
      assignment = controlCodecs.assignment.decode(msg.data);
    } catch (cause) {
      this.report(new WorkerAgentError('invalid assignment', { cause }));
      this.reply(msg, 'invalid', false, `invalid assignment: ${(cause as Error).message}`);
      return;
    }
    const same = this.current?.assignmentId === assignment.assignmentId;
    if (same && (this.lifecycle === 'loading' || this.lifecycle === 'ready')) {
      this.reply(msg, assignment.assignmentId, true); // a retried request: already accepted
      return;
    }
    if (this.lifecycle === 'loading' || this.lifecycle === 'leaving') {
      const reason =
        this.lifecycle === 'leaving'
          ? 'worker is leaving'
          : `busy loading assignment ${this.current?.assignmentId}`;
      this.reply(msg, assignment.assignmentId, false, reason);
      return;
    }
    this.current = assignment;
    this.lifecycle = 'loading';
    this.reply(msg, assignment.assignmentId, true);
    void this.load(assignment);
  }

  private async load(assignment: Assignment): Promise<void> {
    let lastLoaded = 0;
    let lastTotal = 0;
    const reporter: LoadReporter = {
      progress: (bytesLoaded, bytesTotal, message) => {
        if (this.current !== assignment || this.lifecycle !== 'loading') return;
        lastLoaded = bytesLoaded;
        lastTotal = bytesTotal;
        this.loadEvent(assignment, 'loading', bytesLoaded, bytesTotal, message);
      },
    };
    this.loadEvent(assignment, 'loading', 0, 0, 'accepted');
    try {
      const loaded = await this.options.onAssignment(assignment, reporter, this.abort.signal);
      if (this.current !== assignment || this.lifecycle !== 'loading') return;
      // Checked before the state changes: a ready event that fails to encode would leave the
      // worker ready while the coordinator waits for it forever.
      if (!(Number.isSafeInteger(loaded.kvBlocks) && loaded.kvBlocks >= 1)) {
        throw new WorkerAgentError(
          `the shard loaded with ${loaded.kvBlocks} KV cache blocks; it needs at least one`,
        );
      }
      this.lifecycle = 'ready';
      this.loadEvent(
        assignment,
        'ready',
        lastTotal || lastLoaded,
        lastTotal,
        undefined,
        loaded.kvBlocks,
        loaded.collective,
      );
    } catch (error) {
      if (this.current !== assignment || this.lifecycle !== 'loading') return;
      this.lifecycle = 'failed';
      this.loadEvent(
        assignment,
        'failed',
        lastLoaded,
        lastTotal,
        error instanceof Error ? error.message : String(error),
      );
    }
    this.heartbeat(); // tell the coordinator about the new state at once
  }

  private stopTimers(): void {
    if (this.heartbeatTimer !== undefined) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  /**
   * Leaves the cluster on purpose: aborts a load in progress, publishes WorkerLeave, stops
   * heartbeats and unsubscribes. Idempotent.
   */
  async leave(reason = 'shutdown'): Promise<void> {
    if (this.lifecycle === 'leaving') return;
    this.lifecycle = 'leaving';
    this.stopTimers();
    this.abort.abort(new WorkerAgentError(`worker ${this.options.workerId} is leaving: ${reason}`));
    for (const sub of this.subscriptions.splice(0)) sub.unsubscribe();
    if (this.options.nc.isClosed()) return;
    this.publish(
      this.subjects.leave,
      controlCodecs.leave.encode({ v: CONTROL_PROTOCOL_VERSION, workerId: this.options.workerId, reason }),
    );
    await this.options.nc.flush();
  }
}
