// Every test file but the fault tests (*.faults.test.ts) and the soak, which
// vitest.faults.config.ts runs after these, one file at a time: they depend on deadlines and a
// steady load, and must not share the CPU.
import { configDefaults, defineConfig, mergeConfig } from 'vitest/config';
import shared from '../vitest.shared.js';

export default mergeConfig(
  shared,
  defineConfig({
    test: { exclude: [...configDefaults.exclude, 'src/**/*.faults.test.ts', 'src/soak.test.ts'] },
  }),
);
