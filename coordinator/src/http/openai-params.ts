// The request fields the OpenAI routes share (and vLLM's extras that its users send), read into
// the generator's terms. OpenAI's defaults apply: temperature 1, top_p 1, a random seed; a
// missing max_tokens means the server's --default-max-tokens, capped by the context.

import { randomInt } from 'node:crypto';
import { MAX_LOGPROBS, type SamplingParams } from '@medcluster/worker';
import {
  MAX_STOP_STRING_LENGTH,
  MAX_STOP_STRINGS,
  MAX_STOP_TOKEN_IDS,
} from '../generation/text-generation.js';
import { MAX_CHOICES } from '../scheduler/scheduler.js';
import type { Fields } from './fields.js';

export interface OpenAiCommon {
  n: number;
  maxTokens?: number;
  /** The field max_tokens came from (for messages about it). */
  maxTokensField: string;
  sampling: SamplingParams;
  stop: string[];
  ignoreEos: boolean;
  stream: boolean;
  includeUsage: boolean;
}

export { MAX_LOGPROBS };

/** `maxTokenFields` in order of precedence (chat: max_completion_tokens, then max_tokens). */
export function readCommon(f: Fields, maxTokenFields: string[], vocabRows: number): OpenAiCommon {
  // Any model name is accepted (UIs send their own); the reply names the served model.
  f.string('model');
  f.string('user');
  const n = f.integer('n', { min: 1, max: MAX_CHOICES }) ?? 1;
  let maxTokens: number | undefined;
  let maxTokensField = maxTokenFields[0];
  for (const name of maxTokenFields) {
    const v = f.integer(name, { min: 1 });
    if (v !== undefined && maxTokens === undefined) {
      maxTokens = v;
      maxTokensField = name;
    }
  }
  const temperature = f.number('temperature', { min: 0, max: 2 }) ?? 1;
  const topP = f.number('top_p', { min: 0, minExclusive: true, max: 1 }) ?? 1;
  // vLLM spells "no top-k" -1; 0 means the same here.
  const topK = Math.max(0, f.integer('top_k', { min: -1 }) ?? 0);
  f.unsupported('min_p', (v) => v === 0, 'min_p sampling is not implemented; send 0 or leave it out');
  const presencePenalty = f.number('presence_penalty', { min: -2, max: 2 }) ?? 0;
  const frequencyPenalty = f.number('frequency_penalty', { min: -2, max: 2 }) ?? 0;
  const repetitionPenalty = f.number('repetition_penalty', { min: 0, minExclusive: true }) ?? 1;
  const seed = f.integer('seed', { min: 0 }) ?? randomInt(2 ** 48 - 1);
  const stop = f.strings('stop', { maxItems: MAX_STOP_STRINGS, maxLength: MAX_STOP_STRING_LENGTH }) ?? [];
  const stopTokenIds =
    f.integers('stop_token_ids', { min: 0, max: vocabRows - 1, maxItems: MAX_STOP_TOKEN_IDS }) ?? [];
  const minTokens = f.integer('min_tokens', { min: 0 }) ?? 0;
  if (maxTokens !== undefined && minTokens > maxTokens)
    f.fail('min_tokens', `(${minTokens}) must not exceed ${maxTokensField} (${maxTokens})`);
  const ignoreEos = f.boolean('ignore_eos') ?? false;
  const stream = f.boolean('stream') ?? false;
  const options = f.object('stream_options');
  if (options && !stream) f.fail('stream_options', 'is only allowed with "stream": true');
  const includeUsage = options?.boolean('include_usage') ?? false;
  f.unsupported(
    'logit_bias',
    (v) => typeof v === 'object' && !Array.isArray(v) && Object.keys(v as object).length === 0,
    'logit biases are not applied',
  );
  return {
    n,
    maxTokens,
    maxTokensField,
    sampling: {
      temperature,
      topK,
      topP,
      repetitionPenalty,
      presencePenalty,
      frequencyPenalty,
      stopTokenIds,
      minTokens,
      seed,
    },
    stop,
    ignoreEos,
    stream,
    includeUsage,
  };
}
