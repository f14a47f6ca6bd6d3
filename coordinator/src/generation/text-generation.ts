// Text in, token events out: tokenizes a prompt, runs its choices through the scheduler, and
// turns each generated token into an event carrying the text it completes. The text may be
// empty while the detokenizer holds back part of a multi-byte character or the stop matcher
// holds back what could be the start of a stop string; the finish event of each choice carries
// whatever was still held. Every API (gRPC, OpenAI, TGI) is built on these events, so streamed
// and unary answers are the same ids and the same text by construction.

import { randomUUID } from 'node:crypto';
import type { SampledToken, SamplingParams, TokenLogprob } from '@medcluster/worker';
import { RequestError } from '../scheduler/errors.js';
import type { RequestTiming } from '../scheduler/events.js';
import type { FinishReason, Scheduler } from '../scheduler/scheduler.js';
import type { LlamaTokenizer } from '../tokenizer/index.js';
import { StopMatcher } from './stop-matcher.js';

/** The most stop strings a request may give, and the longest one. */
export const MAX_STOP_STRINGS = 16;
export const MAX_STOP_STRING_LENGTH = 256;
/** The most stop token ids a request may give. */
export const MAX_STOP_TOKEN_IDS = 64;

export interface TextRequest {
  /** Names the request in events and logs (one is made when absent). */
  requestId?: string;
  /** Prompt text (tokenized with a leading BOS) or token ids used as given. */
  prompt: string | readonly number[];
  /** Most tokens per choice; absent means the server default, capped by what the context leaves. */
  maxTokens?: number;
  /** Independent choices (default 1). */
  n?: number;
  /** `stopTokenIds` here are the request's own; the eos id is added unless `ignoreEos`. */
  sampling: SamplingParams;
  /** Keep generating past the eos token (it is then an ordinary token). */
  ignoreEos?: boolean;
  /** Generation of a choice ends when its text contains one of these (not included in the text). */
  stop?: readonly string[];
  /** Also score the prompt: each prompt token's logprob after the first (costs a logits row per token). */
  promptLogprobs?: boolean;
  signal?: AbortSignal;
}

export type TextEvent =
  /** One generated token of a choice, in order; `text` is what it completes (possibly ''). */
  | {
      type: 'token';
      choice: number;
      /** Position of the token among the choice's generated tokens. */
      index: number;
      id: number;
      text: string;
      logprob?: number;
      topLogprobs?: TokenLogprob[];
    }
  /** A choice ended; `text` is what was still held back (never part of a stop string). */
  | {
      type: 'finish';
      choice: number;
      text: string;
      finishReason: FinishReason;
      stopSequence?: string;
      stopTokenId?: number;
      completionTokens: number;
    };

export interface TextChoice {
  index: number;
  text: string;
  tokens: SampledToken[];
  finishReason: FinishReason;
  /** The stop string that ended the choice. */
  stopSequence?: string;
  /** The stop token id (other than eos) that ended the choice. */
  stopTokenId?: number;
}

export interface TextResult {
  requestId: string;
  promptIds: readonly number[];
  choices: TextChoice[];
  promptTokens: number;
  /** Generated tokens over every choice. */
  completionTokens: number;
  timing: RequestTiming;
  /** Prompt tokens 1..n-1 with their logprobs, when asked for. */
  promptLogprobs?: TokenLogprob[];
}

export interface GeneratorDefaults {
  /** max_tokens when a request gives none. */
  maxTokens: number;
}

/** Prompt ids the detokenizer decodes before the first generated one (as vLLM and TGI do). */
const PROMPT_CONTEXT_IDS = 4;

/** One choice's text pipeline: detokenizer, then the stop matcher. */
class ChoiceText {
  text = '';
  /** Tokens pushed so far. */
  count = 0;
  stopSequence?: string;
  private readonly decoder;
  private readonly stops: StopMatcher;

  constructor(tokenizer: LlamaTokenizer, stop: readonly string[], promptIds: readonly number[]) {
    // The prompt's last ids give the first generated token its context: " presented", not "presented".
    this.decoder = tokenizer.detokenizer({ skipSpecial: true }, promptIds.slice(-PROMPT_CONTEXT_IDS));
    this.stops = new StopMatcher(stop);
  }

  /** The text a new token lets out, and whether a stop string matched. */
  push(id: number): { text: string; stopped: boolean } {
    const { emit, stopped, matched } = this.stops.push(this.decoder.push(id));
    this.text += emit;
    if (stopped) this.stopSequence = matched;
    return { text: emit, stopped };
  }

  /** What was still held back when the choice ended without a stop string. */
  flush(): string {
    const rest = this.stops.push(this.decoder.flush()).emit + this.stops.flush();
    this.text += rest;
    return rest;
  }
}

