// What every route of the HTTP server shares: the serving context the gRPC API also uses, the
// scheduler's state, and the helpers built once per server.

import type { Scheduler } from '../scheduler/scheduler.js';
import type { ServingContext } from '../server/serving-context.js';
import { HttpError } from './errors.js';
import { FieldError } from './fields.js';
import type { Prompts } from './prompts.js';
import type { Runs } from './runs.js';
import type { TokenTexts } from './token-text.js';

export interface HttpContext {
  serving: ServingContext;
  scheduler: Pick<Scheduler, 'stats' | 'observe' | 'limits'>;
  prompts: Prompts;
  texts: TokenTexts;
  runs: Runs;
  /** Largest request body accepted, in bytes. */
  bodyLimit: number;
}

/** Refuses work while the cluster cannot serve (a worker is lost, or the server is draining). */
export function requireReady(ctx: HttpContext): void {
  if (!ctx.serving.healthy()) {
    throw new HttpError(
      503,
      'the server is not ready: a worker of the cluster is lost or the server is shutting down; retry later',
      'unavailable',
    );
  }
}

/**
 * Refuses a prompt and token budget that do not fit the context, naming the API's own fields;
 * the scheduler would refuse them too, but in its own words.
 */
export function checkContext(
  ctx: HttpContext,
  promptTokens: number,
  maxTokens: number | undefined,
  fields: { prompt: string; maxTokens: string },
): void {
  const context = ctx.scheduler.limits.maxContext;
  if (promptTokens >= context) {
    throw new FieldError(
      fields.prompt,
      `${fields.prompt}: the prompt of ${promptTokens} tokens exceeds the context of ${context} tokens (it must leave room for one generated token)`,
    );
  }
  if (maxTokens !== undefined && promptTokens + maxTokens > context) {
    throw new FieldError(
      fields.maxTokens,
      `${fields.maxTokens} ${maxTokens} plus the prompt's ${promptTokens} tokens exceeds the context of ${context} tokens; at most ${context - promptTokens} can be generated`,
    );
  }
}
