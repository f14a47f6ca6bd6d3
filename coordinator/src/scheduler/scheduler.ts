// Continuous batching with paged KV memory.
//
// One step is: choose the batch (`schedule`), run it (`executor.execute`), apply the results
// (`apply`). Choosing takes, oldest sequence first, one token for every decoding sequence, then
// prompt chunks of running sequences, then new sequences from the waiting queue (first come,
// first served), within `maxBatchTokens` tokens and `maxRunning` sequences. KV blocks are
// allocated as sequences grow. When a running sequence needs a block and none is free, the
// newest idle running sequence is preempted: its blocks are freed and it goes back to the front
// of the queue to be recomputed later (prompt and generated tokens alike, which the CPU
// backend's batch invariance makes give the same tokens). New sequences never preempt running
// ones. With a pipelined executor up to `maxInFlight` steps on disjoint sequences run at once.
//
// Follow-on steps: where the executor takes sampled inputs (a single stage), a decoding
// sequence's next step is sent while its current one still runs, fed on the device with the
// token that step samples, so the device never waits for the host between steps. One step more
// than maxInFlight may then be out, and only if it has such a row; it is applied after the step
// it follows. A sequence that the earlier step ends (a stop token or string) has computed one
// position too many, which nothing reads. Sequences whose sampling needs the generated ids
// (penalties) wait for their tokens instead.
//
// Failure scope: an error in a step fails the requests in that step (RequestFailedError), frees
// their KV blocks, and leaves every other request running. Losing a worker is different
// (ExecutorUnavailableError, or suspend() from the cluster): the KV cache of every running
// sequence may be gone, so the scheduler suspends itself; requests that already streamed tokens
// fail at once with a retryable error, the others go back to the queue and are re-run from their
// prompt after resume(). While suspended no step is sent; requests wait at most `degradedWaitMs`.
// A step sent before a suspension that fails afterwards belongs to that incident: its sequences
// were already re-queued or failed, so it does not suspend the scheduler again. A cancelled request (its signal
// aborted: a client disconnect, a gRPC cancel, a deadline) frees its blocks at once in every
// state, in a step in flight included: every stage runs steps in order, so a later step that
// reuses the blocks writes them after the stale step did, and reads only what it wrote.
//
// Invariant, checked by the tests: once nothing is running or waiting, every block is free.

import {
  penalizes,
  returnsLogits,
  type SampledToken,
  type SamplingParams,
  type SeqStep,
  type StepOutput,
  type TokenLogprob,
  tokenLogprob,
  validateSampling,
} from '@medcluster/worker';
import type { BlockAllocator } from './block-allocator.js';
import { QueueFullError, RequestError, RequestFailedError } from './errors.js';
import {
  monotonicSeconds,
  type RequestOutcome,
  type RequestTiming,
  type SchedulerEvent,
  type SchedulerObserver,
} from './events.js';
import { ExecutorUnavailableError, type StepExecutor } from './executor.js';

export type FinishReason = 'length' | 'eos' | 'stop' | 'cancelled';

export interface GenerationRequest {
  /** Names the request in events and logs. */
  requestId: string;
  promptIds: readonly number[];
  /** Most tokens each choice generates. */
  maxTokens: number;
  /** Choices generated independently from the prompt (each its own sequence). */
  n: number;
  /** Sampling, stop token ids and min_tokens; the same for every choice (choices differ by key). */
  sampling: SamplingParams;
  /**
   * Called with each generated token of a choice, in order (not with the stop token that ends
   * it). Return true to end that choice (a stop string matched). Throwing fails the request.
   */
  onToken?: (choice: number, token: SampledToken) => boolean | undefined;
  /**
   * Also return each prompt token's logprob (after the first): the logits of every prompt
   * position come back from the model for it, which costs a full vocabulary row per token.
   */
  promptLogprobs?: boolean;
  /** Called once per choice when it ends, before the request resolves. */
  onFinish?: (choice: ChoiceResult) => void;
  signal?: AbortSignal;
}

export interface ChoiceResult {
  index: number;
  /** Generated tokens, without the stop token that ended the choice. */
  tokens: SampledToken[];
  finishReason: FinishReason;
  /** The stop token id that ended the choice, when finishReason is 'stop' by token. */
  stopTokenId?: number;
}

