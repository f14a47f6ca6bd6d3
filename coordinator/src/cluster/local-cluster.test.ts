import { describe, expect, test } from 'vitest';
import { localGpuSlots, workerEnv } from './local-cluster.js';

describe('localGpuSlots', () => {
  test('one worker per GPU where there are enough', () => {
    expect(localGpuSlots(4, 8)).toEqual([0, 1, 2, 3].map((ordinal) => ({ ordinal, sharers: 1 })));
  });

  test('round robin, counting who shares each GPU', () => {
    expect(localGpuSlots(5, 2)).toEqual([
      { ordinal: 0, sharers: 3 },
      { ordinal: 1, sharers: 2 },
      { ordinal: 0, sharers: 3 },
      { ordinal: 1, sharers: 2 },
      { ordinal: 0, sharers: 3 },
    ]);
  });

  test('no GPU seen: everything on ordinal 0 (the workers then say there is no device)', () => {
    expect(localGpuSlots(2, 0)).toEqual([
      { ordinal: 0, sharers: 2 },
      { ordinal: 0, sharers: 2 },
    ]);
  });
});

describe('workerEnv', () => {
  test('keeps how native parts are found and run; drops settings and keys', () => {
    const env = workerEnv({
      PATH: '/usr/bin',
      MEDCLUSTER_KERNELS_ADDON: '/opt/addon.node',
      MEDCLUSTER_COLLECTIVE: 'grpc',
      MEDCLUSTER_HAND_OFF: 'bytes',
      MEDCLUSTER_CONFIG: '/etc/medcluster.json',
      MEDCLUSTER_LISTEN: '0.0.0.0:50051',
      MEDCLUSTER_TP: '2',
      MEDCLUSTER_API_KEYS: 'secret-secret-secret',
    });
    expect(env).toEqual({
      PATH: '/usr/bin',
      MEDCLUSTER_KERNELS_ADDON: '/opt/addon.node',
      MEDCLUSTER_COLLECTIVE: 'grpc',
      MEDCLUSTER_HAND_OFF: 'bytes',
    });
  });
});
