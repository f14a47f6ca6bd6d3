// Short-lived certificate authorities for TLS tests, in a temporary directory: scripts/dev-ca.sh
// (the script users run) makes each CA with its node and server certificates, and an expired
// certificate is issued by a CA with `openssl ca` and start and end dates in the past.

import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO } from './processes.js';

const run = promisify(execFile);

export interface DevCa {
  dir: string;
  ca: string;
  /** Internal mutual TLS (server and client). */
  node: { cert: string; key: string };
  /** The public ports. */
  server: { cert: string; key: string };
}

/** scripts/dev-ca.sh DIR --days 1: a CA and its certificates for localhost and 127.0.0.1. */
export async function makeDevCa(dir: string): Promise<DevCa> {
  await run('bash', [join(REPO, 'scripts', 'dev-ca.sh'), dir, '--days', '1']);
  return {
    dir,
    ca: join(dir, 'ca.crt'),
    node: { cert: join(dir, 'node.crt'), key: join(dir, 'node.key') },
    server: { cert: join(dir, 'server.crt'), key: join(dir, 'server.key') },
  };
}

/** A node certificate from `ca` for localhost and 127.0.0.1 that expired in 2020 (valid one day). */
export async function issueExpired(ca: DevCa, name: string): Promise<{ cert: string; key: string }> {
  const work = join(ca.dir, `${name}.ca-db`);
  await mkdir(work, { recursive: true });
  await writeFile(join(work, 'index.txt'), '');
  await writeFile(join(work, 'serial'), '1000\n');
  const config = join(work, 'ca.cnf');
  await writeFile(
    config,
    [
      '[ca]',
      'default_ca = dev',
      '[dev]',
      `database = ${join(work, 'index.txt')}`,
      `new_certs_dir = ${work}`,
      `serial = ${join(work, 'serial')}`,
      'default_md = sha256',
      'policy = any',
      'unique_subject = no',
      'x509_extensions = node',
      '[any]',
      'commonName = supplied',
      '[node]',
      'basicConstraints = critical, CA:FALSE',
      'keyUsage = critical, digitalSignature, keyEncipherment',
      'extendedKeyUsage = serverAuth, clientAuth',
      'subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1',
      '',
    ].join('\n'),
  );
  const key = join(ca.dir, `${name}.key`);
  const csr = join(work, `${name}.csr`);
  const cert = join(ca.dir, `${name}.crt`);
  await run('openssl', [
    ...['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'],
    ...['-keyout', key, '-out', csr, '-subj', `/O=medcluster test/CN=${name}`],
  ]);
  await run('openssl', [
    ...['ca', '-batch', '-config', config, '-cert', ca.ca, '-keyfile', join(ca.dir, 'ca.key')],
    ...['-in', csr, '-out', cert, '-notext'],
    ...['-startdate', '20200101000000Z', '-enddate', '20200102000000Z'],
  ]);
  return { cert, key };
}

/**
 * The base64 lines of a PEM private key: any of them showing up in a log means key bytes leaked
 * (the PEM armour lines are shared by every key, so they are not looked for).
 */
export async function privateKeyLines(path: string): Promise<string[]> {
  const pem = await readFile(path, 'utf8');
  return pem
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('-----'));
}