export interface GenerationResult {
  requestId: string;
  promptTokens: number;
  choices: ChoiceResult[];
  timing: RequestTiming;
  /** Prompt tokens 1..n-1 with the logprob the model gave each, when asked for. */
  promptLogprobs?: TokenLogprob[];
}

export interface SchedulerLimits {
  /** Most tokens in one step (prefill chunks plus decodes). */
  maxBatchTokens: number;
  /** Most sequences running (holding KV blocks) at once. */
  maxRunning: number;
  /** Most sequences waiting for admission; a request that would exceed it gets QueueFullError. */
  maxWaiting: number;
  /** Longest sequence (prompt + generated) the model accepts. */
  maxContext: number;
  /** The model's end-of-sequence id: a stop token that ends with reason 'eos' instead of 'stop'. */
  eosTokenId: number;
  /** While suspended (a worker lost), how long a request may wait before it fails (default 60 s). */
  degradedWaitMs?: number;
}

/** Requests past this many choices are refused (each choice is a full sequence). */
export const MAX_CHOICES = 16;

type SeqState = 'waiting' | 'running' | 'done';

interface Sequence {
  id: string;
  /** Admission order of every sequence ever submitted: lower is older. */
  order: number;
  request: RequestState;
  choice: number;
  /** Prompt then generated ids. */
  tokens: number[];
  promptLength: number;
  generated: SampledToken[];
  /** Positions whose KV is in the cache. */
  computed: number;
  blocks: number[];
  state: SeqState;
  /** Steps in flight with a row of this sequence. */
  inFlight: number;
  /** The step in flight that samples this sequence's next token. */
  sampling?: StepPlan;
  finishReason?: FinishReason;
  stopTokenId?: number;
  /** Choice 0 of a request that asked: each prompt position's logprob once computed (index = position). */
  promptLogprobs?: (number | undefined)[];
}

interface RequestState {
  request: GenerationRequest;
  sequences: Sequence[];
  arrival: number;
  firstScheduled?: number;
  firstToken?: number;
  /** Set once the request resolved or rejected; nothing more happens to it. */
  settled: boolean;
  /** Whether a generated token was handed out (it can no longer be re-run unseen). */
  streamed: boolean;
  resolve: (r: GenerationResult) => void;
  reject: (e: Error) => void;
}

/** One row of a step: `count` positions of `seq` from `start`, the last `logitRows` wanting logits. */
interface PlannedRow {
  seq: Sequence;
  start: number;
  count: number;
  logitRows: number;
  /** A follow-on row: position `start` takes the token that the step in flight samples. */
  followOn?: boolean;
}

interface StepPlan {
  id: number;
  /** The scheduler's suspension count when the step was sent. */
  epoch: number;
  rows: PlannedRow[];
  promptTokens: number;
  decodeTokens: number;
  /** The step whose sampled tokens this one's follow-on rows take: applied first. */
  follows?: StepPlan;
  /** When the executor answered (monotonic seconds). */
  answered?: number;
  /** Settles once the step's results are applied (or it failed). */
  applied: Promise<void>;
  markApplied: () => void;
}

/** Whether a planned row samples its sequence's next token. */
function samples({ seq, start, count, followOn }: PlannedRow): boolean {
  return followOn === true || start + count === seq.tokens.length;
}

/** A planned row as the executor takes it: the next token is sampled where the row ends the sequence. */
function seqStepOf(row: PlannedRow): SeqStep {
  const { seq, start, count, logitRows, followOn } = row;
  const { sampling, requestId } = seq.request.request;
  // A follow-on row's token is the one the step in flight samples: one more than the host has.
  const known = followOn ? 1 : 0;
  return {
    seqId: seq.id,
    requestId,
    startPos: start,
    numTokens: count,
    ...(followOn ? { sampledInput: true } : { tokens: seq.tokens.slice(start, start + count) }),
    // A copy: a cancellation frees the sequence's table while the step is in flight.
    blockTable: [...seq.blocks],
    logitRows,
    ...(samples(row)
      ? {
          sample: {
            params: sampling,
            key: { seed: sampling.seed, choice: seq.choice, position: seq.tokens.length + known },
            generated: {
              count: seq.generated.length + known,
              ids: penalizes(sampling) ? seq.generated.map((t) => t.id) : [],
            },
          },
        }
      : {}),
  };
}

