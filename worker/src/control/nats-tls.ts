// TLS to NATS: the server's certificate is checked against a CA (the internal CA, in
// medcluster), and this process presents its own certificate, which a nats-server with
// `verify: true` requires.
//
// nats-server greets each client in plain text (INFO) and the client then upgrades the socket
// to TLS. With TLS 1.3 a client has finished its side of the handshake before the server has
// checked the client's certificate, so nats.js sees a refused certificate only as a closed
// connection: it dials again until its 20 s connect timeout and reports TIMEOUT, without the
// reason. probeNatsTls does the same upgrade on a socket of its own and sends PING: any answer
// means the server took the handshake, an alert says why it did not. connectNats runs it first.

import { connect as connectTcp, isIP, type Socket } from 'node:net';
import { connect as connectTls } from 'node:tls';

export interface NatsTls {
  /** The CA the server's certificate must be issued by: PEM, and what messages call it
   * ('--internal-ca FILE'). Absent: Node's default CAs (the system's, NODE_EXTRA_CA_CERTS). */
  ca?: { pem: string; name: string };
  /** PEM certificate and unencrypted key that this process presents. */
  cert?: string;
  key?: string;
}

/** Why TLS with a NATS server did not work (never key material: OpenSSL's and Node's words). */
export type NatsTlsProblem =
  /** The server offers no TLS (a plain-TCP nats-server). */
  | { kind: 'no-tls' }
  /** Its certificate did not verify: another CA, expired, or not naming the host dialled. */
  | { kind: 'server-certificate'; reason: string }
  /** It ended the handshake: with `verify: true`, it did not take this process's certificate. */
  | { kind: 'refused'; reason: string };

/** The TLS problem an error from a handshake (ours or nats.js's) stands for, if it is one. */
export function tlsProblemOf(err: unknown): NatsTlsProblem | undefined {
  const { code, message } = (err ?? {}) as { code?: string; message?: string };
  if (typeof code !== 'string') return undefined;
  // OpenSSL's certificate verification results (UNABLE_TO_VERIFY_LEAF_SIGNATURE,
  // CERT_HAS_EXPIRED, SELF_SIGNED_CERT_IN_CHAIN, ...) and Node's name check.
  if (/CERT|UNABLE_TO_|SELF_SIGNED/.test(code) && !code.startsWith('ERR_SSL_'))
    return { kind: 'server-certificate', reason: String(message) };
  if (code.startsWith('ERR_SSL_')) {
    // "...:ssl3_read_bytes:sslv3 alert bad certificate:../deps/openssl/...": keep the alert.
    const alert = /alert ([a-z ]+)/.exec(String(message))?.[1];
    return { kind: 'refused', reason: alert ? `TLS alert: ${alert}` : code };
  }
  return undefined;
}

/**
 * Connects to one server (`nats://host:port`, `tls://host:port`), upgrades to TLS as nats.js
 * would and waits for the server's answer to PING. Resolves with the problem, or undefined when
 * TLS works or the server could not be reached at all (nats.js then says that itself).
 */
export function probeNatsTls(
  server: string,
  tls: NatsTls,
  timeoutMs = 5000,
): Promise<NatsTlsProblem | undefined> {
  const url = new URL(server);
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(url.port || 4222);
  return new Promise((resolve) => {
    let socket: Socket = connectTcp({ host, port });
    const finish = (problem?: NatsTlsProblem) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(problem);
    };
    const timer = setTimeout(() => finish(), timeoutMs);
    const unreachable = () => finish();
    socket.once('error', unreachable);
    let greeting = '';
    const onGreeting = (chunk: Buffer) => {
      greeting += chunk.toString('utf8');
      const end = greeting.indexOf('\r\n');
      if (end < 0) return;
      socket.off('data', onGreeting);
      socket.off('error', unreachable);
      let info: { tls_required?: boolean; tls_available?: boolean };
      try {
        info = JSON.parse(greeting.slice(greeting.indexOf('{'), end));
      } catch {
        return finish(); // not a NATS server: nats.js reports it
      }
      if (!info.tls_required && !info.tls_available) return finish({ kind: 'no-tls' });
      socket = connectTls({
        socket,
        host,
        ...(isIP(host) ? {} : { servername: host }),
        ...(tls.ca ? { ca: tls.ca.pem } : {}),
        ...(tls.cert && tls.key ? { cert: tls.cert, key: tls.key } : {}),
      });
      socket.once('error', (err) => finish(tlsProblemOf(err) ?? { kind: 'refused', reason: err.message }));
      socket.once('secureConnect', () => socket.write('PING\r\n'));
      socket.once('data', () => finish()); // PONG: the server took the handshake
      socket.once('close', () => finish({ kind: 'refused', reason: 'it closed the connection' }));
    };
    socket.on('data', onGreeting);
  });
}
