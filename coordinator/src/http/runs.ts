// One HTTP request's generations, from admission to the end of the response.
//
// A response's status is known only once the scheduler has taken or refused the request: an
// invalid request (400/422) or a full queue (429) must get its status, not a 200 stream that
// fails. The scheduler tells admission by an 'admitted' event; `Runs` waits for it per request
// id, so a stream's headers go out the moment its request is queued and not a step later.
//
// The client going away (the response closes before it was finished) aborts every generation
// of the request: the scheduler then frees their KV blocks at once, queued, mid-prefill or
// decoding.

import { randomUUID } from 'node:crypto';
import { PassThrough } from 'node:stream';
import type { FastifyReply } from 'fastify';
import type { TextEvent, TextGenerator, TextRequest, TextResult } from '../generation/text-generation.js';
import type { Scheduler } from '../scheduler/scheduler.js';

export interface Run {
  requestId: string;
  /** Resolves once the scheduler queued the request; rejects with why it was refused. */
  admitted: Promise<void>;
  /** The finished generation (cancelled choices included, when the client went away). */
  done: Promise<TextResult>;
}

export class Runs {
  private readonly admissions = new Map<string, () => void>();
  private readonly unsubscribe: () => void;

  constructor(
    private readonly generator: TextGenerator,
    scheduler: Pick<Scheduler, 'observe'>,
  ) {
    this.unsubscribe = scheduler.observe((e) => {
      if (e.type !== 'admitted') return;
      this.admissions.get(e.requestId)?.();
      this.admissions.delete(e.requestId);
    });
  }

  /** Starts one generation; `signal` is the request's (see abortOnDisconnect). */
  start(
    request: Omit<TextRequest, 'requestId' | 'signal'>,
    signal: AbortSignal,
    onEvent?: (event: TextEvent) => void,
  ): Run {
    const requestId = `http-${randomUUID()}`;
    const admitted = new Promise<void>((resolve) => this.admissions.set(requestId, resolve));
    const done = this.generator.generate({ ...request, requestId, signal }, onEvent);
    done.then(
      () => this.admissions.delete(requestId),
      () => this.admissions.delete(requestId),
    );
    return { requestId, admitted: Promise.race([admitted, done.then(() => undefined)]), done };
  }

  close(): void {
    this.unsubscribe();
  }
}

/**
 * A signal that aborts when the client goes away before the response is finished (its
 * connection closed mid-request or mid-stream).
 */
export function abortOnDisconnect(reply: FastifyReply): AbortController {
  const abort = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) abort.abort();
  });
  return abort;
}

/**
 * Server-sent events: `data: <json>\n\n` per event, and nothing else (no comments, no
 * keep-alive lines). Writes after the client left are dropped.
 */
export class EventStream {
  readonly stream = new PassThrough();

  get open(): boolean {
    return !this.stream.writableEnded && !this.stream.destroyed;
  }

  send(data: unknown): void {
    if (this.open) this.stream.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  /** OpenAI's end marker, `data: [DONE]`. */
  done(): void {
    if (this.open) this.stream.write('data: [DONE]\n\n');
  }

  end(): void {
    if (this.open) this.stream.end();
  }

  /** Sends the response headers and starts streaming (call once the request was admitted). */
  start(reply: FastifyReply): FastifyReply {
    // Ended, not destroyed: fastify takes a destroyed payload for a failed one.
    reply.raw.once('close', () => this.end());
    return reply
      .code(200)
      .header('content-type', 'text/event-stream; charset=utf-8')
      .header('cache-control', 'no-cache')
      .header('x-accel-buffering', 'no')
      .send(this.stream);
  }
}