/** Whether a chunk of `seq` from `start` scores prompt tokens whose logprob is still unknown. */
function needsPromptLogits(seq: Sequence, start: number, count: number): boolean {
  const scores = seq.promptLogprobs;
  if (!scores) return false;
  for (let next = start + 1; next <= Math.min(start + count, seq.promptLength - 1); next++) {
    if (scores[next] === undefined) return true;
  }
  return false;
}

function choiceResult(s: Sequence): ChoiceResult {
  return {
    index: s.choice,
    tokens: s.generated,
    finishReason: s.finishReason ?? 'cancelled',
    ...(s.stopTokenId === undefined ? {} : { stopTokenId: s.stopTokenId }),
  };
}

/** Inserts `seq` into a list kept in age order (oldest first). */
function insertByAge(list: Sequence[], seq: Sequence): void {
  const at = list.findIndex((s) => s.order > seq.order);
  list.splice(at < 0 ? list.length : at, 0, seq);
}

export class Scheduler {
  /** Both in age order, oldest first. */
  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = [];
  private readonly observers = new Set<SchedulerObserver>();
  private inFlight = 0;
  /** The step sent last: only its sampled tokens can feed follow-on rows. */
  private latest?: StepPlan;
  private nextOrder = 0;
  private nextStepId = 1;
  private closing = false;
  private drained?: () => void;
  /** Why no step may run (a worker lost), and since when; undefined while serving. */
  private suspended?: { reason: string; since: number; timer: NodeJS.Timeout };
  /** Suspensions so far: a step remembers the count it was sent under. */
  private epoch = 0;

  constructor(
    private readonly executor: StepExecutor,
    private readonly blocks: BlockAllocator,
    readonly limits: SchedulerLimits,
  ) {}

  /** Subscribes to events; returns the unsubscribe function. */
  observe(observer: SchedulerObserver): () => void {
    this.observers.add(observer);
    return () => this.observers.delete(observer);
  }

  get stats() {
    return {
      waiting: this.waiting.length,
      running: this.running.length,
      stepsInFlight: this.inFlight,
      freeBlocks: this.blocks.freeBlocks,
      totalBlocks: this.blocks.numBlocks,
      suspended: this.suspended?.reason,
    };
  }

  /**
   * Part of the pipeline is gone (a worker died): stop sending steps. Requests that streamed
   * tokens fail now with a retryable RequestFailedError; every other running sequence gives its
   * blocks back and waits to be re-run from its prompt. Idempotent.
   */
  suspend(reason: string, source: 'cluster' | 'executor' = 'cluster'): void {
    if (!this.suspended) {
      const timer = setInterval(() => this.expireWaiting(), 250);
      timer.unref();
      this.epoch++;
      this.suspended = { reason, since: monotonicSeconds(), timer };
      this.emit({ type: 'suspended', time: monotonicSeconds(), reason, source });
    }
    for (const seq of [...this.running]) {
      if (seq.state !== 'running') continue;
      if (seq.request.streamed) {
        this.fail(
          seq.request,
          new RequestFailedError(`${reason}; the request had streamed tokens and cannot continue: retry it`),
        );
      } else this.requeue(seq);
    }
  }

  /** The pipeline is whole again: steps run again, re-run requests first (they are the oldest). */
  resume(): void {
    if (!this.suspended) return;
    clearInterval(this.suspended.timer);
    this.suspended = undefined;
    this.emit({ type: 'resumed', time: monotonicSeconds() });
    this.pump();
  }

  /** While suspended: fails the requests that waited longer than degradedWaitMs. */
  private expireWaiting(): void {
    if (!this.suspended) return;
    const limit = (this.limits.degradedWaitMs ?? 60_000) / 1000;
    const now = monotonicSeconds();
    const expired = new Set(
      this.waiting
        .filter((s) => now - Math.max(s.request.arrival, this.suspended?.since ?? now) > limit)
        .map((s) => s.request),
    );
    for (const r of expired) {
      this.fail(
        r,
        new RequestFailedError(
          `the cluster is degraded (${this.suspended.reason}) and did not recover in ${limit} s`,
        ),
      );
    }
  }

