// Rank 0's side of a collective group: gathers every rank's contribution for a sequence number,
// reduces in rank order 0..n-1, and sends the result to every rank. A call whose ranks do not all
// arrive within the call deadline fails the whole group, naming the ranks that did not: a step
// never waits for ever on a peer that hangs.
import type { workerV1 } from '@medcluster/proto';
import { CollectiveError } from './collective-error.js';
import type { ExchangeCall, HostedGroup } from './collective-host.js';
import { type CollectiveOpName, FrameAssembler, toFrames } from './float32-frames.js';

/** Default deadline of one collective call: generous, since a slow rank is not a lost one. */
export const DEFAULT_CALL_TIMEOUT_MS = 30_000;

/** How often to look for calls past their deadline. */
export function watchdogPeriod(timeoutMs: number): number {
  return Math.max(20, Math.min(1000, timeoutMs / 4));
}

interface PendingReduction {
  op: CollectiveOpName;
  /** performance.now() of the first contribution. */
  since: number;
  parts: (Float32Array | undefined)[];
  received: number;
  resolve?: (parts: Float32Array[]) => void;
  reject?: (error: Error) => void;
}

interface Member {
  rank: number;
  call: ExchangeCall;
  assembling: Map<number, FrameAssembler>;
}

export class RootGroup implements HostedGroup {
  private readonly members: (Member | undefined)[];
  private readonly pending = new Map<number, PendingReduction>();
  private joinedCount = 1;
  private onAllJoined: (() => void) | undefined;
  private failure: CollectiveError | undefined;
  private readonly watchdog: NodeJS.Timeout;

  constructor(
    readonly name: string,
    readonly size: number,
    /** Addresses by rank, for error messages. */
    private readonly peers: readonly string[],
    /** How long a call waits for every rank's part before the group fails. */
    private readonly callTimeoutMs = DEFAULT_CALL_TIMEOUT_MS,
  ) {
    this.members = new Array(size).fill(undefined);
    this.watchdog = setInterval(() => this.checkDeadlines(), watchdogPeriod(callTimeoutMs));
    this.watchdog.unref();
  }

  /** Fails the group when a call's oldest contribution waited past the deadline. */
  private checkDeadlines(): void {
    const now = performance.now();
    for (const [seq, entry] of this.pending) {
      if (now - entry.since <= this.callTimeoutMs) continue;
      const missing = entry.parts.flatMap((p, r) => (p === undefined ? [this.describe(r)] : []));
      this.fail(
        `group ${this.name}: ${missing.join(', ')} did not arrive for call ${seq} (${entry.op}) within ${this.callTimeoutMs} ms`,
      );
      return;
    }
  }

  private describe(rank: number): string {
    return `rank ${rank} (${this.peers[rank] ?? 'unknown address'})`;
  }

