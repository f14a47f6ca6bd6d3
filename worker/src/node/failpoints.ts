// Faults that a test switches on in a real worker process, through MEDCLUSTER_FAILPOINTS
// (comma-separated name=value; `up` passes the variable to its workers). Off unless set.
//
//   device-lost-after-steps=N   after N steps, every step and every check of the device fails
//                               as a lost CUDA context does (a CPU worker too): what a GPU that
//                               hits an illegal address or an uncorrectable ECC error does.

import { KernelError } from '@medcluster/kernels';

export interface Failpoints {
  deviceLostAfterSteps?: number;
}

export class FailpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FailpointError';
  }
}

export function failpointsFromEnv(value = process.env.MEDCLUSTER_FAILPOINTS): Failpoints {
  const failpoints: Failpoints = {};
  for (const entry of (value ?? '').split(',').filter((e) => e.trim() !== '')) {
    const [name, raw] = entry.trim().split('=');
    const n = Number(raw);
    if (name === 'device-lost-after-steps' && Number.isInteger(n) && n >= 0)
      failpoints.deviceLostAfterSteps = n;
    else
      throw new FailpointError(
        `MEDCLUSTER_FAILPOINTS: unknown or malformed '${entry}' (known: device-lost-after-steps=N)`,
      );
  }
  return failpoints;
}

/** The error a lost device raises, in the addon's format, marked as injected. */
export function injectedDeviceLoss(op: string): KernelError {
  return new KernelError(
    `${op}: CUDA error cudaErrorIllegalAddress (an illegal memory access was encountered) [injected by MEDCLUSTER_FAILPOINTS]`,
  );
}
