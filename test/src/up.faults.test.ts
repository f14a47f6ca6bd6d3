// A worker that hangs under `medcluster up`, where there are no heartbeats: only the deadlines
// can tell. tp = 2: the rank left waiting fails its collective call past --collective-timeout-s,
// the coordinator's step to the hung rank fails past --step-timeout-s, the cluster asks every
// worker, kills the one that does not answer, and restarts its stage; serving resumes. A worker
// whose device is lost (MEDCLUSTER_FAILPOINTS stands in for a GPU's lost context) says so and
// leaves, and is restarted. And a launcher that dies leaves no worker behind.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type * as grpc from '@grpc/grpc-js';
import { InferenceClient, type inferenceV1 } from '@medcluster/proto';
import { afterAll, describe, expect, test } from 'vitest';
import { startUp, stopAll, waitForStderr } from './harness/index.js';
import { testModel } from './models.js';

const run = promisify(execFile);
const STEP_TIMEOUT_S = 4;

afterAll(() => stopAll());

describe('a worker that hangs under up', () => {
  test('the deadlines fail its step within a bound, it is killed and its stage restarted, serving resumes', async () => {
    const modelDir = await testModel();
    const { up, grpc } = await startUp([
      '--model',
      modelDir,
      '--tp',
      '2',
      '--step-timeout-s',
      String(STEP_TIMEOUT_S),
      '--collective-timeout-s',
      '2',
    ]);
    const client = new InferenceClient(grpc);
    try {
      const got: number[] = [];
      const streamed = (async () => {
        try {
          for await (const m of client.generateStream({ text: 'A long answer', maxTokens: 400 }))
            got.push(...m.tokenIds);
          return undefined;
        } catch (e) {
          return { error: e as grpc.ServiceError, at: performance.now() };
        }
      })();
      while (got.length === 0) await new Promise((r) => setTimeout(r, 20));
      const queued = client.generate({ text: 'Queued behind the hang: the patient', maxTokens: 6 });
      const { stdout } = await run('pgrep', ['-P', String(up.child.pid), '-f', 'worker --id w1 --listen']);
      const pid = Number(stdout.trim().split('\n')[0]);
      const stoppedAt = performance.now();
      process.kill(pid, 'SIGSTOP');
      const failed = await streamed;
      expect(failed?.error.code, failed?.error.details).toBe(14); // UNAVAILABLE
      expect(failed?.error.details).toMatch(/retry/);
      const detectedMs = (failed?.at as number) - stoppedAt;
      expect(detectedMs, 'hang to the stream error (ms)').toBeLessThan((STEP_TIMEOUT_S + 2) * 1000);
      let servingAt = 0;
      for (let i = 0; i < 600 && !servingAt; i++) {
        if ((await client.healthCheck('')).status === 'SERVING') servingAt = performance.now();
        else await new Promise((r) => setTimeout(r, 100));
      }
      expect(servingAt, 'serving again').toBeGreaterThan(0);
      expect(up.stderr()).toMatch(/worker w1 does not answer; restarting its stage/);
      const result = (await queued) as inferenceV1.GenerateResponse__Output;
      expect(result.tokenIds).toEqual(
        (await client.generate({ text: 'Queued behind the hang: the patient', maxTokens: 6 })).tokenIds,
      );
      expect(() => process.kill(pid, 0), 'the hung process is gone').toThrow();
      console.log(
        `hung worker under up (tp=2, w1 SIGSTOP): stream failed after ${detectedMs.toFixed(0)} ms, serving again ${(servingAt - stoppedAt).toFixed(0)} ms after the hang; 1 streamed request failed, 1 re-ran`,
      );
    } finally {
      client.close();
    }
  });
});

describe('a worker whose device is lost under up', () => {
  test('its step fails, it reports the device lost and exits, its stage restarts, serving resumes', async () => {
    const modelDir = await testModel();
    // Every worker process of this up, the restarted ones too, loses its device after 20 steps.
    const { up, grpc } = await startUp(['--model', modelDir, '--pp', '2'], {
      env: { MEDCLUSTER_FAILPOINTS: 'device-lost-after-steps=20' },
    });
    const client = new InferenceClient(grpc);
    try {
      const failed = await (async () => {
        for await (const _ of client.generateStream({ text: 'A long answer', maxTokens: 400 }));
      })().then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      expect(failed?.code, failed?.details).toBe(14); // UNAVAILABLE
      expect(failed?.details).toMatch(/retry/);
      await waitForStderr(up.child, /local cluster: stage \d is back/, 60_000);
      expect(up.stderr()).toMatch(/device lost: step: CUDA error cudaErrorIllegalAddress/);
      expect(up.stderr()).toMatch(/leaving so that a new process takes the device/);
      expect(up.stderr()).toMatch(/local cluster: restarting stage 0 \(w0\)/);
      let serving = false;
      for (let i = 0; i < 300 && !serving; i++) {
        serving = (await client.healthCheck('')).status === 'SERVING';
        if (!serving) await new Promise((r) => setTimeout(r, 100));
      }
      expect(serving, 'serving again').toBe(true);
      const again = await client.generate({ text: 'After the restart, the patient', maxTokens: 6 });
      expect(again.tokenIds).toHaveLength(6);
    } finally {
      client.close();
    }
  });
});

describe('a launcher killed with SIGKILL', () => {
  test('takes its workers with it: their stdin closes and they leave, loaded or loading', async () => {
    const modelDir = await testModel();
    // No --threads: up picks its workers' threads.
    const { up } = await startUp(['--model', modelDir, '--pp', '2'], { threads: null });
    const { stdout } = await run('pgrep', ['-P', String(up.child.pid), '-f', 'worker --id']);
    const pids = stdout.trim().split('\n').map(Number);
    expect(pids).toHaveLength(2);
    up.child.kill('SIGKILL');
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    const killedAt = performance.now();
    while (pids.some(alive) && performance.now() - killedAt < 15_000)
      await new Promise((r) => setTimeout(r, 50));
    const orphans = pids.filter(alive);
    for (const pid of orphans) process.kill(pid, 'SIGKILL'); // a failed check leaves nothing running
    expect(orphans, 'workers still running 15 s after the launcher died').toEqual([]);
    console.log(
      `launcher SIGKILL: its ${pids.length} workers gone after ${(performance.now() - killedAt).toFixed(0)} ms`,
    );
  });
});
