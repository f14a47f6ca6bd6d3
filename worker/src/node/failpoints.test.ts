import { isDeviceFault } from '@medcluster/kernels';
import { describe, expect, test } from 'vitest';
import { FailpointError, failpointsFromEnv, injectedDeviceLoss } from './failpoints.js';

describe('MEDCLUSTER_FAILPOINTS', () => {
  test('off unless set; a known failpoint with its count; anything else is refused by name', () => {
    expect(failpointsFromEnv(undefined)).toEqual({});
    expect(failpointsFromEnv('')).toEqual({});
    expect(failpointsFromEnv('device-lost-after-steps=3')).toEqual({ deviceLostAfterSteps: 3 });
    expect(() => failpointsFromEnv('device-lost-after-steps=x')).toThrow(FailpointError);
    expect(() => failpointsFromEnv('disk-full=1')).toThrow(/unknown or malformed 'disk-full=1'/);
  });

  test('the injected loss reads as a CUDA fault', () => {
    expect(isDeviceFault(injectedDeviceLoss('step'))).toBe(true);
  });
});