export class TextGenerator {
  constructor(
    readonly tokenizer: LlamaTokenizer,
    private readonly scheduler: Scheduler,
    readonly defaults: GeneratorDefaults,
  ) {}

  get maxContext(): number {
    return this.scheduler.limits.maxContext;
  }

  /** Prompt ids as the model sees them; refuses text too long to be worth tokenizing. */
  promptIds(prompt: string | readonly number[]): readonly number[] {
    if (typeof prompt !== 'string') return prompt;
    if (prompt.length === 0) throw new RequestError('the prompt text is empty');
    // Every token covers at most maxPieceBytes bytes of text, so longer text cannot fit: refuse it
    // before tokenizing it on the event loop.
    const bytes = Buffer.byteLength(prompt, 'utf8');
    const fewest = Math.ceil(bytes / this.tokenizer.maxPieceBytes);
    if (fewest > this.maxContext) {
      throw new RequestError(
        `the prompt (${bytes} bytes, at least ${fewest} tokens) exceeds the context of ${this.maxContext} tokens`,
      );
    }
    return this.tokenizer.encode(prompt);
  }

  async generate(request: TextRequest, onEvent?: (event: TextEvent) => void): Promise<TextResult> {
    const stop = request.stop ?? [];
    if (stop.length > MAX_STOP_STRINGS)
      throw new RequestError(`stop: at most ${MAX_STOP_STRINGS} stop strings, got ${stop.length}`);
    for (const s of stop) {
      if (typeof s !== 'string' || s.length === 0 || s.length > MAX_STOP_STRING_LENGTH)
        throw new RequestError(`stop: each stop string must have 1 to ${MAX_STOP_STRING_LENGTH} characters`);
    }
    if (request.sampling.stopTokenIds.length > MAX_STOP_TOKEN_IDS) {
      throw new RequestError(
        `stop_token_ids: at most ${MAX_STOP_TOKEN_IDS} ids, got ${request.sampling.stopTokenIds.length}`,
      );
    }
    const promptIds = this.promptIds(request.prompt);
    const room = this.maxContext - promptIds.length;
    if (room < 1) {
      throw new RequestError(
        `the prompt of ${promptIds.length} tokens exceeds the context of ${this.maxContext} tokens (it must leave room for one generated token)`,
      );
    }
    const texts: ChoiceText[] = [];
    const textOf = (choice: number) => {
      texts[choice] ??= new ChoiceText(this.tokenizer, stop, promptIds);
      return texts[choice];
    };
    const eos = this.tokenizer.eosTokenId;
    const result = await this.scheduler.submit({
      requestId: request.requestId ?? randomUUID(),
      promptIds,
      maxTokens: request.maxTokens ?? Math.min(this.defaults.maxTokens, room),
      n: request.n ?? 1,
      sampling: {
        ...request.sampling,
        stopTokenIds: request.ignoreEos
          ? request.sampling.stopTokenIds
          : [eos, ...request.sampling.stopTokenIds.filter((id) => id !== eos)],
      },
      signal: request.signal,
      promptLogprobs: request.promptLogprobs,
      onToken: (choice, token) => {
        const t = textOf(choice);
        const { text, stopped } = t.push(token.id);
        onEvent?.({
          type: 'token',
          choice,
          index: t.count++,
          id: token.id,
          text,
          ...(token.logprob === undefined ? {} : { logprob: token.logprob, topLogprobs: token.topLogprobs }),
        });
        return stopped;
      },
      onFinish: (c) => {
        const t = textOf(c.index);
        // A matched stop string ends the text where it began; anything held back was part of it.
        const rest = t.stopSequence === undefined ? t.flush() : '';
        onEvent?.({
          type: 'finish',
          choice: c.index,
          text: rest,
          finishReason: c.finishReason,
          ...(t.stopSequence === undefined ? {} : { stopSequence: t.stopSequence }),
          ...(c.stopTokenId === undefined ? {} : { stopTokenId: c.stopTokenId }),
          completionTokens: c.tokens.length,
        });
      },
    });
    const choices = result.choices.map((c): TextChoice => {
      const t = textOf(c.index);
      return {
        index: c.index,
        text: t.text,
        tokens: c.tokens,
        finishReason: c.finishReason,
        ...(t.stopSequence === undefined ? {} : { stopSequence: t.stopSequence }),
        ...(c.stopTokenId === undefined ? {} : { stopTokenId: c.stopTokenId }),
      };
    });
    return {
      requestId: result.requestId,
      promptIds,
      choices,
      promptTokens: result.promptTokens,
      completionTokens: choices.reduce((sum, c) => sum + c.tokens.length, 0),
      timing: result.timing,
      ...(result.promptLogprobs ? { promptLogprobs: result.promptLogprobs } : {}),
    };
  }
}
