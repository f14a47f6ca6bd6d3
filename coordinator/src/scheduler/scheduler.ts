// Continuous batching. One engine step is: pick the sequences to advance (prefill chunks
// of newly admitted prompts, one token for every decoding sequence), run them as one
// batch, sample a token for each sequence that finished its prompt or decoded, and
// retire those that are done. With a pipelined executor, up to `maxInFlight` steps on
// disjoint sets of sequences run at once, so every stage stays busy.
//
// Failure scope: an error in a step fails the requests in that step, frees their KV
// blocks, and leaves every other request running.

import { Sampler, type SamplingParams } from '../generation/sampler.js';
import type { BlockAllocator } from './block-allocator.js';
import type { StepExecutor } from './executor.js';

export type FinishReason = 'length' | 'eos' | 'stop' | 'cancelled';

export interface GenerationRequest {
  promptIds: number[];
  maxTokens: number;
  sampling: SamplingParams;
  /** Token ids that end generation (the eos id); not included in the output. */
  stopTokenIds: readonly number[];
  /** Called for each generated token; return true to stop (a stop sequence matched). */
  onToken?: (tokenId: number) => boolean | undefined;
  signal?: AbortSignal;
}

export interface GenerationResult {
  tokenIds: number[];
  finishReason: FinishReason;
  promptTokens: number;
  /** Milliseconds from submission to the first generated token. */
  timeToFirstTokenMs: number;
}

export interface SchedulerLimits {
  /** Most tokens in one step (prefill chunks plus decodes). */
  maxBatchTokens: number;
  /** Most sequences running at once. */
  maxRunning: number;
  /** Longest sequence (prompt + generated) the model accepts. */
  maxContext: number;
}

/** The request itself is invalid (the client must change it). */
export class RequestError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RequestError';
  }
}

/** A valid request that could not be completed (a failed step, a shutdown). */
export class RequestFailedError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RequestFailedError';
  }
}

interface Sequence {
  id: string;
  request: GenerationRequest;
  tokens: number[];
  promptLength: number;
  /** Positions whose KV is in the cache. */
  computed: number;
  blocks: number[];
  sampler: Sampler;
  inFlight: boolean;
  /** Resolved or rejected; nothing more happens to it. */
  done: boolean;
  submittedAt: number;
  firstTokenAt?: number;
  resolve: (r: GenerationResult) => void;
  reject: (e: Error) => void;
}

export class Scheduler {
  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = [];
  private inFlight = 0;
  private nextId = 0;
  private closed = false;

  constructor(
    private readonly executor: StepExecutor,
    private readonly blocks: BlockAllocator,
    private readonly limits: SchedulerLimits,
  ) {}

  get stats() {
    return {
      waiting: this.waiting.length,
      running: this.running.length,
      stepsInFlight: this.inFlight,
      freeBlocks: this.blocks.freeBlocks,
    };
  }

  /** Queues a request; resolves when it finishes. Rejects with RequestError for bad input. */
  submit(request: GenerationRequest): Promise<GenerationResult> {
    if (this.closed) return Promise.reject(new RequestFailedError('the scheduler is shut down'));
    const { promptIds, maxTokens } = request;
    if (promptIds.length === 0) return Promise.reject(new RequestError('the prompt is empty'));
    if (!Number.isInteger(maxTokens) || maxTokens < 1) {
      return Promise.reject(new RequestError(`max_tokens must be a positive integer, got ${maxTokens}`));
    }
    for (const id of promptIds) {
      if (!Number.isInteger(id) || id < 0 || id >= this.executor.vocabRows) {
        return Promise.reject(
          new RequestError(`token id ${id} is outside the model's ${this.executor.vocabRows} embedding rows`),
        );
      }
    }
    const total = promptIds.length + maxTokens;
    if (total > this.limits.maxContext) {
      return Promise.reject(
        new RequestError(
          `prompt of ${promptIds.length} tokens plus max_tokens ${maxTokens} exceeds the context of ${this.limits.maxContext} tokens`,
        ),
      );
    }
    if (this.blocks.blocksFor(total) > this.blocks.numBlocks) {
      return Promise.reject(
        new RequestError(
          `request needs ${this.blocks.blocksFor(total)} KV blocks; the cache has ${this.blocks.numBlocks}`,
        ),
      );
    }
    let sampler: Sampler;
    try {
      sampler = new Sampler(request.sampling);
    } catch (err) {
      return Promise.reject(new RequestError((err as Error).message, { cause: err }));
    }
    return new Promise((resolve, reject) => {
      const seq: Sequence = {
        id: `seq-${this.nextId++}`,
        request,
        tokens: [...promptIds],
        promptLength: promptIds.length,
        computed: 0,
        blocks: [],
        sampler,
        inFlight: false,
        done: false,
        submittedAt: performance.now(),
        resolve,
        reject,
      };
      request.signal?.addEventListener('abort', () => this.cancel(seq), { once: true });
      this.waiting.push(seq);
      this.pump();
    });
  }

