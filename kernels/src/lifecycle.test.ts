// The event loop keeps running while native work runs, and an idle device does not
// keep the process alive (while a pending read does).
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createDevice } from './device.js';

describe('device lifecycle', () => {
  it('does not block the event loop during a large awqLinear', async () => {
    const dev = createDevice({ kind: 'cpu', threads: 2 });
    const [m, k, n] = [96, 8192, 8192];
    const weights = {
      qweight: dev.randomBits([k, n / 8], 'i32', 1),
      qzeros: dev.randomBits([k / 128, n / 8], 'i32', 2),
      scales: dev.fromArray(new Float32Array((k / 128) * n).fill(0.01), [k / 128, n], 'f16'),
      groupSize: 128,
    };
    const x = dev.fromArray(new Float32Array(m * k).fill(0.5), [m, k], 'f16');
    await dev.sync();
    const gaps: number[] = [];
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      gaps.push(now - last);
      last = now;
    }, 5);
    const start = performance.now();
    const out = dev.awqLinear(x, weights, 'f32');
    const queued = performance.now() - start;
    await out.read();
    const elapsed = performance.now() - start;
    clearInterval(timer);
    await dev.close();
    expect(queued).toBeLessThan(20); // the call only enqueues
    expect(elapsed).toBeGreaterThan(100); // big enough for the ticks to mean something
    expect(gaps.length).toBeGreaterThan(elapsed / 50);
    expect(Math.max(...gaps)).toBeLessThan(100);
  });

  it('lets the process exit when idle, but not before a pending read settles', () => {
    const addon = join(
      dirname(fileURLToPath(import.meta.url)),
      '..',
      'build',
      'Release',
      'medcluster_kernels.node',
    );
    const script = `
      const { Device } = require(${JSON.stringify(addon)});
      const dev = new Device('cpu', 2, 0);
      const t = dev.fromArray(new Float32Array([1, 2, 3]), [3], 1);
      dev.read(t).then((v) => console.log('read', Array.from(v).join(',')));
    `;
    const out = execFileSync(process.execPath, ['-e', script], {
      encoding: 'utf8',
      timeout: 20_000,
      env: { ...process.env, MEDCLUSTER_KERNELS_ADDON: addon },
    });
    expect(out.trim()).toBe('read 1,2,3');
  });
});
