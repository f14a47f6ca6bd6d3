// What the scheduler tells its observers: one event per fact, each stamped with the monotonic
// clock in seconds (performance.now() / 1000). Metrics, logs and the public API's Timing are
// all computed from these, never from timers of their own.

import type { FinishReason } from './scheduler.js';

/** Seconds on the monotonic clock the scheduler stamps events with. */
export const monotonicSeconds = (): number => performance.now() / 1000;

/** Where a request's time went, in seconds. */
export interface RequestTiming {
  /** Arrival until its first sequence was first scheduled. */
  queue: number;
  /** First scheduled until the first generated token. */
  prefill: number;
  /** First generated token until the end. */
  decode: number;
  /** Arrival until the first generated token. */
  timeToFirstToken: number;
  /** Arrival until the end. */
  total: number;
}

/** How a request ended, for metrics: a finish reason, or a failure (RequestFailedError). */
export type RequestOutcome = FinishReason | 'failed';

export type SchedulerEvent =
  /** Accepted into the waiting queue. */
  | { type: 'admitted'; time: number; requestId: string; promptTokens: number; n: number }
  /** Refused before taking anything: invalid, the queue was full, or the scheduler is closing. */
  | { type: 'rejected'; time: number; requestId: string; reason: 'invalid' | 'queue-full' | 'closing' }
  /** A step came back (or failed); sizes count tokens of prompts (and recomputes) and of decodes. */
  | {
      type: 'step';
      time: number;
      stepId: number;
      batchSize: number;
      promptTokens: number;
      decodeTokens: number;
      /** Seconds from sending the step to its result. */
      duration: number;
      /** The error message of a failed step. */
      error?: string;
    }
  /** A token was generated and handed to the request (the stop token that ends one is not). */
  | { type: 'token'; time: number; requestId: string; choice: number; index: number }
  /** A sequence gave its KV blocks back and will recompute `recomputeTokens` positions later. */
  | { type: 'preempted'; time: number; requestId: string; choice: number; recomputeTokens: number }
  /** The client went away or aborted; `stage` is where the request was furthest along. */
  | { type: 'cancelled'; time: number; requestId: string; stage: 'queued' | 'prefill' | 'decode' }
  /** No step runs until resumed: a worker was lost (`cluster`), or a step found the pipeline
   * broken (`executor`: the cluster handle then finds out what broke and mends it). */
  | { type: 'suspended'; time: number; reason: string; source: 'cluster' | 'executor' }
  /** Steps run again. */
  | { type: 'resumed'; time: number }
  /** The request is over: every choice finished, or it was cancelled or failed. */
  | {
      type: 'finished';
      time: number;
      requestId: string;
      outcome: RequestOutcome;
      promptTokens: number;
      completionTokens: number;
      timing: RequestTiming;
    };

export type SchedulerObserver = (event: SchedulerEvent) => void;
