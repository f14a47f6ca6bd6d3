// Graceful shutdown of `medcluster up` with requests in flight: SIGTERM turns readiness false
// (GET /ready, GET /health and gRPC health) while liveness stays true (GET /live), refuses new
// requests with 503, lets the in-flight ones finish within --shutdown-grace-s, fails the one
// that cannot finish in time with a clear error, and exits 0 with its workers.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { InferenceClient } from '@medcluster/proto';
import { afterAll, describe, expect, test } from 'vitest';
import { startUp, stopAll, waitForStderr } from './harness/index.js';
import { testModel } from './models.js';

const run = promisify(execFile);
const GRACE_S = 8;

// biome-ignore lint/suspicious/noExplicitAny: SSE events are read field by field
type Json = any;

afterAll(() => stopAll());

/** A streamed completion: its token count, finish reason, or error. */
async function stream(base: string, prompt: string, maxTokens: number, onToken: () => void) {
  const r = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, stream: true, ignore_eos: true }),
  });
  const out: { tokens: number; finish?: string; error?: string; at?: number } = { tokens: 0 };
  const reader = (r.body as ReadableStream<Uint8Array>).getReader();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += new TextDecoder().decode(value);
    for (let nl = buffered.indexOf('\n\n'); nl >= 0; nl = buffered.indexOf('\n\n')) {
      const data = buffered.slice(0, nl).replace(/^data: /, '');
      buffered = buffered.slice(nl + 2);
      if (data === '[DONE]') continue;
      const event = JSON.parse(data) as Json;
      if (event.error) {
        out.error = event.error.message;
        out.at = performance.now();
      } else if (event.choices?.[0]) {
        if (event.choices[0].text !== undefined && event.choices[0].finish_reason === null) out.tokens++;
        if (event.choices[0].finish_reason) out.finish = event.choices[0].finish_reason;
        onToken();
      }
    }
  }
  return out;
}

describe('graceful shutdown', () => {
  test('SIGTERM: not ready but alive, new requests 503, in-flight ones finish, the one past the grace fails, exit 0', async () => {
    const modelDir = await testModel();
    const {
      up,
      grpc,
      http: base,
    } = await startUp(['--model', modelDir, '--shutdown-grace-s', String(GRACE_S)]);
    const client = new InferenceClient(grpc);
    const { stdout } = await run('pgrep', ['-P', String(up.child.pid), '-f', 'worker --id']);
    const workerPids = stdout.trim().split('\n').map(Number);
    try {
      expect((await fetch(`${base}/ready`)).status).toBe(200);
      let tokens = 0;
      const counted = () => {
        tokens++;
      };
      // Three that finish well within the grace period, and one that cannot.
      const short = [0, 1, 2].map((i) => stream(base, `Short ${i}: the patient`, 40, counted));
      const long = stream(base, 'Long: the patient', 3500, counted);
      while (tokens < 8) await new Promise((r) => setTimeout(r, 20));
      const termAt = performance.now();
      up.child.kill('SIGTERM');
      await waitForStderr(up.child, /SIGTERM: no new requests/, 5000);
      // Draining: readiness is false everywhere, liveness true, new work refused.
      expect((await fetch(`${base}/ready`)).status).toBe(503);
      expect((await fetch(`${base}/health`)).status).toBe(503);
      expect((await fetch(`${base}/live`)).status).toBe(200);
      expect((await client.healthCheck('')).status).toBe('NOT_SERVING');
      const refused = await fetch(`${base}/v1/completions`, {
        method: 'POST',
        body: JSON.stringify({ prompt: 'too late', max_tokens: 2 }),
      });
      expect(refused.status).toBe(503);
      const finished = await Promise.all(short);
      for (const s of finished) {
        expect(s.error).toBeUndefined();
        expect(s.finish).toBe('length');
        expect(s.tokens).toBe(40);
      }
      const cut = await long;
      expect(cut.error).toMatch(/shutting down/);
      const cutMs = (cut.at as number) - termAt;
      expect(cutMs).toBeGreaterThan(GRACE_S * 1000 - 500);
      expect(cutMs).toBeLessThan(GRACE_S * 1000 + 3000);
      const code = await new Promise<number | null>((resolve) => {
        if (up.child.exitCode !== null) resolve(up.child.exitCode);
        up.child.once('exit', (c) => resolve(c));
      });
      const exitedMs = performance.now() - termAt;
      expect(code).toBe(0);
      // Within the grace and a few seconds: workers leave on SIGTERM, and up SIGKILLs one still
      // there 5 s later, which this bound would catch.
      expect(exitedMs).toBeLessThan(GRACE_S * 1000 + 4500);
      for (const pid of workerPids) expect(() => process.kill(pid, 0), `worker ${pid} exited`).toThrow();
      console.log(
        `graceful shutdown: 3 in-flight streams finished after SIGTERM, the one past the ${GRACE_S} s grace failed at ${(cutMs / 1000).toFixed(1)} s, exit 0 after ${(exitedMs / 1000).toFixed(1)} s`,
      );
    } finally {
      client.close();
    }
  });
});
