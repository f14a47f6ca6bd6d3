// npm run test:gpu — builds and runs the CUDA backend checks (kernels/gpu/check.cu)
// where a GPU exists; elsewhere prints why it skipped and exits 0.
//   MEDCLUSTER_GPU_BENCH=1  also runs the AWQ benchmark (--bench)
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const binary = resolve(root, '.device', 'medcluster-gpu-check');

function skip(why) {
  console.log(`test:gpu skipped: ${why}`);
  process.exit(0);
}

const smi = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8' });
if (smi.error || smi.status !== 0 || !/GPU \d+:/.test(smi.stdout ?? '')) {
  skip('no NVIDIA GPU found (nvidia-smi -L failed or listed none)');
}
console.log(smi.stdout.trim());

const nvcc = spawnSync('nvcc', ['--version'], { encoding: 'utf8' });
if (!nvcc.error && nvcc.status === 0) {
  const build = spawnSync('bash', [resolve(root, 'kernels', 'gpu', 'build.sh')], { stdio: 'inherit' });
  if (build.status !== 0) {
    console.error('test:gpu: building kernels/gpu/check.cu failed');
    process.exit(1);
  }
} else if (!existsSync(binary)) {
  skip(`a GPU is present but neither nvcc nor a prebuilt ${binary} is`);
}

const args = process.env.MEDCLUSTER_GPU_BENCH === '1' ? ['--bench'] : [];
const run = spawnSync(binary, args, { stdio: 'inherit', env: { NCCL_NVLS_ENABLE: '0', ...process.env } });
if (run.status === 77) skip('the CUDA runtime found no usable device');
process.exit(run.status ?? 1);
