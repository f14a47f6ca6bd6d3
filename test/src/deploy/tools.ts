// The command-line tools the deploy/ tests run, found on PATH (or where Debian installs them).
// A missing tool fails the test that needs it with the package to install: nothing is skipped.

import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';

const TOOLS = {
  kubectl: 'kubectl (1.32 or later; it carries kustomize): preinstalled on the project machines',
  promtool: "Debian's prometheus package: apt-get install prometheus",
  prometheus: "Debian's prometheus package: apt-get install prometheus",
  bash: 'bash',
} as const;

export type Tool = keyof typeof TOOLS;

/** The absolute path of a tool, or an Error that says what to install. */
export function tool(name: Tool): string {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/usr/local/bin'];
  for (const dir of dirs) {
    const path = join(dir, name);
    if (dir !== '' && existsSync(path)) return path;
  }
  throw new Error(`${name} is not installed: install ${TOOLS[name]}`);
}

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a tool to completion (these are all quick, offline commands). */
export function run(
  name: Tool,
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Run {
  const r = spawnSync(tool(name), args, { encoding: 'utf8', timeout: 60_000, ...options });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
