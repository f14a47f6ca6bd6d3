// What can go wrong with a request, as the APIs must tell it apart: the client sent something
// invalid (fix the request), the server is too busy right now (retry later), or a valid request
// could not be completed (a failed step, a shutdown).

/** The request itself is invalid; the message names the field (HTTP 400/422, INVALID_ARGUMENT). */
export class RequestError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RequestError';
  }
}

/** The waiting queue is full (HTTP 429, RESOURCE_EXHAUSTED): nothing was taken; retry later. */
export class QueueFullError extends Error {
  constructor(
    readonly waiting: number,
    readonly maxWaiting: number,
  ) {
    super(`the server is at capacity: ${waiting} sequences are waiting (at most ${maxWaiting}); retry later`);
    this.name = 'QueueFullError';
  }
}

/** A valid request that could not be completed (HTTP 503, UNAVAILABLE). */
export class RequestFailedError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RequestFailedError';
  }
}
