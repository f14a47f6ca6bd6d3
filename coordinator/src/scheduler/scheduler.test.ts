// Batching policy, memory and cancellation, tested with no model: scripted executors record
// every step they are given and answer with logits that are a function of the step's last
// token, so a sequence's tokens depend on nothing but its own history. Every test ends with
// every KV block free.

import {
  finishStep,
  GREEDY,
  type SamplingParams,
  type SeqStep,
  type StepOutput,
  tokenLogprob,
} from '@medcluster/worker';
import { afterEach, describe, expect, test } from 'vitest';
import { BlockAllocator } from './block-allocator.js';
import { QueueFullError, RequestError, RequestFailedError } from './errors.js';
import type { SchedulerEvent } from './events.js';
import { ExecutorUnavailableError, type StepExecutor } from './executor.js';
import { type GenerationRequest, Scheduler, type SchedulerLimits } from './scheduler.js';

const VOCAB = 100;
const EOS = 2;

/** Answers with logits whose argmax is (last token + 1) % vocab; `hold()` keeps the next step open. */
class ScriptedExecutor implements StepExecutor {
  readonly steps: SeqStep[][] = [];
  inFlight = 0;
  maxSeenInFlight = 0;
  failNext = false;
  /** The next step finds the pipeline broken (a worker lost). */
  loseWorkerNext = false;
  private gate?: Promise<void>;
  private onHeld?: () => void;

  constructor(
    readonly vocabRows = VOCAB,
    readonly maxInFlight = 1,
  ) {}

  /** The next step waits for release(); `started` resolves once it has been sent. */
  hold(): { started: Promise<void>; release: () => void } {
    let release = () => {};
    this.gate = new Promise<void>((r) => {
      release = r;
    });
    const started = new Promise<void>((r) => {
      this.onHeld = r;
    });
    return { started, release };
  }

  async execute(seqs: SeqStep[]): Promise<StepOutput> {
    this.steps.push(
      seqs.map((s) => ({ ...s, tokens: [...(s.tokens ?? [])], blockTable: [...s.blockTable] })),
    );
    this.inFlight++;
    this.maxSeenInFlight = Math.max(this.maxSeenInFlight, this.inFlight);
    const gate = this.gate;
    if (gate) {
      this.gate = undefined;
      this.onHeld?.();
      await gate;
    } else await new Promise((r) => setTimeout(r, 1));
    this.inFlight--;
    if (this.failNext) {
      this.failNext = false;
      throw new Error('worker died');
    }
    if (this.loseWorkerNext) {
      this.loseWorkerNext = false;
      throw new ExecutorUnavailableError('stage 127.0.0.1:7001 closed the stream');
    }
    // One row per logit row: each scores the token after its position, from that position's token.
    const before = seqs.flatMap((s) =>
      Array.from({ length: s.logitRows }, (_, r) => (s.tokens as number[])[s.numTokens - s.logitRows + r]),
    );
    const out = new Float32Array(before.length * this.vocabRows);
    for (const [r, token] of before.entries()) {
      this.row(token, out.subarray(r * this.vocabRows, (r + 1) * this.vocabRows));
    }
    // Sampling happens where the logits are, as on a pipeline's last stage.
    return finishStep(seqs, out, this.vocabRows);
  }

  /** The logits after a position holding `token`. */
  row(token: number, out: Float32Array): void {
    out[(token + 1) % this.vocabRows] = 1;
  }

  async close() {}
}

/** Logits that are a fixed pseudo-random function of the last token: sampling has real choices. */
class RandomRowsExecutor extends ScriptedExecutor {
  override row(token: number, out: Float32Array): void {
    let x = (token + 1) * 2654435761;
    for (let v = 0; v < out.length; v++) {
      x = (Math.imul(x ^ (x >>> 15), 2246822519) + v) >>> 0;
      out[v] = (x % 1000) / 250; // 0 .. 4: a flat-ish distribution
    }
  }
}

/**
 * Takes sampled inputs (SeqStep.sampledInput) as a single-stage runner does: steps run one after
 * another in the order they were sent, and a sampled input takes the token that the step before
 * sampled for its sequence (token 0 where that step failed). `inner` records the steps with
 * their tokens filled in.
 */
