// The coordinator's side of the NATS control plane: which workers exist, whether they are alive,
// and handing them assignments. Emits joined / returned / progress / ready / failed / lost / left,
// and refused for a worker that announced itself but failed the admission check (`admit`).
// While the coordinator's own NATS connection is down no worker can be heard, so none is declared
// lost for it: liveness checks pause, and on reconnect every worker's clock restarts and every
// worker is asked to announce itself again (membership resynchronizes without false losses).

import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import {
  type Assignment,
  CONTROL_PROTOCOL_VERSION,
  type CollectiveTransportName,
  type ControlCodec,
  ControlMessageError,
  type ControlSubjects,
  controlCodecs,
  controlSubjects,
  type DeviceInfo,
  type LoadEvent,
  type WorkerLifecycleState,
} from '@medcluster/proto';
import { Events, type Msg, type NatsConnection, type Status, type Subscription } from 'nats';

/** A control-plane failure on the coordinator side. */
export class WorkerRegistryError extends Error {
  override name = 'WorkerRegistryError';
}

/** An assignment that was refused, failed, timed out, or whose worker went away. */
export class AssignmentError extends WorkerRegistryError {
  override name = 'AssignmentError';
  constructor(
    message: string,
    readonly workerId: string,
    readonly assignmentId: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export type WorkerRecordState = WorkerLifecycleState | 'lost';

/** What the registry knows about one worker (a snapshot; the registry never mutates a returned record). */
export interface WorkerRecord {
  id: string;
  grpcAddress: string;
  /** host:port of the worker's /metrics, when it serves one. */
  metricsAddress?: string;
  devices: DeviceInfo[];
  memoryBytes: number;
  heartbeatIntervalMs: number;
  startedAt: number;
  state: WorkerRecordState;
  assignmentId?: string;
  /** Latest load progress of the current assignment. */
  bytesLoaded: number;
  bytesTotal: number;
  /** Failure message of the current assignment, when state is failed. */
  error?: string;
  /** KV cache blocks the worker allocated for the current assignment, once it is ready. */
  kvBlocks?: number;
  /** tp > 1, once ready: the collective transport its stage chose. */
  collective?: CollectiveTransportName;
  /** performance.now() of the last message from the worker. */
  lastSeenMs: number;
}

export interface WorkerRegistryEvents {
  joined: [worker: WorkerRecord];
  /** A lost worker sent heartbeats again. */
  returned: [worker: WorkerRecord];
  progress: [worker: WorkerRecord, event: LoadEvent];
  ready: [worker: WorkerRecord];
  failed: [worker: WorkerRecord, message: string];
  /** No heartbeat within heartbeatTimeoutMs. */
  lost: [worker: WorkerRecord];
  /** The coordinator's NATS connection dropped (true) or came back (false). */
  disconnected: [down: boolean];
  left: [worker: WorkerRecord, reason: string];
  /** A worker that failed `admit`: it is not counted until it restarts (and passes). */
  refused: [worker: WorkerRecord, reason: string];
  /** A message that failed validation (the registry carries on). */
  invalidMessage: [error: ControlMessageError, subject: string];
}

export interface WorkerRegistryOptions {
  /** Connection owned by the caller; the registry never closes it. */
  nc: NatsConnection;
  cluster: string;
  coordinatorId?: string;
  /** A worker with no message for this long is lost (default 5000 ms). */
  heartbeatTimeoutMs?: number;
  /** How often to look for lost workers (default heartbeatTimeoutMs / 4, at most 1000 ms). */
  checkIntervalMs?: number;
  /**
   * Asked of every worker that announces itself (first, or after a restart) before it joins; a
   * rejection refuses that process, with the rejection's message as the reason. The
   * coordinator's mutual TLS check of the worker's certificate goes here.
   */
  admit?: (worker: WorkerRecord) => Promise<void>;
}

export interface AssignOptions {
  /** How long the worker has to accept (default 5000 ms). */
  ackTimeoutMs?: number;
  /** How long the worker has to become ready after accepting (default 600000 ms). */
  readyTimeoutMs?: number;
}

/** An Assignment without the envelope fields the registry fills in. */
export type AssignmentSpec = Omit<Assignment, 'v' | 'assignmentId'> & { assignmentId?: string };

interface ReadyWaiter {
  assignmentId: string;
  resolve: (worker: WorkerRecord) => void;
  reject: (error: AssignmentError) => void;
}

export class WorkerRegistry extends EventEmitter<WorkerRegistryEvents> {
  private readonly subjects: ControlSubjects;
  private readonly records = new Map<string, WorkerRecord>();
  private readonly waiters = new Map<string, ReadyWaiter>();
  private readonly subscriptions: Subscription[] = [];
  private readonly heartbeatTimeoutMs: number;
  private readonly coordinatorId: string;
  private checkTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** True while the NATS connection is down: nothing can be heard, so nobody is lost for it. */
  private disconnected = false;
  private statusIterator: (AsyncIterable<Status> & { stop?: () => void }) | undefined;
  /** Worker processes (id -> startedAt) being admitted, and those refused. */
  private readonly admitting = new Map<string, number>();
  private readonly refused = new Map<string, number>();

  private constructor(private readonly options: WorkerRegistryOptions) {
    super();
    this.subjects = controlSubjects(options.cluster);
    this.heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? 5000;
    this.coordinatorId = options.coordinatorId ?? `coordinator-${randomUUID()}`;
    if (!(this.heartbeatTimeoutMs > 0)) {
      throw new WorkerRegistryError(`heartbeatTimeoutMs must be > 0, got ${this.heartbeatTimeoutMs}`);
    }
  }

  /** Subscribes to the worker subjects and asks every running worker to announce itself. */
  static async start(options: WorkerRegistryOptions): Promise<WorkerRegistry> {
    const registry = new WorkerRegistry(options);
    await registry.begin();
    return registry;
  }

  private async begin(): Promise<void> {
    const { nc } = this.options;
    const on = <T>(subject: string, codec: ControlCodec<T>, handle: (message: T) => void) =>
      nc.subscribe(subject, {
        callback: (err, msg) => {
          if (err) return;
          let message: T;
          try {
            message = codec.decode(msg.data);
          } catch (error) {
            if (error instanceof ControlMessageError) this.emit('invalidMessage', error, subject);
            return;
          }
          handle(message);
        },
      });
    this.subscriptions.push(
      on(this.subjects.announce, controlCodecs.announce, (m) => this.onAnnounce(m)),
      on(this.subjects.heartbeat, controlCodecs.heartbeat, (m) => this.onHeartbeat(m)),
      on(this.subjects.load, controlCodecs.load, (m) => this.onLoad(m)),
      on(this.subjects.leave, controlCodecs.leave, (m) => this.onLeave(m.workerId, m.reason)),
    );
    const interval = this.options.checkIntervalMs ?? Math.min(this.heartbeatTimeoutMs / 4, 1000);
    this.checkTimer = setInterval(() => this.checkLiveness(), interval);
    this.checkTimer.unref();
    void this.followConnection(nc);
    await nc.flush();
    this.discover();
  }

  /** Pauses liveness while the connection is down; resynchronizes membership when it is back. */
  private async followConnection(nc: NatsConnection): Promise<void> {
    this.statusIterator = nc.status() as AsyncIterable<Status> & { stop?: () => void };
    for await (const status of this.statusIterator) {
      if (this.closed) break;
      if (status.type === Events.Disconnect && !this.disconnected) {
        this.disconnected = true;
        this.emit('disconnected', true);
      } else if (status.type === Events.Reconnect) {
        // Silence during the outage says nothing about the workers: their clocks start again.
        const now = performance.now();
        for (const record of this.records.values()) record.lastSeenMs = now;
        this.disconnected = false;
        this.emit('disconnected', false);
        this.discover();
      }
    }
  }

  /** Whether the coordinator's NATS connection is down. */
  get connectionDown(): boolean {
    return this.disconnected;
  }

  /** Asks every worker to announce itself again. */
  discover(): void {
    this.options.nc.publish(
      this.subjects.discover,
      controlCodecs.discover.encode({ v: CONTROL_PROTOCOL_VERSION, coordinatorId: this.coordinatorId }),
    );
  }

  /** Snapshots of every known worker (lost and left ones included until they are forgotten). */
  workers(): WorkerRecord[] {
    return [...this.records.values()].map((r) => ({ ...r }));
  }

  get(workerId: string): WorkerRecord | undefined {
    const record = this.records.get(workerId);
    return record ? { ...record } : undefined;
  }

  private update(workerId: string, change: Partial<WorkerRecord>): WorkerRecord | undefined {
    const record = this.records.get(workerId);
    if (record === undefined) return undefined;
    Object.assign(record, change);
    return { ...record };
  }

  private onAnnounce(m: Parameters<typeof controlCodecs.announce.encode>[0]): void {
    const previous = this.records.get(m.workerId);
    const restarted = previous !== undefined && previous.startedAt !== m.startedAt;
    if (previous !== undefined && !restarted && previous.state !== 'leaving') {
      const wasLost = previous.state === 'lost';
      const record = this.update(m.workerId, {
        grpcAddress: m.grpcAddress,
        metricsAddress: m.metricsAddress,
        lastSeenMs: performance.now(),
        ...(wasLost ? { state: m.state ?? 'idle' } : {}),
        ...(wasLost && m.assignmentId !== undefined ? { assignmentId: m.assignmentId } : {}),
      });
      // The same process, heard again (it hung, or its messages could not get through).
      if (wasLost && record) this.emit('returned', record);
      return;
    }
    if (previous?.assignmentId !== undefined && restarted) {
      this.failWaiter(
        m.workerId,
        `worker ${m.workerId} restarted while loading assignment ${previous.assignmentId}`,
      );
    }
    if (this.options.admit) {
      if (this.admitting.get(m.workerId) === m.startedAt || this.refused.get(m.workerId) === m.startedAt)
        return;
    }
    const record: WorkerRecord = {
      id: m.workerId,
      grpcAddress: m.grpcAddress,
      ...(m.metricsAddress ? { metricsAddress: m.metricsAddress } : {}),
      devices: m.devices,
      memoryBytes: m.memoryBytes,
      heartbeatIntervalMs: m.heartbeatIntervalMs,
      startedAt: m.startedAt,
      // A worker that already holds a shard (it outlived the coordinator) says which.
      state: m.state ?? 'idle',
      ...(m.assignmentId !== undefined ? { assignmentId: m.assignmentId } : {}),
      bytesLoaded: 0,
      bytesTotal: 0,
      lastSeenMs: performance.now(),
    };
    const { admit } = this.options;
    if (admit === undefined) {
      this.join(record);
      return;
    }
    this.admitting.set(m.workerId, m.startedAt);
    admit({ ...record }).then(
      () => {
        if (this.admitting.get(m.workerId) === m.startedAt) this.admitting.delete(m.workerId);
        if (this.closed) return;
        this.refused.delete(m.workerId);
        this.join(record);
      },
      (error: unknown) => {
        if (this.admitting.get(m.workerId) === m.startedAt) this.admitting.delete(m.workerId);
        if (this.closed) return;
        this.refused.set(m.workerId, m.startedAt);
        // A restarted worker that is refused: the process that had joined is gone.
        const known = this.records.get(m.workerId);
        if (known && known.state !== 'lost' && known.state !== 'leaving') {
          known.state = 'lost';
          this.failWaiter(m.workerId, `worker ${m.workerId} restarted and was refused`);
          this.emit('lost', { ...known });
        }
        this.emit('refused', { ...record }, error instanceof Error ? error.message : String(error));
      },
    );
  }

  private join(record: WorkerRecord): void {
    this.records.set(record.id, record);
    this.emit('joined', { ...record });
  }

  private onHeartbeat(m: Parameters<typeof controlCodecs.heartbeat.encode>[0]): void {
    // A refused worker is not asked to announce again until it restarts (it announces then).
    if (this.refused.has(m.workerId) || this.admitting.has(m.workerId)) return;
    const record = this.records.get(m.workerId);
    if (record === undefined || record.state === 'leaving') {
      this.discover(); // a worker we do not know (we started after it): make it announce
      return;
    }
    const wasLost = record.state === 'lost';
    record.lastSeenMs = performance.now();
    if (wasLost) {
      record.state = m.state;
      if (m.assignmentId !== undefined) record.assignmentId = m.assignmentId;
      this.emit('returned', { ...record });
    } else if (m.state === 'failed' && record.state === 'ready') {
      // A ready worker whose engine failed says so in its heartbeats.
      record.state = 'failed';
      this.emit('failed', { ...record }, record.error ?? 'the worker reports itself failed');
    }
  }

  private onLoad(m: LoadEvent): void {
    const record = this.records.get(m.workerId);
    if (record === undefined) return;
    record.lastSeenMs = performance.now();
    if (record.assignmentId !== m.assignmentId) {
      record.assignmentId = m.assignmentId;
      delete record.error;
      delete record.kvBlocks;
      delete record.collective;
    }
    record.bytesLoaded = m.bytesLoaded;
    record.bytesTotal = m.bytesTotal;
    const waiter = this.waiters.get(m.workerId);
    const forWaiter = waiter?.assignmentId === m.assignmentId ? waiter : undefined;
    switch (m.phase) {
      case 'loading':
        record.state = 'loading';
        this.emit('progress', { ...record }, m);
        break;
      case 'ready':
        record.state = 'ready';
        record.kvBlocks = m.kvBlocks;
        if (m.collective !== undefined) record.collective = m.collective;
        if (forWaiter) {
          this.waiters.delete(m.workerId);
          forWaiter.resolve({ ...record });
        }
        this.emit('ready', { ...record });
        break;
      case 'failed': {
        const message = m.message ?? 'unknown error';
        record.state = 'failed';
        record.error = message;
        if (forWaiter) {
          this.waiters.delete(m.workerId);
          forWaiter.reject(
            new AssignmentError(
              `worker ${m.workerId} failed to load assignment ${m.assignmentId}: ${message}`,
              m.workerId,
              m.assignmentId,
            ),
          );
        }
        this.emit('failed', { ...record }, message);
        break;
      }
    }
  }

  private onLeave(workerId: string, reason: string): void {
    const record = this.update(workerId, { state: 'leaving', lastSeenMs: performance.now() });
    if (record === undefined) return;
    this.failWaiter(workerId, `worker ${workerId} left (${reason})`);
    this.emit('left', record, reason);
  }

  private failWaiter(workerId: string, message: string): void {
    const waiter = this.waiters.get(workerId);
    if (waiter === undefined) return;
    this.waiters.delete(workerId);
    waiter.reject(
      new AssignmentError(
        `${message} before assignment ${waiter.assignmentId} became ready`,
        workerId,
        waiter.assignmentId,
      ),
    );
  }

  private checkLiveness(): void {
    if (this.disconnected) return;
    const now = performance.now();
    for (const record of this.records.values()) {
      if (record.state === 'lost' || record.state === 'leaving') continue;
      const silentMs = now - record.lastSeenMs;
      if (silentMs > this.heartbeatTimeoutMs) {
        record.state = 'lost';
        this.failWaiter(
          record.id,
          `worker ${record.id} was lost (no heartbeat for ${Math.round(silentMs)} ms)`,
        );
        this.emit('lost', { ...record });
      }
    }
  }

  /** Resolves with the first count workers that are known and not lost or leaving. */
  waitForWorkers(count: number, timeoutMs: number): Promise<WorkerRecord[]> {
    const alive = () => this.workers().filter((w) => w.state !== 'lost' && w.state !== 'leaving');
    if (alive().length >= count) return Promise.resolve(alive().slice(0, count));
    return new Promise((resolve, reject) => {
      const onJoin = () => {
        const now = alive();
        if (now.length >= count) {
          cleanup();
          resolve(now.slice(0, count));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new WorkerRegistryError(`only ${alive().length} of ${count} workers joined within ${timeoutMs} ms`),
        );
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off('joined', onJoin);
        this.off('returned', onJoin);
      };
      this.on('joined', onJoin);
      this.on('returned', onJoin);
    });
  }

  /**
   * Sends an assignment to a worker (request/reply), then waits until it reports ready. Rejects
   * with AssignmentError when the worker refuses, fails, is lost, leaves, or times out.
   */
  async assign(workerId: string, spec: AssignmentSpec, options: AssignOptions = {}): Promise<WorkerRecord> {
    if (this.closed) throw new WorkerRegistryError('registry is closed');
    const assignmentId = spec.assignmentId ?? randomUUID();
    const record = this.records.get(workerId);
    if (record === undefined || record.state === 'lost' || record.state === 'leaving') {
      const why = record === undefined ? 'is not known' : `is ${record.state}`;
      throw new AssignmentError(
        `cannot assign ${assignmentId}: worker ${workerId} ${why}`,
        workerId,
        assignmentId,
      );
    }
    if (this.waiters.has(workerId)) {
      throw new AssignmentError(
        `cannot assign ${assignmentId}: worker ${workerId} is still loading assignment ${this.waiters.get(workerId)?.assignmentId}`,
        workerId,
        assignmentId,
      );
    }
    const assignment: Assignment = { ...spec, v: CONTROL_PROTOCOL_VERSION, assignmentId };
    const data = controlCodecs.assignment.encode(assignment);
    const readyTimeoutMs = options.readyTimeoutMs ?? 600_000;
    let timer: NodeJS.Timeout | undefined;
    // Register the waiter before sending, so a fast ready cannot slip past.
    const ready = new Promise<WorkerRecord>((resolve, reject) => {
      this.waiters.set(workerId, { assignmentId, resolve, reject });
    });
    ready.catch(() => undefined);
    try {
      let reply: Msg;
      try {
        reply = await this.options.nc.request(this.subjects.assign(workerId), data, {
          timeout: options.ackTimeoutMs ?? 5000,
        });
      } catch (cause) {
        throw new AssignmentError(
          `worker ${workerId} did not accept assignment ${assignmentId}: ${(cause as Error).message}`,
          workerId,
          assignmentId,
          { cause },
        );
      }
      const ack = controlCodecs.assignmentReply.decode(reply.data);
      if (!ack.accepted) {
        throw new AssignmentError(
          `worker ${workerId} refused assignment ${assignmentId}: ${ack.error ?? 'no reason given'}`,
          workerId,
          assignmentId,
        );
      }
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new AssignmentError(
                `worker ${workerId} did not become ready with assignment ${assignmentId} within ${readyTimeoutMs} ms`,
                workerId,
                assignmentId,
              ),
            ),
          readyTimeoutMs,
        );
      });
      return await Promise.race([ready, timeout]);
    } finally {
      clearTimeout(timer);
      if (this.waiters.get(workerId)?.assignmentId === assignmentId) this.waiters.delete(workerId);
    }
  }

  /** Stops listening; pending assign() calls reject. Does not close the NATS connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.checkTimer);
    this.statusIterator?.stop?.();
    for (const sub of this.subscriptions.splice(0)) sub.unsubscribe();
    for (const [workerId, waiter] of [...this.waiters]) {
      this.waiters.delete(workerId);
      waiter.reject(
        new AssignmentError(
          `registry closed while assignment ${waiter.assignmentId} was loading`,
          workerId,
          waiter.assignmentId,
        ),
      );
    }
    if (!this.options.nc.isClosed()) await this.options.nc.flush();
  }
}
