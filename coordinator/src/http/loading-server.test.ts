import { afterAll, describe, expect, test } from 'vitest';
import { createLoadingServer } from './loading-server.js';

describe('the HTTP port while the cluster loads', () => {
  const app = createLoadingServer(1 << 20);
  afterAll(() => app.close());

  test("answers 503 in each API's convention, with a Retry-After", async () => {
    const openai = await app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      payload: '{"messages": []}',
    });
    expect(openai.statusCode).toBe(503);
    expect(openai.headers['retry-after']).toBe('5');
    expect(openai.json()).toEqual({
      error: {
        message: expect.stringMatching(/still loading/),
        type: expect.any(String),
        param: null,
        code: 'loading',
      },
    });
    const tgi = await app.inject({ method: 'POST', url: '/generate', payload: '{"inputs": "x"}' });
    expect(tgi.statusCode).toBe(503);
    expect(tgi.json()).toEqual({
      error: expect.stringMatching(/still loading/),
      error_type: expect.any(String),
    });
    expect((await app.inject({ method: 'GET', url: '/health' })).statusCode).toBe(503);
    expect((await app.inject({ method: 'GET', url: '/v1/models' })).statusCode).toBe(503);
  });
});
