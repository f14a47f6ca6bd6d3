// Mutual TLS between the coordinator and the workers, from three files: the internal CA, this
// process's certificate (issued by that CA, with the names peers dial it at) and its key.
// A worker's gRPC server asks every client for a certificate issued by the CA and refuses the
// connection otherwise; every internal client (the coordinator's links to the first stage, a
// stage's link to the next, a rank's collective stream to rank 0) presents its certificate and
// checks the server's against the CA and the address it dialled. Without the files every
// internal channel is plaintext, as in the local demo. The same files secure NATS (natsTls):
// one trust root for everything inside the cluster.

import { isIP } from 'node:net';
import { connect as connectTls } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { NatsTls } from '../control/nats-tls.js';
import {
  type CertificateFile,
  checkKeyPair,
  type PrivateKeyFile,
  readCertificate,
  readPrivateKey,
  validityProblem,
} from './tls-files.js';

export interface InternalTlsFiles {
  /** PEM: the CA (or CAs) whose certificates are accepted. */
  ca: string;
  /** PEM: this process's certificate (its chain may follow). */
  cert: string;
  /** PEM: its unencrypted private key. */
  key: string;
}

/** A peer's certificate did not verify (another CA, expired, wrong name) or it did not answer. */
export class PeerCertificateError extends Error {
  override name = 'PeerCertificateError';
}

export class InternalTls {
  private channel?: grpc.ChannelCredentials;

  private constructor(
    readonly files: InternalTlsFiles,
    private readonly ca: CertificateFile,
    private readonly cert: CertificateFile,
    private readonly key: PrivateKeyFile,
  ) {}

  /** Reads and checks the three files (flags named as the CLI spells them). */
  static load(files: InternalTlsFiles): InternalTls {
    const ca = readCertificate('--internal-ca', files.ca);
    const cert = readCertificate('--internal-cert', files.cert);
    const key = readPrivateKey('--internal-key', files.key);
    checkKeyPair(cert, '--internal-cert', key, '--internal-key');
    return new InternalTls(files, ca, cert, key);
  }

  /** For a worker's server: TLS with a client certificate from the CA required. */
  serverCredentials(): grpc.ServerCredentials {
    return grpc.ServerCredentials.createSsl(
      this.ca.pem,
      [{ cert_chain: this.cert.pem, private_key: this.key.pem }],
      true,
    );
  }

  /** For every internal client: presents this certificate, verifies the server's. One object, so
   * channels to the same address share their connection. */
  channelCredentials(): grpc.ChannelCredentials {
    this.channel ??= grpc.credentials.createSsl(this.ca.pem, this.key.pem, this.cert.pem);
    return this.channel;
  }

  /** For NATS: its server's certificate must be issued by the internal CA, and this process
   * presents its certificate, so a nats-server with `verify: true` admits only cluster members. */
  natsTls(): NatsTls {
    return {
      ca: { pem: this.ca.pem.toString('utf8'), name: `--internal-ca ${this.ca.path}` },
      cert: this.cert.pem.toString('utf8'),
      key: this.key.pem.toString('utf8'),
    };
  }

  /**
   * What is wrong with this process's own certificate, if anything: peers will refuse it. (Said
   * at start-up, so the operator reads it where the process runs, not only in the peer's log.)
   */
  ownCertificateProblems(now = new Date()): string[] {
    const problems: string[] = [];
    const validity = validityProblem(this.cert.x509, now);
    if (validity) problems.push(`--internal-cert ${this.cert.path} ${validity}`);
    if (!this.cert.x509.checkIssued(this.ca.x509))
      problems.push(`--internal-cert ${this.cert.path} was not issued by --internal-ca ${this.ca.path}`);
    return problems;
  }

  /** Subject, issuer and expiry of this process's certificate, for a log line. */
  describe(): string {
    const { subject, issuer, validTo } = this.cert.x509;
    const one = (dn: string) => dn.split('\n').join(', ');
    return `certificate ${one(subject)}, issued by ${one(issuer)}, valid until ${validTo}`;
  }

  /**
   * Completes a TLS handshake with the server at host:port, presenting this certificate, and
   * resolves once the server's certificate verified against the CA for that host; rejects with
   * the reason it did not (OpenSSL's words: "certificate has expired", "unable to verify the
   * first certificate", ...). The coordinator asks this of a worker before it counts it as
   * joined, so a worker it could never talk to is refused at once, with the reason.
   */
  verifyPeer(address: string, timeoutMs = 5000): Promise<void> {
    const colon = address.lastIndexOf(':');
    const host = address.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
    const port = Number(address.slice(colon + 1));
    return new Promise((resolve, reject) => {
      const socket = connectTls({
        host,
        port,
        ca: this.ca.pem,
        cert: this.cert.pem,
        key: this.key.pem,
        ALPNProtocols: ['h2'],
        ...(isIP(host) ? {} : { servername: host }),
      });
      const fail = (why: string) => {
        clearTimeout(timer);
        socket.destroy();
        reject(new PeerCertificateError(`${address}: ${why}`));
      };
      const timer = setTimeout(() => fail(`no TLS handshake within ${timeoutMs} ms`), timeoutMs);
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        if (!socket.authorized) return fail(String(socket.authorizationError));
        socket.end();
        resolve();
      });
      socket.once('error', (err) => fail(err.message));
    });
  }
}