  /**
   * Queues a request; resolves when every choice finished (or the request was cancelled).
   * Rejects with RequestError for an invalid request, QueueFullError when the waiting queue is
   * full, RequestFailedError when a step it was in failed or the scheduler is closing.
   */
  submit(request: GenerationRequest): Promise<GenerationResult> {
    const time = monotonicSeconds();
    try {
      this.validate(request);
    } catch (err) {
      this.emit({ type: 'rejected', time, requestId: request.requestId, reason: 'invalid' });
      return Promise.reject(err);
    }
    if (this.closing) {
      this.emit({ type: 'rejected', time, requestId: request.requestId, reason: 'closing' });
      return Promise.reject(new RequestFailedError('the server is shutting down'));
    }
    if (this.waiting.length + request.n > this.limits.maxWaiting) {
      this.emit({ type: 'rejected', time, requestId: request.requestId, reason: 'queue-full' });
      return Promise.reject(new QueueFullError(this.waiting.length, this.limits.maxWaiting));
    }
    return new Promise((resolve, reject) => {
      const state: RequestState = {
        request,
        sequences: [],
        arrival: time,
        settled: false,
        streamed: false,
        resolve,
        reject,
      };
      for (let choice = 0; choice < request.n; choice++) {
        const order = this.nextOrder++;
        state.sequences.push({
          id: `s${order}`,
          order,
          request: state,
          choice,
          tokens: [...request.promptIds],
          promptLength: request.promptIds.length,
          generated: [],
          computed: 0,
          blocks: [],
          state: 'waiting',
          inFlight: 0,
          ...(request.promptLogprobs && choice === 0 ? { promptLogprobs: [] } : {}),
        });
      }
      this.waiting.push(...state.sequences);
      this.emit({
        type: 'admitted',
        time,
        requestId: request.requestId,
        promptTokens: request.promptIds.length,
        n: request.n,
      });
      if (request.signal?.aborted) this.cancel(state);
      else request.signal?.addEventListener('abort', () => this.cancel(state), { once: true });
      this.pump();
    });
  }

