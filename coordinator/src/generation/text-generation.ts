// Text in, text out: tokenizes a prompt, runs it through the scheduler, detokenizes the
// stream (holding back partial UTF-8 and partial stop sequences), and reports usage.

import type { FinishReason, Scheduler } from '../scheduler/scheduler.js';
import type { LlamaTokenizer } from '../tokenizer/index.js';
import type { SamplingParams } from './sampler.js';
import { StopMatcher } from './stop-matcher.js';

export interface TextRequest {
  /** Prompt text (BOS is prepended) or token ids used as given. */
  prompt: string | number[];
  maxTokens: number;
  sampling: SamplingParams;
  stop?: readonly string[];
  signal?: AbortSignal;
}

export interface TextResult {
  text: string;
  tokenIds: number[];
  finishReason: FinishReason;
  /** The stop sequence that ended generation, when finishReason is 'stop'. */
  stopSequence?: string;
  promptTokens: number;
  completionTokens: number;
  timeToFirstTokenMs: number;
  totalMs: number;
}

/** Called with each piece of text as soon as it is safe to show. */
export type OnText = (delta: string, tokenId: number) => void;

export class TextGenerator {
  constructor(
    readonly tokenizer: LlamaTokenizer,
    private readonly scheduler: Scheduler,
  ) {}

  async generate(request: TextRequest, onText?: OnText): Promise<TextResult> {
    const started = performance.now();
    const promptIds =
      typeof request.prompt === 'string' ? this.tokenizer.encode(request.prompt) : request.prompt;
    const decoder = this.tokenizer.detokenizer({ skipSpecial: true });
    const stops = new StopMatcher(request.stop ?? []);
    let text = '';
    let stopSequence: string | undefined;
    const result = await this.scheduler.submit({
      promptIds,
      maxTokens: request.maxTokens,
      sampling: request.sampling,
      stopTokenIds: [this.tokenizer.eosTokenId],
      signal: request.signal,
      onToken: (tokenId) => {
        const { emit, stopped, matched } = stops.push(decoder.push(tokenId));
        stopSequence = matched;
        if (emit) {
          text += emit;
          onText?.(emit, tokenId);
        }
        return stopped;
      },
    });
    if (result.finishReason !== 'stop') {
      const rest = stops.push(decoder.flush()).emit + stops.flush();
      if (rest) {
        text += rest;
        onText?.(rest, -1);
      }
    }
    return {
      text,
      tokenIds: result.tokenIds,
      finishReason: result.finishReason,
      stopSequence,
      promptTokens: result.promptTokens,
      completionTokens: result.tokenIds.length,
      timeToFirstTokenMs: result.timeToFirstTokenMs,
      totalMs: performance.now() - started,
    };
  }
}
