// The one vitest configuration every workspace uses: tests live beside the code as
// src/**/*.test.ts, run in forked processes (native addons and child processes), and may
// take minutes (they start real servers and worker processes).
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
  },
});
