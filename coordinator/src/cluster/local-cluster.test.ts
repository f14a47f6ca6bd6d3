import { describe, expect, test } from 'vitest';
import { localGpuSlots } from './local-cluster.js';

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
