// Connecting to NATS with credentials: a user and password, a token, or a `.creds` file (the
// nats package's authenticators), given as options or in the URL (`nats://user:pass@host:4222`,
// `nats://token@host:4222`, the NATS convention). The nats package ignores credentials in a URL,
// so they are taken out here, and what is logged or put in an error is the URL without them.
// Over TLS (a `tls://` URL, or the internal CA and certificate: nats-tls.ts) the server's
// certificate is checked before any credential is sent, and every TLS failure is said as such.

import { type Authenticator, connect, ErrorCode, type NatsConnection } from 'nats';
import { type NatsTls, type NatsTlsProblem, probeNatsTls, tlsProblemOf } from './nats-tls.js';

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
  /** Connect over TLS only (a tls:// URL, or the internal CA and certificate). */
  tls?: NatsTls;
}

/**
 * Splits credentials out of a NATS URL (or a comma-separated list; every URL that carries
 * credentials must carry the same). A bad URL is reported without its user-info part. nats.js
 * ignores a URL's scheme, so `tls://` is read here: it asks for TLS (on every URL of the list,
 * since nats.js takes one TLS setting for all).
 */
export function parseNatsUrl(urls: string): NatsTarget {
  const servers: string[] = [];
  let auth: NatsAuth | undefined;
  let userInfo: string | undefined;
  const schemes = new Set<string>();
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
    schemes.add(url.protocol);
    servers.push(url.toString().replace(/\/$/, ''));
  }
  if (servers.length === 0) throw new NatsConnectError('--nats: no server URL');
  if (schemes.has('tls:') && schemes.size > 1)
    throw new NatsConnectError('--nats: give every URL tls:// or none (TLS is one setting for all)');
  return {
    servers: servers.join(','),
    ...(auth ? { auth } : {}),
    ...(schemes.has('tls:') ? { tls: {} } : {}),
  };
}

/** What kind of credentials these are, for messages (never the credentials themselves). */
export function describeNatsAuth(auth: NatsAuth | undefined): string {
  if (auth?.authenticator) return 'a .creds file';
  if (auth?.token !== undefined) return 'a token';
  if (auth?.user !== undefined) return `user '${auth.user}' and a password`;
  return 'no credentials';
}

/** How a connection to the target is secured, for a log line (names files, never contents). */
export function describeNatsConnection(target: NatsTarget): string {
  const { servers, tls } = target;
  if (!tls) return `NATS at ${servers}, without TLS`;
  const ca = tls.ca?.name ?? "Node's default CAs";
  return `NATS at ${servers} over TLS (its certificate checked against ${ca}${tls.cert ? ", presenting this process's certificate" : ''})`;
}

/** What went wrong with TLS at `server`, and what to do, for `name` (the client's name). */
function describeTlsProblem(
  server: string,
  name: string,
  tls: NatsTls | undefined,
  problem: NatsTlsProblem,
): string {
  const internal = '--internal-ca, --internal-cert and --internal-key';
  switch (problem.kind) {
    case 'no-tls':
      return (
        `NATS at ${server} does not offer TLS, and ${name} connects to NATS over TLS only ` +
        `(${tls?.ca ? `internal TLS is configured: ${tls.ca.name}` : 'a tls:// URL'}): ` +
        'give nats-server a tls block (README, Access control)'
      );
    case 'server-certificate':
      if (!tls)
        return (
          `NATS at ${server} requires TLS, and its certificate did not verify against Node's default ` +
          `CAs (${problem.reason}): give ${internal} if the internal CA issued it`
        );
      return (
        `NATS at ${server}: its certificate did not verify against ${tls.ca?.name ?? "Node's default CAs"} ` +
        `(${problem.reason}): it must be issued by ${tls.ca ? 'that CA' : 'one of them'} and name the host of the URL`
      );
    case 'refused':
      return (
        `NATS at ${server} ended the TLS handshake with ${name} (${problem.reason}): ` +
        (tls?.cert
          ? 'with verify: true it takes only certificates issued by its ca_file, and this one was ' +
            'not (or has expired); its log says why'
          : `it may require a client certificate (verify: true): give ${internal}`)
      );
  }
}

/**
 * Connects as `name`. A server that refuses the credentials (or wants some and got none) is a
 * NatsConnectError that says so and how to give them, never what they were; over TLS, a server
 * without TLS or whose certificate (or verdict on ours) fails is one too, at once.
 */
export async function connectNats(target: NatsTarget, name: string): Promise<NatsConnection> {
  const { servers, auth, tls } = target;
  if (tls) {
    const urls = servers.split(',');
    const problems = await Promise.all(urls.map((url) => probeNatsTls(url, tls)));
    const i = problems.findIndex((p) => p !== undefined);
    if (i >= 0)
      throw new NatsConnectError(describeTlsProblem(urls[i], name, tls, problems[i] as NatsTlsProblem));
  }
  try {
    // Reconnects for ever, quickly: steps never need NATS, so a worker or coordinator outlives
    // any NATS outage, and membership resynchronizes once the server is back.
    return await connect({
      servers: servers.split(','),
      name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      ...auth,
      // An object, even empty, makes nats.js refuse a server without TLS.
      ...(tls
        ? {
            tls: {
              ...(tls.ca ? { ca: tls.ca.pem } : {}),
              ...(tls.cert && tls.key ? { cert: tls.cert, key: tls.key } : {}),
            },
          }
        : {}),
    });
  } catch (cause) {
    const code = (cause as { code?: string }).code;
    const problem: NatsTlsProblem | undefined =
      code === ErrorCode.ServerOptionNotAvailable && (cause as Error).message === 'tls'
        ? { kind: 'no-tls' }
        : tlsProblemOf(cause);
    if (problem) throw new NatsConnectError(describeTlsProblem(servers, name, tls, problem), { cause });
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