  /** Stops admitting; resolves once every admitted request has finished. */
  drain(): Promise<void> {
    this.closing = true;
    if (this.waiting.length === 0 && this.running.length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.drained = resolve;
    });
  }

  /** Fails every queued and running request and refuses new ones. */
  shutdown(reason = 'the server is shutting down'): void {
    this.closing = true;
    const requests = new Set([...this.waiting, ...this.running].map((s) => s.request));
    for (const r of requests) this.fail(r, new RequestFailedError(reason));
  }

  private validate(r: GenerationRequest): void {
    const { vocabRows } = this.executor;
    const { maxContext } = this.limits;
    if (r.promptIds.length === 0) throw new RequestError('the prompt is empty');
    if (!Number.isInteger(r.maxTokens) || r.maxTokens < 1)
      throw new RequestError(`max_tokens must be a positive integer, got ${r.maxTokens}`);
    if (!Number.isInteger(r.n) || r.n < 1 || r.n > MAX_CHOICES)
      throw new RequestError(`n must be an integer in [1, ${MAX_CHOICES}], got ${r.n}`);
    if (r.n > this.limits.maxWaiting)
      throw new RequestError(
        `n ${r.n} is more choices than this server queues at once (${this.limits.maxWaiting})`,
      );
    for (const id of r.promptIds) {
      if (!Number.isInteger(id) || id < 0 || id >= vocabRows)
        throw new RequestError(`token id ${id} is outside the model's ${vocabRows} embedding rows`);
    }
    const total = r.promptIds.length + r.maxTokens;
    if (total > maxContext) {
      throw new RequestError(
        `prompt of ${r.promptIds.length} tokens plus max_tokens ${r.maxTokens} exceeds the context of ${maxContext} tokens`,
      );
    }
    if (this.blocks.blocksFor(total) > this.blocks.numBlocks) {
      throw new RequestError(
        `a sequence of ${total} tokens needs ${this.blocks.blocksFor(total)} KV blocks; the cache has ${this.blocks.numBlocks}`,
      );
    }
    try {
      validateSampling(r.sampling);
    } catch (err) {
      throw new RequestError((err as Error).message, { cause: err });
    }
  }

  private emit(event: SchedulerEvent): void {
    for (const observer of this.observers) {
      try {
        observer(event);
      } catch {
        // An observer's bug must not break scheduling.
      }
    }
  }

  private pump(): void {
    const { maxInFlight, sampledInputs } = this.executor;
    while (!this.suspended) {
      // At maxInFlight only a step with follow-on rows may go, one more than that at most.
      const followOnly = this.inFlight >= maxInFlight;
      if (followOnly && (sampledInputs !== true || this.inFlight > maxInFlight)) break;
      const plan = this.schedule(followOnly);
      if (!plan) break;
      void this.run(plan);
    }
    if (this.closing && this.waiting.length === 0 && this.running.length === 0) this.drained?.();
  }

  /** Whether `seq`'s next position can go in a follow-on row: its step in flight, the latest one
   * sent, samples its next token, which will not end it by length and needs no history. */
  private canFollow(seq: Sequence): boolean {
    const { request } = seq.request;
    return (
      this.executor.sampledInputs === true &&
      seq.state === 'running' &&
      seq.inFlight === 1 &&
      seq.sampling !== undefined &&
      seq.sampling === this.latest &&
      !penalizes(request.sampling) &&
      seq.generated.length + 1 < request.maxTokens &&
      seq.tokens.length + 1 < this.limits.maxContext
    );
  }

  /**
   * Chooses the next step's rows, allocating their KV blocks (and preempting for them).
   * `followOnly`: no step may go unless it has a follow-on row.
   */
  private schedule(followOnly: boolean): StepPlan | undefined {
    if (followOnly && !this.running.some((s) => this.canFollow(s))) return undefined;
    let budget = this.limits.maxBatchTokens;
    const rows: PlannedRow[] = [];
    const planned = new Set<Sequence>();
    const add = (seq: Sequence, count: number) => {
      const start = seq.computed;
      const logitRows = needsPromptLogits(seq, start, count)
        ? count
        : start + count === seq.tokens.length
          ? 1
          : 0;
      rows.push({ seq, start, count, logitRows });
      planned.add(seq);
      budget -= count;
    };
    const follows = this.latest;
    // Running sequences, oldest first: decodes (follow-on rows among them), then prompt chunks
    // (and recomputes).
    for (const decoding of [true, false]) {
      for (const seq of [...this.running]) {
        if (budget === 0) break;
        if (decoding && this.canFollow(seq)) {
          if (this.reserve(seq, seq.tokens.length + 1, planned)) {
            rows.push({ seq, start: seq.tokens.length, count: 1, logitRows: 1, followOn: true });
            planned.add(seq);
            budget -= 1;
          }
          continue;
        }
        if (seq.inFlight || seq.state !== 'running') continue;
        const remaining = seq.tokens.length - seq.computed;
        if ((remaining === 1) !== decoding) continue;
        const count = Math.min(remaining, budget);
        if (this.reserve(seq, seq.computed + count, planned)) add(seq, count);
      }
    }
    // Then the queue, first come first served, while blocks are free: no preemption for these.
    while (this.waiting.length > 0 && budget > 0 && this.running.length < this.limits.maxRunning) {
      const seq = this.waiting[0];
      if (seq.inFlight) break; // re-queued while a step that held it is still out
      const count = Math.min(seq.tokens.length - seq.computed, budget);
      if (this.blocks.blocksFor(seq.computed + count) - seq.blocks.length > this.blocks.freeBlocks) break;
      this.blocks.ensure(seq.blocks, seq.computed + count);
      this.waiting.shift();
      seq.state = 'running';
      insertByAge(this.running, seq);
      seq.request.firstScheduled ??= monotonicSeconds();
      add(seq, count);
    }
    if (rows.length === 0) return undefined;
    let promptTokens = 0;
    let decodeTokens = 0;
    for (const r of rows) {
      if (r.followOn || r.seq.tokens.length - r.start === 1) decodeTokens += r.count;
      else promptTokens += r.count;
    }
    let markApplied = () => {};
    const applied = new Promise<void>((resolve) => {
      markApplied = resolve;
    });
    return {
      id: this.nextStepId++,
      epoch: this.epoch,
      rows,
      promptTokens,
      decodeTokens,
      ...(rows.some((r) => r.followOn) ? { follows } : {}),
      applied,
      markApplied,
    };
  }

  /**
   * Grows `seq`'s blocks to hold positions 0..end-1, preempting the newest idle running
   * sequences that are not in this step until they fit. False if `seq` itself had to go.
   */
  private reserve(seq: Sequence, end: number, planned: ReadonlySet<Sequence>): boolean {
    const needed = () => this.blocks.blocksFor(end) - seq.blocks.length;
    while (needed() > this.blocks.freeBlocks) {
      const victim = this.running.findLast((s) => !s.inFlight && !planned.has(s));
      if (!victim) return false; // everything else is in flight: wait for it to come back
      this.preempt(victim);
      if (victim === seq) return false;
    }
    this.blocks.ensure(seq.blocks, end);
    return true;
  }

  /** Frees a running sequence's blocks and puts it back in the queue, to be recomputed. */
  private requeue(seq: Sequence): void {
    this.blocks.release(seq.blocks);
    seq.computed = 0;
    seq.state = 'waiting';
    this.running.splice(this.running.indexOf(seq), 1);
    // Back into the queue ahead of every younger sequence.
    insertByAge(this.waiting, seq);
  }

  private preempt(seq: Sequence): void {
    const recomputeTokens = seq.tokens.length;
    this.requeue(seq);
    this.emit({
      type: 'preempted',
      time: monotonicSeconds(),
      requestId: seq.request.request.requestId,
      choice: seq.choice,
      recomputeTokens,
    });
  }

  private async run(plan: StepPlan): Promise<void> {
    this.inFlight++;
    this.latest = plan;
    const steps = plan.rows.map(seqStepOf);
    for (const row of plan.rows) {
      row.seq.inFlight++;
      if (samples(row)) row.seq.sampling = plan;
    }
    const started = monotonicSeconds();
    let output: StepOutput | undefined;
    let error: Error | undefined;
    try {
      output = await this.executor.execute(steps);
    } catch (err) {
      error = err instanceof Error ? err : new Error(String(err));
    }
    plan.answered = monotonicSeconds();
    try {
      // Follow-on rows start where the step they follow leaves their sequences.
      await plan.follows?.applied;
      // A follow-on step runs once the step before it is done: its time starts there.
      this.finishStep(plan, steps, Math.max(started, plan.follows?.answered ?? started), output, error);
    } finally {
      plan.markApplied();
    }
    this.pump();
  }

  private finishStep(
    plan: StepPlan,
    steps: readonly SeqStep[],
    started: number,
    output: StepOutput | undefined,
    error: Error | undefined,
  ): void {
    this.inFlight--;
    if (this.latest === plan) this.latest = undefined;
    for (const row of plan.rows) {
      row.seq.inFlight--;
      if (row.seq.sampling === plan) row.seq.sampling = undefined;
    }
    const time = monotonicSeconds();
    this.emit({
      type: 'step',
      time,
      stepId: plan.id,
      batchSize: plan.rows.length,
      promptTokens: plan.promptTokens,
      decodeTokens: plan.decodeTokens,
      duration: time - started,
      error: error?.message,
    });
    if (output) this.apply(plan, steps, output);
    else if (error instanceof ExecutorUnavailableError) {
      // Sent before a suspension: that incident already re-queued or failed its sequences.
      if (plan.epoch === this.epoch) this.suspend(`a worker was lost: ${error.message}`, 'executor');
    } else {
      const failed = new Set(plan.rows.map((r) => r.seq.request));
      for (const r of failed)
        this.fail(r, new RequestFailedError(`step failed: ${(error as Error).message}`, { cause: error }));
    }
  }

  /** Advances each row's sequence, samples where the step produced logits, retires the finished. */
  private apply(plan: StepPlan, steps: readonly SeqStep[], { logits, sampled }: StepOutput): void {
    const vocab = this.executor.vocabRows;
    let row = 0;
    let next = 0;
    for (const [i, { seq, start, count, logitRows }] of plan.rows.entries()) {
      const first = row;
      if (returnsLogits(steps[i])) row += logitRows;
      const token = steps[i].sample ? sampled[next++] : undefined;
      if (seq.state !== 'running') continue; // cancelled or failed while the step ran
      const rowOf = (r: number) => logits.subarray((first + r) * vocab, (first + r + 1) * vocab);
      // Row r holds the logits after position end - logitRows + r: they score the token after it.
      const end = start + count;
      if (seq.promptLogprobs) {
        for (let r = 0; r < logitRows; r++) {
          const next = end - logitRows + r + 1;
          if (next < seq.promptLength) seq.promptLogprobs[next] ??= tokenLogprob(rowOf(r), seq.tokens[next]);
        }
      }
      seq.computed = end;
      if (token) this.accept(seq, token);
    }
  }

  /** A sampled token: the end of the choice (a stop token), or one more generated token. */
  private accept(seq: Sequence, token: SampledToken): void {
    const state = seq.request;
    const { request } = state;
    const time = monotonicSeconds();
    state.firstToken ??= time;
    if (request.sampling.stopTokenIds.includes(token.id)) {
      if (token.id === this.limits.eosTokenId) this.finish(seq, 'eos');
      else this.finish(seq, 'stop', token.id);
      return;
    }
    seq.tokens.push(token.id);
    seq.generated.push(token);
    this.emit({
      type: 'token',
      time,
      requestId: request.requestId,
      choice: seq.choice,
      index: seq.generated.length - 1,
    });
    let stopped: boolean | undefined;
    state.streamed = true;
    try {
      stopped = request.onToken?.(seq.choice, token) === true;
    } catch (err) {
      this.fail(state, err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (stopped) this.finish(seq, 'stop');
    else if (seq.generated.length >= request.maxTokens || seq.tokens.length >= this.limits.maxContext)
      this.finish(seq, 'length');
  }

  /** Takes a sequence out of the queues and frees its blocks. */
  private retire(seq: Sequence): void {
    const list = seq.state === 'waiting' ? this.waiting : this.running;
    const at = list.indexOf(seq);
    if (at >= 0) list.splice(at, 1);
    this.blocks.release(seq.blocks);
    seq.state = 'done';
  }

  private finish(seq: Sequence, reason: FinishReason, stopTokenId?: number): void {
    if (seq.state === 'done') return;
    this.retire(seq);
    seq.finishReason = reason;
    seq.stopTokenId = stopTokenId;
    const state = seq.request;
    try {
      state.request.onFinish?.(choiceResult(seq));
    } catch (err) {
      this.fail(state, err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (state.sequences.every((s) => s.state === 'done')) this.settle(state);
  }

  private cancel(state: RequestState): void {
    if (state.settled) return;
    const live = state.sequences.filter((s) => s.state !== 'done');
    const stage = live.some((s) => s.generated.length > 0)
      ? 'decode'
      : live.some((s) => s.state === 'running')
        ? 'prefill'
        : 'queued';
    this.emit({ type: 'cancelled', time: monotonicSeconds(), requestId: state.request.requestId, stage });
    for (const seq of live) this.finish(seq, 'cancelled');
    this.pump();
  }

  private timing(state: RequestState, end: number): RequestTiming {
    const scheduled = state.firstScheduled ?? end;
    const first = state.firstToken ?? end;
    return {
      queue: scheduled - state.arrival,
      prefill: Math.max(0, first - scheduled),
      decode: end - first,
      timeToFirstToken: first - state.arrival,
      total: end - state.arrival,
    };
  }

  private settle(state: RequestState): void {
    state.settled = true;
    const time = monotonicSeconds();
    const timing = this.timing(state, time);
    const choices = state.sequences.map(choiceResult);
    const promptLogprobs = state.sequences[0].promptLogprobs?.slice(1).map((logprob, i) => ({
      id: state.request.promptIds[i + 1],
      logprob: logprob as number,
    }));
    const outcome: RequestOutcome = state.request.signal?.aborted ? 'cancelled' : choices[0].finishReason;
    this.finished(state, outcome, time, timing);
    state.resolve({
      requestId: state.request.requestId,
      promptTokens: state.request.promptIds.length,
      choices,
      timing,
      ...(promptLogprobs && state.sequences[0].finishReason !== 'cancelled' ? { promptLogprobs } : {}),
    });
  }

  private fail(state: RequestState, error: Error): void {
    if (state.settled) return;
    for (const seq of state.sequences) if (seq.state !== 'done') this.retire(seq);
    state.settled = true;
    const time = monotonicSeconds();
    this.finished(state, 'failed', time, this.timing(state, time));
    state.reject(error);
  }

  private finished(state: RequestState, outcome: RequestOutcome, time: number, timing: RequestTiming): void {
    this.emit({
      type: 'finished',
      time,
      requestId: state.request.requestId,
      outcome,
      promptTokens: state.request.promptIds.length,
      completionTokens: state.sequences.reduce((n, s) => n + s.generated.length, 0),
      timing,
    });
  }
}
