// Every failure of an HTTP request in the convention of the API it was sent to:
//   OpenAI routes: {"error": {"message", "type", "param", "code"}}, invalid requests 400
//   TGI routes:    {"error", "error_type"}, invalid requests 422
// and for both: 401 without a valid API key (when keys are required), 413 for a body over the
// limit, 429 when the waiting queue is full (retry later), 503 while the server cannot serve (a
// worker is lost, it is shutting down) or when a step the request was in failed. Anything else
// is a 500 whose cause is logged.

import { QueueFullError, RequestError, RequestFailedError } from '../scheduler/errors.js';
import { FieldError } from './fields.js';

export type ApiStyle = 'openai' | 'tgi';

/** An error with its own HTTP status (404, 503 not ready, ...). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

export interface ErrorReply {
  status: number;
  body: unknown;
}

interface Classified {
  status: number;
  message: string;
  param: string | null;
  openaiType: string;
  code: string | null;
  tgiType: string;
}

/** The field a scheduler or generator message names at its start (`top_p must ...`, `stop: ...`). */
function leadingField(message: string): string | null {
  return /^([a-z][a-z0-9_]*)(?: must|:)/.exec(message)?.[1] ?? null;
}

/** What fastify reports for a body it could not take (too large, a bad Content-Length, ...). */
function requestBodyProblem(err: Error & { code?: string; statusCode?: number }, bodyLimit: number) {
  if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return {
      status: 413,
      message: `the request body is larger than this server's limit of ${bodyLimit} bytes (--http-max-body-bytes)`,
      code: 'request_too_large',
    };
  }
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500)
    return { status: err.statusCode, message: err.message, code: err.code ?? null };
  return undefined;
}

function classify(err: unknown, style: ApiStyle, promptField: string | null, bodyLimit: number): Classified {
  const invalid = style === 'openai' ? 400 : 422;
  if (err instanceof FieldError) {
    return {
      status: invalid,
      message: err.message,
      param: err.param || null,
      openaiType: 'invalid_request_error',
      code: /exceeds the context/.test(err.message) ? 'context_length_exceeded' : null,
      tgiType: 'validation',
    };
  }
  if (err instanceof RequestError) {
    const context = /exceeds the context/.test(err.message);
    return {
      status: invalid,
      message: err.message,
      param: leadingField(err.message) ?? promptField,
      openaiType: 'invalid_request_error',
      code: context ? 'context_length_exceeded' : null,
      tgiType: 'validation',
    };
  }
  if (err instanceof QueueFullError) {
    return {
      status: 429,
      message: err.message,
      param: null,
      openaiType: 'rate_limit_error',
      code: 'queue_full',
      tgiType: 'overloaded',
    };
  }
  if (err instanceof RequestFailedError) {
    return {
      status: 503,
      message: err.message,
      param: null,
      openaiType: 'server_error',
      code: 'unavailable',
      tgiType: 'generation',
    };
  }
  if (err instanceof HttpError) {
    const client = err.status < 500;
    return {
      status: err.status,
      message: err.message,
      param: null,
      openaiType: client ? 'invalid_request_error' : 'server_error',
      code: err.code,
      tgiType:
        err.status === 404
          ? 'not_found'
          : err.status === 401
            ? 'unauthorized'
            : client
              ? 'validation'
              : 'unhealthy',
    };
  }
  if (err instanceof Error) {
    const body = requestBodyProblem(err, bodyLimit);
    if (body) {
      return {
        ...body,
        status: body.status === 400 ? invalid : body.status,
        param: null,
        openaiType: 'invalid_request_error',
        tgiType: 'validation',
      };
    }
  }
  return {
    status: 500,
    message: `internal error: ${err instanceof Error ? err.message : String(err)}`,
    param: null,
    openaiType: 'server_error',
    code: null,
    tgiType: 'internal',
  };
}

/**
 * The status and body for `err` in the API's convention. `promptField` is the field a message
 * about the prompt refers to (`prompt`, `messages`, `inputs`).
 */
export function errorReply(
  err: unknown,
  style: ApiStyle,
  options: { promptField?: string; bodyLimit: number },
): ErrorReply {
  const c = classify(err, style, options.promptField ?? null, options.bodyLimit);
  const body =
    style === 'openai'
      ? { error: { message: c.message, type: c.openaiType, param: c.param, code: c.code } }
      : { error: c.message, error_type: c.tgiType };
  return { status: c.status, body };
}
