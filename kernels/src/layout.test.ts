// The packed AWQ layout and the CUDA matmuls' index arithmetic, tested on the host: the C++
// program kernels/gpu/layout-test.cu packs random AutoAWQ tensors as the pack kernel does and
// emulates the GEMV and the wgmma kernel lane by lane (fragments, x's B fragments by ldmatrix, the
// swizzled shared memory and the wgmma descriptors, output mapping, stream-K fix-up) against a
// float64 GEMM. It needs nvcc to compile (not a GPU); without nvcc the test is skipped.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const source = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'gpu', 'layout-test.cu');
const haveNvcc = spawnSync('nvcc', ['--version']).status === 0;

describe.skipIf(!haveNvcc)('packed AWQ layout (host emulation of the CUDA GEMV and wgmma kernel)', () => {
  it('packs and reads back every shape exactly', () => {
    const dir = mkdtempSync(join(tmpdir(), 'medcluster-layout-'));
    try {
      const exe = join(dir, 'layout-test');
      const build = spawnSync('nvcc', ['-std=c++17', '-O2', '-x', 'cu', source, '-o', exe], {
        encoding: 'utf8',
      });
      expect(build.status, build.stderr).toBe(0);
      const run = spawnSync(exe, [], { encoding: 'utf8' });
      expect(run.stdout).toMatch(/PASSED: 0 failure\(s\)/);
      expect(run.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);
});
