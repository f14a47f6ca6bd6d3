// `medcluster bench kernels --device cuda`: the AWQ linear at the 70B shapes next to fp16
// cuBLAS and the copy bandwidth, all timed with CUDA events in one process. The
// measurement lives in the C++ GPU program (kernels/gpu/check.cu, built by
// kernels/gpu/build.sh), which links the backend's kernels directly and loads cuBLAS at
// run time; this command finds it, builds it where nvcc exists and it is missing or older than
// its sources (a stale program would time old kernels), and runs its benchmark.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
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

/** The newest modification time (ms) of the program's sources under a checkout's kernels/. */
export function newestSource(kernelsDir: string): number {
  let newest = 0;
  for (const dir of ['gpu', 'native', join('native', 'cuda')]) {
    const full = join(kernelsDir, dir);
    if (!existsSync(full)) continue;
    for (const name of readdirSync(full)) {
      if (!/\.(cu|cuh|cc|h|sh)$/.test(name)) continue;
      newest = Math.max(newest, statSync(join(full, name)).mtimeMs);
    }
  }
  return newest;
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
  const haveNvcc = spawnSync('nvcc', ['--version']).status === 0;
  const stale =
    program !== undefined &&
    script !== undefined &&
    !process.env.MEDCLUSTER_GPU_CHECK &&
    statSync(program).mtimeMs < newestSource(dirname(dirname(script)));
  if (stale && !haveNvcc) {
    console.error(`warning: ${program} is older than its sources and nvcc is not here to rebuild it`);
  }
  if ((!program || stale) && script && haveNvcc) {
    console.error(
      `${program ? 'rebuilding the stale' : 'building the'} GPU benchmark program (${script}; a few minutes)`,
    );
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
