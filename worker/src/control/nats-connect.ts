// Connecting to NATS with credentials: a user and password, a token, or a `.creds` file (the
// nats package's authenticators), given as options or in the URL (`nats://user:pass@host:4222`,
// `nats://token@host:4222`, the NATS convention). The nats package ignores credentials in a URL,
// so they are taken out here, and what is logged or put in an error is the URL without them.

import { type Authenticator, connect, ErrorCode, type NatsConnection } from 'nats';

export interface NatsAuth {
  user?: string;
  pass?: string;
  token?: string;
  /** credsAuthenticator(file bytes), for a `.creds` file (JWT and nkey seed). */
  authenticator?: Authenticator;
}

/** A URL the credentials could not be read from, or a server that refused or could not be reached. */
export class NatsConnectError extends Error {
  override name = 'NatsConnectError';
}

export interface NatsTarget {
  /** Comma-separated server URLs, without credentials: safe to log. */
  servers: string;
  /** Credentials found in the URLs, if any. */
  auth?: NatsAuth;
}

/**
 * Splits credentials out of a NATS URL (or a comma-separated list; every URL that carries
 * credentials must carry the same). A bad URL is reported without its user-info part.
 */
export function parseNatsUrl(urls: string): NatsTarget {
  const servers: string[] = [];
  let auth: NatsAuth | undefined;
  let userInfo: string | undefined;
  for (const raw of urls.split(',').map((u) => u.trim())) {
    if (raw === '') continue;
    const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `nats://${raw}`;
    let url: URL;
    try {
      url = new URL(withScheme);
    } catch {
      throw new NatsConnectError(`--nats: ${withScheme.replace(/\/\/[^@/]*@/, '//***@')} is not a URL`);
    }
    if (url.username !== '' || url.password !== '') {
      const info = `${url.username}:${url.password}`;
      if (userInfo !== undefined && info !== userInfo)
        throw new NatsConnectError('--nats: the URLs carry different credentials');
      userInfo = info;
      const user = decodeURIComponent(url.username);
      auth = url.password === '' ? { token: user } : { user, pass: decodeURIComponent(url.password) };
      url.username = '';
      url.password = '';
    }
    servers.push(url.toString().replace(/\/$/, ''));
  }
  if (servers.length === 0) throw new NatsConnectError('--nats: no server URL');
  return { servers: servers.join(','), ...(auth ? { auth } : {}) };
}

/** What kind of credentials these are, for messages (never the credentials themselves). */
export function describeNatsAuth(auth: NatsAuth | undefined): string {
  if (auth?.authenticator) return 'a .creds file';
  if (auth?.token !== undefined) return 'a token';
  if (auth?.user !== undefined) return `user '${auth.user}' and a password`;
  return 'no credentials';
}

/**
 * Connects as `name`. A server that refuses the credentials (or wants some and got none) is a
 * NatsConnectError that says so and how to give them, never what they were.
 */
export async function connectNats(target: NatsTarget, name: string): Promise<NatsConnection> {
  const { servers, auth } = target;
  try {
    // Reconnects for ever, quickly: steps never need NATS, so a worker or coordinator outlives
    // any NATS outage, and membership resynchronizes once the server is back.
    return await connect({
      servers: servers.split(','),
      name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      ...auth,
    });
  } catch (cause) {
    const code = (cause as { code?: string }).code;
    if (code === ErrorCode.AuthorizationViolation || code === ErrorCode.AuthenticationExpired) {
      const hint =
        auth === undefined
          ? 'it requires credentials: give --nats-user with --nats-password-file, --nats-token-file, ' +
            '--nats-creds, or user:password@ in the --nats URL'
          : `check the credentials (${describeNatsAuth(auth)})`;
      throw new NatsConnectError(`NATS at ${servers} refused ${name} (authorization violation): ${hint}`, {
        cause,
      });
    }
    throw new NatsConnectError(`cannot connect to NATS at ${servers}: ${(cause as Error).message}`, {
      cause,
    });
  }
}
