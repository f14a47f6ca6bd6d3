// --nats and its credentials, shared by `coordinator` and `worker`: a user and a password file,
// a token file, a `.creds` file, or credentials in the URL (one way at a time). Secrets come from
// files rather than flags, so they never show in a process list; the URL a process logs has
// its credentials removed. With internal TLS, NATS is reached over TLS through the same CA and
// certificate, so passwords and control messages never cross the network in clear.

import { readFileSync } from 'node:fs';
import {
  type InternalTls,
  type NatsAuth,
  NatsConnectError,
  type NatsTarget,
  parseNatsUrl,
} from '@medcluster/worker';
import { credsAuthenticator } from 'nats';
import { UsageError } from './args.js';

export const NATS_FLAGS = {
  nats: { type: 'string' },
  'nats-user': { type: 'string' },
  'nats-password-file': { type: 'string' },
  'nats-token-file': { type: 'string' },
  'nats-creds': { type: 'string' },
} as const;

export const NATS_USAGE = `NATS (cluster mode; one way of giving credentials at a time):
  --nats URL                    nats://host:4222 (a comma-separated list for a NATS cluster);
                                nats://user:password@host:4222 or nats://token@host:4222 also work,
                                but show in the process list: prefer the files below
  --nats-user NAME              with --nats-password-file FILE (the password is the file's first line)
  --nats-token-file FILE        a token (the file's first line)
  --nats-creds FILE             a .creds file (JWT and nkey seed, from nsc)
  With --internal-ca/--internal-cert/--internal-key, NATS is reached over TLS only: its server's
  certificate must be issued by the internal CA and name the host of the URL, and this process
  presents its internal certificate (for nats-server's verify: true). Without them, a tls://
  URL asks for TLS, checked against the system's CAs (and NODE_EXTRA_CA_CERTS).`;

type Values = {
  nats?: string;
  'nats-user'?: string;
  'nats-password-file'?: string;
  'nats-token-file'?: string;
  'nats-creds'?: string;
};

/** The first line of a secret file (a trailing newline is not part of it). */
function secretFile(flag: string, path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    throw new UsageError(`${flag}: cannot read ${path} (${(cause as NodeJS.ErrnoException).code ?? cause})`);
  }
  const line = text.split(/\r?\n/)[0].trim();
  if (line === '') throw new UsageError(`${flag}: ${path} is empty`);
  return line;
}

/**
 * Where to connect and with what, from the flags; undefined when --nats is not given. With
 * `internalTls`, over TLS with its CA and certificate.
 */
export function natsTargetFromFlags(flags: Values, internalTls?: InternalTls): NatsTarget | undefined {
  const { nats } = flags;
  const user = flags['nats-user'];
  const passwordFile = flags['nats-password-file'];
  const tokenFile = flags['nats-token-file'];
  const credsFile = flags['nats-creds'];
  if (nats === undefined) {
    const stray = Object.keys(NATS_FLAGS).find((f) => f !== 'nats' && flags[f as keyof Values] !== undefined);
    if (stray) throw new UsageError(`--${stray} needs --nats`);
    return undefined;
  }
  let target: NatsTarget;
  try {
    target = parseNatsUrl(nats);
  } catch (err) {
    if (err instanceof NatsConnectError) throw new UsageError(err.message);
    throw err;
  }
  if ((user === undefined) !== (passwordFile === undefined))
    throw new UsageError('--nats-user and --nats-password-file go together');
  const ways = [target.auth, user, tokenFile, credsFile].filter((w) => w !== undefined);
  if (ways.length > 1) {
    throw new UsageError(
      'give NATS credentials one way: credentials in the --nats URL, --nats-user with --nats-password-file, --nats-token-file or --nats-creds',
    );
  }
  let auth: NatsAuth | undefined = target.auth;
  if (user !== undefined) auth = { user, pass: secretFile('--nats-password-file', passwordFile as string) };
  else if (tokenFile !== undefined) auth = { token: secretFile('--nats-token-file', tokenFile) };
  else if (credsFile !== undefined) {
    let creds: Buffer;
    try {
      creds = readFileSync(credsFile);
    } catch (cause) {
      throw new UsageError(
        `--nats-creds: cannot read ${credsFile} (${(cause as NodeJS.ErrnoException).code ?? cause})`,
      );
    }
    auth = { authenticator: credsAuthenticator(new Uint8Array(creds)) };
  }
  const tls = internalTls?.natsTls() ?? target.tls;
  return { servers: target.servers, ...(auth ? { auth } : {}), ...(tls ? { tls } : {}) };
}
