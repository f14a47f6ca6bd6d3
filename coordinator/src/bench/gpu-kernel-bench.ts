// `medcluster bench kernels --device cuda`: the AWQ linear at the 70B shapes next to fp16
// cuBLAS and the copy bandwidth, all timed with CUDA events in one process. The
// measurement lives in the C++ GPU program (kernels/gpu/check.cu, built by
// kernels/gpu/build.sh), which links the backend's kernels directly and loads cuBLAS at
// run time; this command finds it (building it first where nvcc exists) and runs its benchmark.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const PROGRAM = 'medcluster-gpu-check';

/** Where the GPU program may be: $MEDCLUSTER_GPU_CHECK, else build.sh's default output. */
export function gpuCheckCandidates(cwd = process.cwd()): string[] {
  const list: string[] = [];
  if (process.env.MEDCLUSTER_GPU_CHECK) list.push(resolve(process.env.MEDCLUSTER_GPU_CHECK));
  list.push(join(cwd, '.device', PROGRAM));
  return list;
}

/** The repository's build script for the program, when this CLI runs from a checkout. */
function buildScript(): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const up of ['../../..', '../../../..']) {
    const script = resolve(here, up, 'kernels', 'gpu', 'build.sh');
    if (existsSync(script)) return script;
  }
  return undefined;
}

export async function runGpuKernelBench(options: { json?: string; quick?: boolean }): Promise<void> {
  const candidates = gpuCheckCandidates();
  let program = candidates.find((p) => existsSync(p));
  const script = buildScript();
  if (!program && script && spawnSync('nvcc', ['--version']).status === 0) {
    console.error(`building the GPU benchmark program (${script}; a few minutes)`);
    const out = join(process.cwd(), '.device');
    if (spawnSync('bash', [script, out], { stdio: 'inherit' }).status !== 0)
      throw new Error(`${script} failed`);
    program = join(out, PROGRAM);
  }
  if (!program) {
    throw new Error(
      `the GPU benchmark program was not found (looked at ${candidates.join(', ')}); ` +
        'build it with `bash kernels/gpu/build.sh` (needs nvcc) or point MEDCLUSTER_GPU_CHECK at it',
    );
  }
  const args = ['--bench-only', ...(options.json ? ['--json', resolve(options.json)] : [])];
  const env = { ...process.env, ...(options.quick ? { MC_BENCH_QUICK: '1' } : {}) };
  const code = await new Promise<number | null>((done, fail) => {
    const child = spawn(program, args, { stdio: 'inherit', env });
    child.on('error', fail);
    child.on('exit', (c, signal) => done(signal ? 128 : c));
  });
  if (code === 77) throw new Error('no CUDA device: the GPU benchmark needs one');
  if (code !== 0) throw new Error(`${program} exited with status ${code}`);
}
