// Device collectives on machines without a GPU: the CPU backend refuses them with a message
// that points at the host collective, and a CUDA device that cannot start says why. The
// collectives themselves run in the GPU tests (test/gpu/collective-gpu.ts).
import { afterAll, describe, expect, it } from 'vitest';
import { KernelError } from './api.js';
import { createDevice, cudaDeviceCount } from './device.js';

const cpu = createDevice({ kind: 'cpu', threads: 1 });
afterAll(() => cpu.close());

describe('device collectives without CUDA', () => {
  it('the cpu backend has none, and says what CPU workers use instead', async () => {
    for (const call of [
      () => cpu.prepareIpcCollective({ rank: 0, size: 2 }),
      () => cpu.ncclVersion(),
      () => cpu.ncclUniqueId(),
      () => cpu.openNcclCollective({ rank: 0, size: 1, uniqueId: new Uint8Array(128) }),
    ]) {
      let error: unknown;
      try {
        await call();
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(KernelError);
      expect((error as Error).message).toMatch(
        /^(prepareIpcCollective|ncclVersion|ncclUniqueId|openNcclCollective): the cpu backend has no device collective \(its workers use the host collective\)$/,
      );
    }
  });

  it.skipIf(cudaDeviceCount() > 0)('a CUDA device that cannot start names the reason', () => {
    expect(() => createDevice({ kind: 'cuda' })).toThrow(/^createDevice: cannot create cuda device: /);
  });
});
