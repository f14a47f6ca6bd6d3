// npm run test:gpu — builds and runs the CUDA backend checks (kernels/gpu/check.cu) where a GPU
// exists. Without a GPU (nvidia-smi lists none) it says why it skipped and exits 0. With one it
// fails, never skips, when the checks cannot run: an addon built without CUDA, a CUDA runtime
// that finds no usable device, or no way to get the check program.
//   MEDCLUSTER_GPU_BENCH=1  also runs the AWQ benchmark (--bench)
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const binary = resolve(root, '.device', 'medcluster-gpu-check');

function skip(why) {
  console.log(`test:gpu skipped: ${why}`);
  process.exit(0);
}
function fail(why) {
  console.error(`test:gpu FAILED: ${why}`);
  process.exit(1);
}

const smi = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8' });
if (smi.error || smi.status !== 0 || !/GPU \d+:/.test(smi.stdout ?? '')) {
  skip('no NVIDIA GPU found (nvidia-smi -L failed or listed none)');
}
console.log(smi.stdout.trim());

// The addon the worker loads must have a usable CUDA backend on this machine.
const addonPath =
  process.env.MEDCLUSTER_KERNELS_ADDON ??
  join(root, 'kernels', 'build', 'Release', 'medcluster_kernels.node');
if (!existsSync(addonPath)) fail(`a GPU is present but the kernels addon ${addonPath} is not built`);
const addon = createRequire(import.meta.url)(addonPath);
if (!addon.cudaCompiledIn()) {
  fail(`a GPU is present but ${addonPath} was built without CUDA (rebuild where nvcc is on the PATH)`);
}
if (addon.cudaDeviceCount() < 1)
  fail("a GPU is present but the addon's CUDA runtime sees no device (driver?)");

const nvcc = spawnSync('nvcc', ['--version'], { encoding: 'utf8' });
if (!nvcc.error && nvcc.status === 0) {
  const build = spawnSync('bash', [resolve(root, 'kernels', 'gpu', 'build.sh')], { stdio: 'inherit' });
  if (build.status !== 0) fail('building kernels/gpu/check.cu failed');
} else if (!existsSync(binary)) {
  fail(`a GPU is present but neither nvcc nor a prebuilt ${binary} is`);
}

const args = process.env.MEDCLUSTER_GPU_BENCH === '1' ? ['--bench'] : [];
const run = spawnSync(binary, args, { stdio: 'inherit', env: { NCCL_NVLS_ENABLE: '0', ...process.env } });
if (run.status === 77)
  fail('a GPU is listed but the CUDA runtime of the check program found no usable device');
process.exit(run.status ?? 1);
