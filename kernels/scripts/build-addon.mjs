// Builds the native addon with cmake-js (Node-API headers come from the
// node-api-headers package, so nothing is downloaded) and reports which backends
// it contains. CUDA is included when nvcc is found and native/cuda has sources;
// MEDCLUSTER_CUDA=0 forces a CPU-only build.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
const addon = join(root, 'build', 'Release', 'medcluster_kernels.node');

function run(args) {
  const r = spawnSync(process.execPath, [cmakeJs, ...args, '-d', root, '-O', join(root, 'build')], {
    stdio: 'inherit',
    env: process.env,
  });
  if (r.status !== 0) {
    console.error(`build-addon: cmake-js ${args[0]} failed (exit ${r.status ?? r.signal})`);
    process.exit(r.status || 1);
  }
}

// Configure every time (cheap when cached) so a change of MEDCLUSTER_CUDA takes effect.
run(['configure', '--log-level', 'warn']);
run(['build', '--log-level', 'warn', '--parallel', '2']);

if (!existsSync(addon)) {
  console.error(`build-addon: the build finished but ${addon} is missing`);
  process.exit(1);
}
const native = require(addon);
const backends = native.cudaCompiledIn() ? 'cpu, cuda' : 'cpu';
console.log(`build-addon: built ${addon} with backends: ${backends}`);
