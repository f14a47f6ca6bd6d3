// The fault tests (real processes killed, hung and restarted under traffic, with deadlines sized
// for a 2-core machine) and the soak's short run. One file at a time, after the other tests (npm
// test runs both configs).
import { defineConfig, mergeConfig } from 'vitest/config';
import shared from '../vitest.shared.js';

export default mergeConfig(
  shared,
  defineConfig({
    test: {
      include: ['src/**/*.faults.test.ts', 'src/soak.test.ts'],
      fileParallelism: false,
      testTimeout: 180_000,
    },
  }),
);
