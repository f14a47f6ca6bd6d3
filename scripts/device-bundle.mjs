#!/usr/bin/env node
// Packs what a GPU test machine needs into .device/ (gitignored, well under the 64 MiB a
// device run may carry): Node itself (xz), the CLI and the GPU tests bundled into one file each,
// the kernels addon, the .proto files the bundles load at run time, the runners that take a bundle
// (test/gpu/http-serve-bench.sh, multi-gpu-run.sh), and the GPU check programs if built.
// `node scripts/device-bundle.mjs [DIR]` packs into DIR instead of .device/.
// node_modules never travels. On the device: `source DIR/setup.sh` then `/tmp/node ...`.

import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = process.argv[2] ? resolve(process.argv[2]) : join(root, '.device');
const require = createRequire(import.meta.url);

mkdirSync(out, { recursive: true });

// 1. The CLI and the GPU tests, each as one ESM file. The addon is loaded from MEDCLUSTER_KERNELS_ADDON at run time.
const esbuild = require('esbuild');
const bundle = (entry, outfile) =>
  esbuild.buildSync({
    entryPoints: [join(root, entry)],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile: join(out, outfile),
    // Bundled CommonJS that reads files beside itself finds them through __dirname: point it
    // where @grpc/reflection's protos are copied (step 1b), the only such read at run time.
    banner: {
      js:
        "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url); " +
        "const __dirname = new URL('./grpc-reflection/build/src/implementations', import.meta.url).pathname;",
    },
    external: ['*.node'],
    logLevel: 'warning',
  });
bundle('coordinator/src/cli/entry.ts', 'medcluster.mjs');
bundle('test/gpu/gpu-parity.ts', 'gpu-parity.mjs');
bundle('test/gpu/collective-gpu.ts', 'collective-gpu.mjs');
// The bundles load the .proto files at run time (MEDCLUSTER_PROTO_ROOT, set by setup.sh).
for (const dir of ['medcluster', 'grpc'])
  cpSync(join(root, 'proto', dir), join(out, 'proto', dir), { recursive: true });

// 1b. @grpc/reflection reads its protos at ${__dirname}/../../proto (the gRPC server's reflection).
cpSync(
  join(
    dirname(require.resolve('@grpc/reflection/package.json', { paths: [join(root, 'coordinator')] })),
    'build/proto',
  ),
  join(out, 'grpc-reflection/build/proto'),
  { recursive: true },
);

// 2. The addon (CUDA-enabled when built where nvcc exists).
const addon = join(root, 'kernels/build/Release/medcluster_kernels.node');
if (existsSync(addon)) copyFileSync(addon, join(out, 'medcluster_kernels.node'));
else console.warn('device-bundle: no kernels addon built; run `npm run build` first');

// 2b. The GPU machine's runners that take a bundle folder: the served benchmark and the multi-GPU runs.
for (const script of ['http-serve-bench.sh', 'multi-gpu-run.sh'])
  copyFileSync(join(root, 'test/gpu', script), join(out, script));

// 3. Node itself.
const nodeXz = join(out, 'node.xz');
if (!existsSync(nodeXz)) execFileSync('sh', ['-c', `xz -T2 -c "${process.execPath}" > "${nodeXz}"`]);

writeFileSync(
  join(out, 'setup.sh'),
  `# Unpacks the carried Node and points the bundles at the carried addon and .proto files.
# Source it (the exports are for the calling shell).
d="$(cd "$(dirname "\${BASH_SOURCE[0]}")" && pwd)"
[ -x /tmp/node ] || { xz -d -c "$d/node.xz" > /tmp/node && chmod +x /tmp/node; }
export MEDCLUSTER_KERNELS_ADDON="$d/medcluster_kernels.node"
export MEDCLUSTER_PROTO_ROOT="$d/proto"
export NCCL_NVLS_ENABLE=0
`,
);
const size = (p) => (existsSync(p) ? `${(statSync(p).size / 1048576).toFixed(1)} MiB` : 'missing');
console.log(
  `device-bundle: ${out}: medcluster.mjs ${size(join(out, 'medcluster.mjs'))}, node.xz ${size(nodeXz)}, addon ${size(join(out, 'medcluster_kernels.node'))}`,
);