class FeedingExecutor implements StepExecutor {
  readonly sampledInputs = true;
  readonly maxInFlight = 1;
  readonly vocabRows: number;
  /** Steps sent and not yet answered, and the most of them at once. */
  sent = 0;
  maxSent = 0;
  /** Rows that came as sampled inputs. */
  fedRows = 0;
  private previous: Promise<Map<string, number> | 'failed'> = Promise.resolve(new Map());

  constructor(readonly inner: ScriptedExecutor) {
    this.vocabRows = inner.vocabRows;
  }

  async execute(seqs: SeqStep[]): Promise<StepOutput> {
    this.maxSent = Math.max(this.maxSent, ++this.sent);
    const before = this.previous;
    let done: (sampled: Map<string, number> | 'failed') => void = () => {};
    this.previous = new Promise((resolve) => {
      done = resolve;
    });
    try {
      const last = await before;
      const fed = seqs.map((st) => {
        if (!st.sampledInput) return st;
        const id = last === 'failed' ? 0 : last.get(st.seqId);
        if (id === undefined) throw new Error(`${st.seqId}: the previous step sampled no token for it`);
        this.fedRows++;
        const { sampledInput: _, ...rest } = st;
        return { ...rest, tokens: [id] };
      });
      const out = await this.inner.execute(fed);
      const sampledIds = fed.filter((st) => st.sample).map((st) => st.seqId);
      done(new Map(sampledIds.map((id, i) => [id, out.sampled[i].id])));
      return out;
    } catch (err) {
      done('failed');
      throw err;
    } finally {
      this.sent--;
    }
  }

  async close() {}
}

const LIMITS: SchedulerLimits = {
  maxBatchTokens: 8,
  maxRunning: 4,
  maxWaiting: 16,
  maxContext: 64,
  eosTokenId: EOS,
};

const allocators: BlockAllocator[] = [];
function cache(numBlocks: number, blockSize = 4): BlockAllocator {
  const blocks = new BlockAllocator(numBlocks, blockSize);
  allocators.push(blocks);
  return blocks;
}
afterEach(() => {
  for (const blocks of allocators.splice(0)) expect(blocks.freeBlocks).toBe(blocks.numBlocks);
});

let nextId = 0;
function req(
  promptIds: number[],
  maxTokens: number,
  extra: Partial<GenerationRequest> = {},
): GenerationRequest {
  return {
    requestId: `r${nextId++}`,
    promptIds,
    maxTokens,
    n: 1,
    sampling: { ...GREEDY, stopTokenIds: [EOS] },
    ...extra,
  };
}
const ids = (r: { choices: { tokens: { id: number }[] }[] }, choice = 0) =>
  r.choices[choice].tokens.map((t) => t.id);

function recorder(s: Scheduler): SchedulerEvent[] {
  const events: SchedulerEvent[] = [];
  s.observe((e) => events.push(e));
  return events;
}

