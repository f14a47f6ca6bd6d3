// copyRows (a stage's hidden states into and out of shared buffers) and the shared-memory ops'
// errors on a backend without them.

import { describe, expect, test } from 'vitest';
import { createDevice, KernelError } from './index.js';

describe('copyRows', () => {
  const dev = createDevice({ kind: 'cpu', threads: 1 });

  test('copies the leading rows and leaves the rest', async () => {
    const src = dev.fromArray(
      Float32Array.from({ length: 12 }, (_, i) => i + 1),
      [4, 3],
      'f32',
    );
    const dst = dev.fromArray(new Float32Array(6).fill(-1), [2, 3], 'f32');
    dev.copyRows(dst, src, 1);
    expect(Array.from(await dst.read())).toEqual([1, 2, 3, -1, -1, -1]);
    dev.copyRows(dst, src, 2);
    expect(Array.from(await dst.read())).toEqual([1, 2, 3, 4, 5, 6]);
    const halves = dev.fromArray(Float32Array.from([0.5, 1.5, 2.5, 3.5]), [2, 2], 'f16');
    const into = dev.zeros([3, 2], 'f16');
    dev.copyRows(into, halves, 2);
    expect(Array.from(await into.read())).toEqual([0.5, 1.5, 2.5, 3.5, 0, 0]);
  });

  test('refuses mismatched tensors and row counts', () => {
    const a = dev.zeros([2, 3], 'f32');
    expect(() => dev.copyRows(a, dev.zeros([2, 4], 'f32'), 1)).toThrow(/same columns/);
    expect(() => dev.copyRows(a, dev.zeros([2, 3], 'f16'), 1)).toThrow(/src \[2, 3\] f16 must be 2-D f32/);
    expect(() => dev.copyRows(a, dev.zeros([1, 3], 'f32'), 2)).toThrow(/rows 2 must be an integer in 0\.\.1/);
    expect(() => dev.copyRows(a, dev.zeros([4, 3], 'f32'), 3)).toThrow(KernelError);
  });

  test('shared tensors need the cuda backend', async () => {
    await expect(dev.allocShared([4, 8], 'f32')).rejects.toThrow(
      'allocShared: shared tensors need the cuda backend (this device is cpu)',
    );
    await expect(dev.openShared(new Uint8Array(88), [4, 8], 'f32')).rejects.toThrow(
      'openShared: shared tensors need the cuda backend (this device is cpu)',
    );
  });
});