  /** Fails every queued and running request and refuses new ones. */
  shutdown(reason = 'the server is shutting down'): void {
    this.closed = true;
    for (const seq of [...this.waiting, ...this.running]) this.fail(seq, new RequestFailedError(reason));
  }

  private cancel(seq: Sequence): void {
    if (seq.inFlight) return; // retired when its step comes back
    this.finish(seq, 'cancelled');
  }

  /** Admits waiting requests whose whole KV reservation fits, oldest first. */
  private admit(): void {
    while (this.waiting.length > 0 && this.running.length < this.limits.maxRunning) {
      const seq = this.waiting[0];
      const need = Math.min(seq.promptLength + seq.request.maxTokens, this.limits.maxContext);
      if (this.blocks.blocksFor(need) > this.blocks.freeBlocks) return;
      this.blocks.ensure(seq.blocks, need);
      this.waiting.shift();
      this.running.push(seq);
    }
  }

  private pump(): void {
    this.admit();
    while (this.inFlight < this.executor.maxInFlight) {
      const batch = this.formBatch();
      if (batch.length === 0) return;
      this.runStep(batch);
    }
  }

  /** Decodes first (one token each, latency-critical), then prompt chunks in the remaining budget. */
  private formBatch(): { seq: Sequence; count: number }[] {
    let budget = this.limits.maxBatchTokens;
    const batch: { seq: Sequence; count: number }[] = [];
    const idle = this.running.filter((s) => !s.inFlight && !s.request.signal?.aborted);
    for (const seq of idle) {
      if (seq.computed >= seq.promptLength && budget > 0) {
        batch.push({ seq, count: seq.tokens.length - seq.computed });
        budget -= 1;
      }
    }
    for (const seq of idle) {
      if (seq.computed < seq.promptLength && budget > 0) {
        const count = Math.min(seq.promptLength - seq.computed, budget);
        batch.push({ seq, count });
        budget -= count;
      }
    }
    return batch;
  }

  private runStep(batch: { seq: Sequence; count: number }[]): void {
    this.inFlight++;
    const steps = batch.map(({ seq, count }) => {
      seq.inFlight = true;
      const end = seq.computed + count;
      return {
        seqId: seq.id,
        startPos: seq.computed,
        numTokens: count,
        tokens: seq.tokens.slice(seq.computed, end),
        blockTable: seq.blocks,
        wantLogits: end === seq.tokens.length,
      };
    });
    this.executor
      .execute(steps)
      .then((logits) => this.complete(batch, logits))
      .catch((err: Error) => {
        for (const { seq } of batch)
          this.fail(seq, new RequestFailedError(`step failed: ${err.message}`, { cause: err }));
      })
      .finally(() => {
        this.inFlight--;
        this.pump();
      });
  }

  private complete(batch: { seq: Sequence; count: number }[], logits: Float32Array): void {
    const vocab = this.executor.vocabRows;
    let row = 0;
    for (const { seq, count } of batch) {
      seq.inFlight = false;
      // A step asked for logits exactly when it reached the end of the known tokens.
      const hasRow = seq.computed + count === seq.tokens.length;
      const rowLogits = hasRow ? logits.subarray(row * vocab, (row + 1) * vocab) : undefined;
      if (hasRow) row++;
      if (seq.done) continue;
      seq.computed += count;
      if (!rowLogits) continue; // mid-prompt chunk: no token yet
      if (seq.request.signal?.aborted) {
        this.finish(seq, 'cancelled');
        continue;
      }
      const token = seq.sampler.next(rowLogits);
      seq.firstTokenAt ??= performance.now();
      if (seq.request.stopTokenIds.includes(token)) {
        this.finish(seq, 'eos');
        continue;
      }
      seq.tokens.push(token);
      const stop = seq.request.onToken?.(token) === true;
      if (stop) this.finish(seq, 'stop');
      else if (seq.tokens.length - seq.promptLength >= seq.request.maxTokens) this.finish(seq, 'length');
      else if (seq.tokens.length >= this.limits.maxContext) this.finish(seq, 'length');
    }
  }

  private remove(seq: Sequence): void {
    for (const list of [this.waiting, this.running]) {
      const i = list.indexOf(seq);
      if (i >= 0) list.splice(i, 1);
    }
    this.blocks.release(seq.blocks);
  }

  private finish(seq: Sequence, finishReason: FinishReason): void {
    if (seq.done) return;
    seq.done = true;
    this.remove(seq);
    seq.resolve({
      tokenIds: seq.tokens.slice(seq.promptLength),
      finishReason,
      promptTokens: seq.promptLength,
      timeToFirstTokenMs: (seq.firstTokenAt ?? performance.now()) - seq.submittedAt,
    });
  }

  private fail(seq: Sequence, error: Error): void {
    seq.inFlight = false;
    if (seq.done) return;
    seq.done = true;
    this.remove(seq);
    seq.reject(error);
  }
}
