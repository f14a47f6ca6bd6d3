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

let root: string | undefined;

/**
 * Root of the @medcluster/proto package: the include directory of every .proto import.
 * MEDCLUSTER_PROTO_ROOT overrides it for bundled builds that carry the .proto files elsewhere.
 * Resolved on first use, so importing this package never touches the file system.
 */
export function protoRoot(): string {
  root ??= process.env.MEDCLUSTER_PROTO_ROOT ?? findPackageRoot(dirname(fileURLToPath(import.meta.url)));
  return root;
}

/** Absolute paths of the bundled .proto files. */
export function protoPaths() {
  const base = protoRoot();
  return {
    inference: join(base, 'medcluster/v1/inference.proto'),
    worker: join(base, 'medcluster/worker/v1/worker.proto'),
    health: join(base, 'grpc/health/v1/health.proto'),
  } as const;
}
