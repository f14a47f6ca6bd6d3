// Where the .proto files live: resolved from this module's location, never from the cwd, so the
// same code works from src/ (tests), dist/src/ (built) and from other packages.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_NAME = '@medcluster/proto';

function findPackageRoot(start: string): string {
  let dir = start;
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      const name = (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown }).name;
      if (name === PACKAGE_NAME) return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) {
      throw new Error(`cannot find the ${PACKAGE_NAME} package root above ${start}`);
    }
    dir = parent;
  }
}

/** Root of the @medcluster/proto package: the include directory of every .proto import. */
export const PROTO_ROOT: string = findPackageRoot(dirname(fileURLToPath(import.meta.url)));

/** Absolute paths of the bundled .proto files. */
export const PROTO_PATHS = {
  inference: join(PROTO_ROOT, 'medcluster/v1/inference.proto'),
  worker: join(PROTO_ROOT, 'medcluster/worker/v1/worker.proto'),
  health: join(PROTO_ROOT, 'grpc/health/v1/health.proto'),
} as const;