describe('Scheduler: steps', () => {
  test('prefills in chunks within the token budget, then decodes one token per step', async () => {
    const ex = new ScriptedExecutor();
    const s = new Scheduler(ex, cache(16), LIMITS);
    const result = await s.submit(req([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], 3));
    expect(ids(result)).toEqual([20, 21, 22]);
    expect(result.choices[0].finishReason).toBe('length');
    expect(ex.steps.map((st) => st.map((x) => [x.startPos, x.numTokens, x.logitRows]))).toEqual([
      [[0, 8, 0]],
      [[8, 2, 1]],
      [[10, 1, 1]],
      [[11, 1, 1]],
    ]);
    // Blocks are allocated as the sequence grows: 8 positions, then 10, 11, 12.
    expect(ex.steps.map((st) => st[0].blockTable.length)).toEqual([2, 3, 3, 3]);
  });

  test('batches decodes of concurrent requests into one step, each with its own blocks', async () => {
    const ex = new ScriptedExecutor();
    const s = new Scheduler(ex, cache(16), LIMITS);
    const [a, b] = await Promise.all([s.submit(req([5], 4)), s.submit(req([40], 4))]);
    expect(ids(a)).toEqual([6, 7, 8, 9]);
    expect(ids(b)).toEqual([41, 42, 43, 44]);
    expect(ex.steps.some((st) => st.length === 2)).toBe(true);
    const tables = new Set(ex.steps.flatMap((st) => st.map((x) => `${x.seqId}:${x.blockTable[0]}`)));
    expect(tables.size).toBe(2);
  });

  test('stops at eos without returning it; another stop token id ends with reason stop', async () => {
    const s = new Scheduler(new ScriptedExecutor(), cache(16), LIMITS);
    const eos = await s.submit(req([0], 10)); // 0 -> 1 -> 2 (eos)
    expect(ids(eos)).toEqual([1]);
    expect(eos.choices[0].finishReason).toBe('eos');
    const stop = await s.submit(req([5], 10, { sampling: { ...GREEDY, stopTokenIds: [EOS, 8] } }));
    expect(ids(stop)).toEqual([6, 7]);
    expect(stop.choices[0]).toMatchObject({ finishReason: 'stop', stopTokenId: 8 });
  });

  test('min_tokens masks the stop tokens until enough were generated', async () => {
    const s = new Scheduler(new ScriptedExecutor(), cache(16), LIMITS);
    // Greedy wants eos (2) after 1; masked, the next best is token 0, then 1 -> 2 allowed.
    const r = await s.submit(req([1], 10, { sampling: { ...GREEDY, stopTokenIds: [EOS], minTokens: 2 } }));
    expect(ids(r)).toEqual([0, 1]);
    expect(r.choices[0].finishReason).toBe('eos');
  });

  test('rejects bad requests with clear errors, takes nothing, and keeps serving', async () => {
    const s = new Scheduler(new ScriptedExecutor(), cache(16), LIMITS);
    const bad = (r: GenerationRequest) => expect(s.submit(r)).rejects.toBeInstanceOf(RequestError);
    await bad(req([], 4));
    await expect(s.submit(req([100], 4))).rejects.toThrow(/outside the model's 100 embedding rows/);
    await expect(s.submit(req([1], 0))).rejects.toThrow(/max_tokens/);
    await expect(s.submit(req(new Array(60).fill(3), 10))).rejects.toThrow(/exceeds the context of 64/);
    await expect(s.submit(req([3], 4, { n: 0 }))).rejects.toThrow(/^n must be/);
    await expect(s.submit(req([3], 4, { sampling: { ...GREEDY, temperature: Number.NaN } }))).rejects.toThrow(
      /temperature/,
    );
    await expect(s.submit(req([3], 4, { sampling: { ...GREEDY, topP: 1.5 } }))).rejects.toThrow(/top_p/);
    await expect(s.submit(req([3], 4, { sampling: { ...GREEDY, logprobs: 21 } }))).rejects.toThrow(
      /logprobs/,
    );
    // A sequence longer than the whole cache could never run: refused, not queued forever.
    await expect(new Scheduler(new ScriptedExecutor(), cache(2), LIMITS).submit(req([3], 9))).rejects.toThrow(
      /needs 3 KV blocks; the cache has 2/,
    );
    await bad(req([1], 2, { sampling: { ...GREEDY, repetitionPenalty: 0 } }));
    expect(s.stats).toMatchObject({ waiting: 0, running: 0, freeBlocks: 16 });
    await expect(s.submit(req([1], 2))).resolves.toMatchObject({ choices: [{ finishReason: 'eos' }] });
  });

  test('a failed step fails only its requests and frees their blocks', async () => {
    const ex = new ScriptedExecutor();
    const blocks = cache(16);
    const s = new Scheduler(ex, blocks, LIMITS);
    ex.failNext = true;
    await expect(s.submit(req([5], 3))).rejects.toBeInstanceOf(RequestFailedError);
    expect(blocks.freeBlocks).toBe(16);
    expect(ids(await s.submit(req([5], 3)))).toEqual([6, 7, 8]);
  });

  test('keeps several steps in flight for a pipelined executor, on disjoint sequences', async () => {
    const ex = new ScriptedExecutor(VOCAB, 2);
    const s = new Scheduler(ex, cache(16), LIMITS);
    await Promise.all([s.submit(req([5], 6)), s.submit(req([40], 6))]);
    expect(ex.maxSeenInFlight).toBe(2);
  });
});

describe('Scheduler: follow-on steps on an executor that takes sampled inputs', () => {
  const seeded = (seed: number): SamplingParams => ({ ...GREEDY, temperature: 1, seed, stopTokenIds: [EOS] });
  const run = async (ex: StepExecutor, blocks: number) => {
    const s = new Scheduler(ex, cache(blocks), LIMITS);
    const results = await Promise.all([
      s.submit(req([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], 9)),
      s.submit(req([0], 10)), // 0 -> 1 -> 2 (eos): ends while its follow-on is out
      s.submit(req([5], 10, { sampling: { ...GREEDY, stopTokenIds: [EOS, 8] } })),
      s.submit(req([7], 12, { n: 2, sampling: seeded(3) })),
      s.submit(req([9, 3, 4, 60, 61], 14, { sampling: seeded(11) })),
      s.submit(req([30, 31], 6, { onToken: (_, t) => t.id === 34 })), // a stop string at 34
    ]);
    expect(s.stats).toMatchObject({ running: 0, waiting: 0, stepsInFlight: 0 });
    return results.map((r) => r.choices.map((c) => [c.finishReason, ...c.tokens.map((t) => t.id)].join()));
  };

  test('give every request the tokens and finish reasons it gets without them, under preemption too', async () => {
    for (const blocks of [64, 12]) {
      const expected = await run(new RandomRowsExecutor(), blocks);
      const ex = new FeedingExecutor(new RandomRowsExecutor());
      expect(await run(ex, blocks)).toEqual(expected);
      expect(ex.maxSent).toBe(2);
      expect(ex.fedRows).toBeGreaterThan(20);
    }
    const plain = await run(new ScriptedExecutor(), 64);
    expect(await run(new FeedingExecutor(new ScriptedExecutor()), 64)).toEqual(plain);
  });

  test('a decoding sequence always has its next step out; no step past max_tokens', async () => {
    const ex = new FeedingExecutor(new ScriptedExecutor());
    const s = new Scheduler(ex, cache(16), LIMITS);
    const result = await s.submit(req([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], 4));
    expect(ids(result)).toEqual([20, 21, 22, 23]);
    // Each decode step went out with the one before it still running, on its sampled token.
    expect(ex.inner.steps.map((st) => st.map((x) => [x.startPos, x.numTokens, x.tokens[0]]))).toEqual([
      [[0, 8, 10]],
      [[8, 2, 18]],
      [[10, 1, 20]],
      [[11, 1, 21]],
      [[12, 1, 22]],
    ]);
    expect(ex.maxSent).toBe(2);
    expect(ex.fedRows).toBe(3);
  });

  test('sequences whose sampling reads the generated ids wait for them', async () => {
    const ex = new FeedingExecutor(new RandomRowsExecutor());
    const s = new Scheduler(ex, cache(16), LIMITS);
    const penalized = { ...GREEDY, temperature: 1, seed: 4, repetitionPenalty: 1.3, stopTokenIds: [EOS] };
    const r = await s.submit(req([7], 8, { sampling: penalized }));
    expect(r.choices[0].tokens).toHaveLength(8);
    expect(ex.maxSent).toBe(1);
    expect(ex.fedRows).toBe(0);
  });

  test('a cancel or a failed step with a follow-on out frees the blocks; the others go on', async () => {
    const inner = new ScriptedExecutor();
    const ex = new FeedingExecutor(inner);
    const blocks = cache(16);
    const s = new Scheduler(ex, blocks, LIMITS);
    const abort = new AbortController();
    const other = s.submit(req([40], 12));
    const cancelled = s.submit(
      req([5], 40, {
        signal: abort.signal,
        onToken: (_, t) => {
          if (t.id === 9) abort.abort();
          return false;
        },
      }),
    );
    const [o, c] = await Promise.all([other, cancelled]);
    expect(ids(o)).toEqual([41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52]);
    expect(c.choices[0].finishReason).toBe('cancelled');
    expect(ids(c)).toEqual([6, 7, 8, 9]);
    expect(blocks.freeBlocks).toBe(16);
    inner.failNext = true;
    await expect(s.submit(req([5], 6))).rejects.toBeInstanceOf(RequestFailedError);
    expect(blocks.freeBlocks).toBe(16);
    expect(ids(await s.submit(req([5], 3)))).toEqual([6, 7, 8]);
  });
});

describe('Scheduler: cancellation frees blocks at once in every state', () => {
  test('while queued: never scheduled, nothing held', async () => {
    const ex = new ScriptedExecutor();
    const blocks = cache(16);
    const s = new Scheduler(ex, blocks, { ...LIMITS, maxRunning: 1 });
    const events = recorder(s);
    const first = s.submit(req([5], 6));
    const controller = new AbortController();
    const queued = s.submit(req([40], 6, { signal: controller.signal }));
    expect(s.stats).toMatchObject({ running: 1, waiting: 1 });
    controller.abort();
    expect(s.stats).toMatchObject({ running: 1, waiting: 0 });
    const r = await queued;
    expect(r.choices[0]).toMatchObject({ finishReason: 'cancelled', tokens: [] });
    expect(events).toContainEqual(expect.objectContaining({ type: 'cancelled', stage: 'queued' }));
    await first;
    expect(ex.steps.flat().some((row) => row.tokens?.[0] === 40)).toBe(false);
  });

  test('while a prompt chunk is in flight: blocks back before the step returns, its result ignored', async () => {
    const ex = new ScriptedExecutor();
    const blocks = cache(16);
    const s = new Scheduler(ex, blocks, LIMITS);
    const events = recorder(s);
    const controller = new AbortController();
    const gate = ex.hold();
    const pending = s.submit(req([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 4, { signal: controller.signal }));
    await gate.started;
    expect(blocks.freeBlocks).toBe(14); // the first 8-token chunk holds 2 blocks
    controller.abort();
    expect(blocks.freeBlocks).toBe(16);
    expect(s.stats).toMatchObject({ running: 0, waiting: 0, stepsInFlight: 1 });
    gate.release();
    const r = await pending;
    expect(r.choices[0]).toMatchObject({ finishReason: 'cancelled', tokens: [] });
    expect(events).toContainEqual(expect.objectContaining({ type: 'cancelled', stage: 'prefill' }));
    expect(ex.steps).toHaveLength(1); // nothing more was scheduled for it
    // The freed blocks serve the next request correctly.
    expect(ids(await s.submit(req([5], 3)))).toEqual([6, 7, 8]);
  });

  test('while decoding: the tokens so far come back with reason cancelled', async () => {
    const blocks = cache(16);
    const s = new Scheduler(new ScriptedExecutor(), blocks, LIMITS);
    const events = recorder(s);
    const controller = new AbortController();
    let seen = 0;
    const r = await s.submit(
      req([5], 50, {
        signal: controller.signal,
        onToken: () => {
          if (++seen === 3) controller.abort();
          return false;
        },
      }),
    );
    expect(r.choices[0].finishReason).toBe('cancelled');
    expect(ids(r)).toEqual([6, 7, 8]);
    expect(s.stats).toMatchObject({ running: 0, waiting: 0 });
    expect(blocks.freeBlocks).toBe(16);
    expect(events).toContainEqual(expect.objectContaining({ type: 'cancelled', stage: 'decode' }));
    expect(events.at(-1)).toMatchObject({ type: 'finished', outcome: 'cancelled', completionTokens: 3 });
  });

  test('an already aborted signal is cancelled at once', async () => {
    const s = new Scheduler(new ScriptedExecutor(), cache(16), LIMITS);
    const r = await s.submit(req([5], 5, { signal: AbortSignal.abort() }));
    expect(r.choices[0].finishReason).toBe('cancelled');
  });
});

describe('Scheduler: memory', () => {
  const solo = async (prompt: number[], maxTokens: number, exFactory = () => new ScriptedExecutor()) =>
    ids(await new Scheduler(exFactory(), cache(64), LIMITS).submit(req(prompt, maxTokens)));

  test('preempts the newest sequence when the cache runs out; every request still gets its solo tokens', async () => {
    const prompts = [
      [10, 11, 12, 13, 14],
      [30, 31, 32, 33, 34],
      [50, 51, 52, 53, 54],
      [70, 71, 72],
    ];
    const expected = await Promise.all(prompts.map((p) => solo(p, 9, () => new RandomRowsExecutor())));
    const blocks = cache(8); // 32 positions; the four sequences need 14 + 14 + 14 + 12
    const ex = new RandomRowsExecutor();
    const s = new Scheduler(ex, blocks, LIMITS);
    const events = recorder(s);
    const results = await Promise.all(prompts.map((p) => s.submit(req(p, 9))));
    expect(results.map((r) => ids(r))).toEqual(expected);
    const preempted = events.filter((e) => e.type === 'preempted');
    expect(preempted.length).toBeGreaterThan(0);
    // The oldest request is never the one preempted.
    expect(preempted.every((e) => e.requestId !== results[0].requestId)).toBe(true);
    // A recompute re-runs everything the sequence had: its prompt and what it generated.
    const recompute = ex.steps.flat().find((row) => row.startPos === 0 && row.numTokens > 5);
    expect(recompute).toBeDefined();
    expect(s.stats).toMatchObject({ running: 0, waiting: 0, freeBlocks: 8 });
  });

  test('a new request waits for free blocks instead of preempting running ones', async () => {
    const ex = new ScriptedExecutor();
    const s = new Scheduler(ex, cache(4), LIMITS); // 16 positions
    const events = recorder(s);
    const a = [10, 11, 12, 13, 14, 15, 16, 17];
    const b = [50, 51, 52, 53, 54, 55, 56, 57];
    const results = await Promise.all([s.submit(req(a, 7)), s.submit(req(b, 7))]);
    expect(results.map((r) => ids(r).length)).toEqual([7, 7]);
    expect(events.some((e) => e.type === 'preempted')).toBe(false);
    const firstOfB = ex.steps.findIndex((st) => st.some((row) => row.tokens?.[0] === 50));
    const lastOfA = ex.steps.findLastIndex((st) => st.some((row) => row.seqId === ex.steps[0][0].seqId));
    expect(firstOfB).toBeGreaterThan(lastOfA);
  });

  test('the waiting queue is bounded: overflow is a QueueFullError that takes nothing', async () => {
    const ex = new ScriptedExecutor();
    const s = new Scheduler(ex, cache(16), { ...LIMITS, maxRunning: 1, maxWaiting: 2 });
    const events = recorder(s);
    const running = s.submit(req([5], 4)); // admitted at once
    const queued = [s.submit(req([10], 2)), s.submit(req([20], 2))];
    expect(s.stats).toMatchObject({ running: 1, waiting: 2 });
    const refused = await s.submit(req([30], 2)).catch((e) => e);
    expect(refused).toBeInstanceOf(QueueFullError);
    expect(refused.message).toMatch(/2 sequences are waiting \(at most 2\)/);
    await expect(s.submit(req([30], 2, { n: 2 }))).rejects.toBeInstanceOf(QueueFullError);
    expect(events.filter((e) => e.type === 'rejected')).toHaveLength(2);
    expect(s.stats).toMatchObject({ running: 1, waiting: 2 });
    await Promise.all([running, ...queued]);
  });
});

describe('Scheduler: sampling and choices', () => {
  const seeded = (seed: number, extra: Partial<SamplingParams> = {}): SamplingParams => ({
    ...GREEDY,
    temperature: 1,
    seed,
    ...extra,
  });

  test('a seeded request gives the same tokens alone and batched with others', async () => {
    const alone = await new Scheduler(new RandomRowsExecutor(), cache(32), LIMITS).submit(
      req([7], 12, { sampling: seeded(1234) }),
    );
    const s = new Scheduler(new RandomRowsExecutor(), cache(32), LIMITS);
    const [batched] = await Promise.all([
      s.submit(req([7], 12, { sampling: seeded(1234) })),
      s.submit(req([9, 3, 4], 12, { sampling: seeded(1) })),
      s.submit(req([7], 12, { sampling: seeded(99) })),
    ]);
    expect(ids(batched)).toEqual(ids(alone));
    expect(new Set(ids(alone)).size).toBeGreaterThan(3); // it really sampled
  });

  test('n = 4 gives four different continuations of one prompt, each its own sequence', async () => {
    const ex = new RandomRowsExecutor();
    const s = new Scheduler(ex, cache(32), LIMITS);
    const events = recorder(s);
    const r = await s.submit(req([7], 10, { n: 4, sampling: seeded(5) }));
    expect(r.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    expect(new Set(r.choices.map((c) => ids(r, c.index).join())).size).toBe(4);
    expect(new Set(ex.steps.flat().map((row) => row.seqId)).size).toBe(4);
    expect(events.find((e) => e.type === 'finished')).toMatchObject({ completionTokens: 40 });
  });
});

describe('Scheduler: a lost worker', () => {
  test('streamed requests fail at once; the others are re-run from their prompt after resume', async () => {
    const ex = new ScriptedExecutor();
    const blocks = cache(16);
    const s = new Scheduler(ex, blocks, { ...LIMITS, maxRunning: 2 });
    const events = recorder(s);
    let streamedTokens = 0;
    const streaming = s.submit(
      req([5], 20, {
        onToken: () => {
          // A token out, then the pipeline breaks under the next step.
          if (++streamedTokens === 1) ex.loseWorkerNext = true;
          return false;
        },
      }),
    );
    const prompt = Array.from({ length: 30 }, (_, i) => 10 + i); // 30 tokens: prefilling for 5 steps
    const prefilling = s.submit(req(prompt, 3));
    const queued = s.submit(req([40], 3)); // over maxRunning: waits in the queue
    const err = await streaming.catch((e) => e);
    expect(err).toBeInstanceOf(RequestFailedError);
    expect(err.message).toMatch(/a worker was lost: stage 127\.0\.0\.1:7001 closed the stream; .*retry/);
    expect(s.stats).toMatchObject({
      running: 0,
      freeBlocks: 16,
      suspended: expect.stringMatching(/worker was lost/),
    });
    const sent = ex.steps.length;
    await new Promise((r) => setTimeout(r, 30));
    expect(ex.steps.length).toBe(sent); // nothing is sent while suspended
    const late = s.submit(req([60], 2)); // accepted, waits for the pipeline
    s.resume();
    const results = await Promise.all([prefilling, queued, late]);
    expect(results.map((r) => ids(r))).toEqual([
      [40, 41, 42],
      [41, 42, 43],
      [61, 62],
    ]);
    // The re-run started over from its prompt.
    expect(ex.steps.flat().filter((row) => row.tokens?.[0] === 10 && row.startPos === 0).length).toBe(2);
    expect(
      events.filter((e) => e.type === 'finished').map((e) => e.type === 'finished' && e.outcome),
    ).toContain('failed');
  });

  test('a step sent before a suspension that fails after it does not suspend the scheduler again', async () => {
    const ex = new ScriptedExecutor();
    const s = new Scheduler(ex, cache(16), LIMITS);
    const events = recorder(s);
    const held = ex.hold();
    const first = s.submit(req([5], 3));
    await held.started;
    // The cluster saw the loss first (workerLost), then mended it (recovered) ...
    s.suspend('worker w1 stopped sending heartbeats');
    s.resume();
    // ... and only now does the step that was out on the broken pipeline fail.
    ex.loseWorkerNext = true;
    held.release();
    expect(ids(await first)).toEqual([6, 7, 8]); // re-queued at the suspension, re-run after it
    expect(s.stats.suspended).toBeUndefined();
    const transitions = events.filter((e) => e.type === 'suspended' || e.type === 'resumed');
    expect(transitions).toEqual([
      expect.objectContaining({
        type: 'suspended',
        source: 'cluster',
        reason: 'worker w1 stopped sending heartbeats',
      }),
      expect.objectContaining({ type: 'resumed' }),
    ]);
    // A step that finds the pipeline broken while serving suspends it, saying the executor did.
    ex.loseWorkerNext = true;
    const second = s.submit(req([9], 2));
    await new Promise((r) => setTimeout(r, 30));
    expect(events.at(-1)).toMatchObject({ type: 'suspended', source: 'executor' });
    s.resume();
    expect(ids(await second)).toEqual([10, 11]);
  });

  test('while suspended, requests wait at most degradedWaitMs, then fail clearly', async () => {
    const s = new Scheduler(new ScriptedExecutor(), cache(16), { ...LIMITS, degradedWaitMs: 300 });
    s.suspend('worker w1 exited (SIGKILL)');
    const started = performance.now();
    const err = await s.submit(req([5], 3)).catch((e) => e);
    expect(err).toBeInstanceOf(RequestFailedError);
    expect(err.message).toMatch(/degraded \(worker w1 exited \(SIGKILL\)\) and did not recover in 0\.3 s/);
    expect(performance.now() - started).toBeGreaterThanOrEqual(280);
    s.resume();
    expect(ids(await s.submit(req([5], 3)))).toEqual([6, 7, 8]);
  });
});

describe('Scheduler: prompt logprobs', () => {
  test("each prompt token's logprob from the previous position's logits, across chunks and a preemption", async () => {
    const ex = new RandomRowsExecutor();
    const prompt = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30];
    const expected = prompt.slice(1).map((id, i) => {
      const row = new Float32Array(VOCAB);
      ex.row(prompt[i], row);
      return { id, logprob: tokenLogprob(row, id) };
    });
    const s = new Scheduler(ex, cache(64), LIMITS);
    const r = await s.submit(req(prompt, 3, { promptLogprobs: true, n: 2 }));
    expect(r.promptLogprobs).toEqual(expected);
    // Chunks of 8 sent every row's logits for choice 0 only; choice 1 asked for its last row alone.
    const rows = ex.steps.flat().filter((row) => row.startPos === 0 || row.numTokens > 1);
    expect(rows.some((row) => row.logitRows === row.numTokens && row.numTokens === 8)).toBe(true);
    expect(
      rows
        .filter((row) => row.logitRows > 1)
        .map((row) => row.seqId)
        .every((id) => id === rows[0].seqId),
    ).toBe(true);
    // Under preemption the values are the same, and the recompute asks for none of them again.
    const tightEx = new RandomRowsExecutor();
    const tight = new Scheduler(tightEx, cache(9), LIMITS);
    const events = recorder(tight);
    const [, a] = await Promise.all([
      tight.submit(req([40, 41, 42, 43, 44, 45], 14)),
      tight.submit(req(prompt, 12, { promptLogprobs: true })),
    ]);
    const preempted = events.filter((e) => e.type === 'preempted');
    expect(preempted.map((e) => e.requestId)).toContain(a.requestId);
    expect(a.promptLogprobs).toEqual(expected);
    const recomputes = tightEx.steps.flat().filter((row) => row.tokens?.[0] === 11);
    expect(recomputes.length).toBeGreaterThan(1);
    expect(recomputes.at(-1)?.logitRows).toBeLessThanOrEqual(1);
  });
});

describe('Scheduler: observer events and shutdown', () => {
  test('one event per fact, with a consistent timing', async () => {
    const s = new Scheduler(new ScriptedExecutor(), cache(16), LIMITS);
    const events = recorder(s);
    const r = await s.submit(req([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], 3));
    const types = events.map((e) => e.type);
    expect(types[0]).toBe('admitted');
    expect(types.filter((t) => t === 'token')).toHaveLength(3);
    expect(types.filter((t) => t === 'step')).toHaveLength(4);
    expect(types.at(-1)).toBe('finished');
    const steps = events.filter((e) => e.type === 'step');
    expect(steps.map((e) => [e.batchSize, e.promptTokens, e.decodeTokens])).toEqual([
      [1, 8, 0],
      [1, 2, 0],
      [1, 0, 1],
      [1, 0, 1],
    ]);
    const times = events.map((e) => e.time);
    expect([...times].sort((a, b) => a - b)).toEqual(times);
    const t = r.timing;
    for (const v of Object.values(t)) expect(v).toBeGreaterThanOrEqual(0);
    expect(t.timeToFirstToken).toBeCloseTo(t.queue + t.prefill, 9);
    expect(t.total).toBeCloseTo(t.timeToFirstToken + t.decode, 9);
    expect(events.at(-1)).toMatchObject({
      outcome: 'length',
      promptTokens: 10,
      completionTokens: 3,
      timing: t,
    });
  });

  test('drain stops admitting and resolves once in-flight requests finished', async () => {
    const s = new Scheduler(new ScriptedExecutor(), cache(16), LIMITS);
    const running = s.submit(req([5], 5));
    const drained = s.drain();
    await expect(s.submit(req([6], 2))).rejects.toThrow(/shutting down/);
    await drained;
    expect(ids(await running)).toEqual([6, 7, 8, 9, 10]);
  });

  test('shutdown fails everything still queued or running and frees their blocks', async () => {
    const blocks = cache(16);
    const s = new Scheduler(new ScriptedExecutor(), blocks, { ...LIMITS, maxRunning: 1 });
    const a = s.submit(req([5], 30));
    const b = s.submit(req([6], 30));
    s.shutdown('stopping for a test');
    await expect(a).rejects.toThrow(/stopping for a test/);
    await expect(b).rejects.toBeInstanceOf(RequestFailedError);
    expect(blocks.freeBlocks).toBe(16);
  });
});