  /** Resolves when every other rank has joined; rejects after timeoutMs naming the missing ranks. */
  waitForMembers(timeoutMs: number): Promise<void> {
    if (this.joinedCount === this.size) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const missing = this.members.flatMap((m, r) => (r > 0 && m === undefined ? [this.describe(r)] : []));
        reject(
          new CollectiveError(
            `group ${this.name}: ${missing.join(', ')} did not join within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      this.onAllJoined = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  attach(join: workerV1.CollectiveJoin__Output, call: ExchangeCall): void {
    if (this.failure) throw this.failure;
    if (join.size !== this.size) {
      throw new CollectiveError(
        `group ${this.name} has ${this.size} ranks, rank ${join.rank} says ${join.size}`,
      );
    }
    if (join.rank < 1 || join.rank >= this.size)
      throw new CollectiveError(`group ${this.name}: rank ${join.rank} out of range`);
    if (this.members[join.rank] !== undefined)
      throw new CollectiveError(`group ${this.name}: rank ${join.rank} already joined`);
    const member: Member = { rank: join.rank, call, assembling: new Map() };
    this.members[join.rank] = member;
    call.on('data', (message: workerV1.CollectiveMessage__Output) => this.onMessage(member, message));
    const gone = (how: string) => () => {
      if (this.members[member.rank] === member) this.fail(`${this.describe(member.rank)} ${how}`);
    };
    call.on('end', gone('left the group'));
    call.on('cancelled', gone('disconnected'));
    call.write({ join: { group: this.name, rank: 0, size: this.size } });
    if (++this.joinedCount === this.size) this.onAllJoined?.();
  }

  private onMessage(member: Member, message: workerV1.CollectiveMessage__Output): void {
    try {
      if (message.body === 'frame' && message.frame != null) {
        const frame = message.frame;
        let assembler = member.assembling.get(frame.seq);
        if (assembler === undefined) {
          assembler = new FrameAssembler(frame.op, frame);
          member.assembling.set(frame.seq, assembler);
        }
        if (assembler.add(frame)) {
          member.assembling.delete(frame.seq);
          this.contribute(frame.seq, member.rank, frame.op as CollectiveOpName, assembler.data);
        }
      } else if (message.body === 'abort' && message.abort != null) {
        this.fail(`${this.describe(member.rank)} aborted: ${message.abort.message}`);
      }
    } catch (error) {
      this.fail(
        `group ${this.name}: bad message from ${this.describe(member.rank)}: ${(error as Error).message}`,
      );
    }
  }

  /** Rank 0's own part of the call with sequence number seq. */
  local(seq: number, op: CollectiveOpName, data: Float32Array): Promise<Float32Array[]> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const entry = this.entry(seq, op);
      entry.resolve = resolve;
      entry.reject = reject;
      this.contribute(seq, 0, op, data.slice());
    });
  }

  private entry(seq: number, op: CollectiveOpName): PendingReduction {
    let entry = this.pending.get(seq);
    if (entry === undefined) {
      entry = { op, since: performance.now(), parts: new Array(this.size).fill(undefined), received: 0 };
      this.pending.set(seq, entry);
    }
    return entry;
  }

  private contribute(seq: number, rank: number, op: CollectiveOpName, data: Float32Array): void {
    if (this.failure) return;
    const entry = this.entry(seq, op);
    if (entry.op !== op) {
      this.fail(
        `group ${this.name}: seq ${seq} is ${entry.op} on one rank but ${op} on ${this.describe(rank)}`,
      );
      return;
    }
    if (entry.parts[rank] !== undefined) {
      this.fail(`group ${this.name}: ${this.describe(rank)} sent seq ${seq} twice`);
      return;
    }
    entry.parts[rank] = data;
    if (++entry.received === this.size) this.complete(seq, entry);
  }

  private complete(seq: number, entry: PendingReduction): void {
    this.pending.delete(seq);
    const parts = entry.parts as Float32Array[];
    if (entry.op === 'COLLECTIVE_OP_ALL_REDUCE_SUM') {
      const n = parts[0].length;
      const bad = parts.findIndex((p) => p.length !== n);
      if (bad >= 0) {
        this.pending.set(seq, entry); // so that fail() rejects rank 0's own call too
        this.fail(
          `group ${this.name}: all_reduce_sum seq ${seq} lengths differ: ${parts.map((p, r) => `rank ${r}: ${p.length}`).join(', ')}`,
        );
        return;
      }
      // Rank order 0..n-1, each step rounded to float32: every rank receives these exact bits.
      const sum = parts[0].slice();
      for (let r = 1; r < parts.length; r++) {
        const p = parts[r];
        for (let i = 0; i < n; i++) sum[i] += p[i];
      }
      for (const member of this.members) {
        if (member) for (const frame of toFrames(entry.op, seq, 0, sum)) member.call.write({ frame });
      }
      entry.resolve?.([sum]);
      return;
    }
    const counts = parts.map((p) => p.length);
    const all = new Float32Array(counts.reduce((a, b) => a + b, 0));
    let offset = 0;
    for (const p of parts) {
      all.set(p, offset);
      offset += p.length;
    }
    for (const member of this.members) {
      if (member) for (const frame of toFrames(entry.op, seq, 0, all, counts)) member.call.write({ frame });
    }
    entry.resolve?.(parts);
  }

  /** Fails the whole group: pending calls reject, every rank is told, streams end. */
  fail(message: string): void {
    if (this.failure) return;
    clearInterval(this.watchdog);
    this.failure = new CollectiveError(message);
    for (const entry of this.pending.values()) entry.reject?.(this.failure);
    this.pending.clear();
    for (const [rank, member] of this.members.entries()) {
      if (!member) continue;
      this.members[rank] = undefined;
      try {
        member.call.write({ abort: { seq: 0, message, fatal: true } });
        member.call.end();
      } catch {
        // the stream is already gone
      }
    }
  }

  get error(): CollectiveError | undefined {
    return this.failure;
  }
}
