// Reading PEM certificates and private keys named by flags. Every error names the flag and the
// path, never the file's contents: a private key must not reach a log through an error message.

import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';

/** A certificate or key file that is missing, unreadable, not PEM, or does not fit its pair. */
export class TlsFilesError extends Error {
  override name = 'TlsFilesError';
}

function read(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (cause) {
    throw new TlsFilesError(
      `${flag}: cannot read ${path} (${(cause as NodeJS.ErrnoException).code ?? cause})`,
      {
        cause,
      },
    );
  }
}

export interface CertificateFile {
  path: string;
  /** The file's bytes (PEM; a chain or a CA bundle may hold several certificates). */
  pem: Buffer;
  /** The first certificate in the file. */
  x509: X509Certificate;
}

export interface PrivateKeyFile {
  path: string;
  pem: Buffer;
  key: KeyObject;
}

export function readCertificate(flag: string, path: string): CertificateFile {
  const pem = read(flag, path);
  try {
    return { path, pem, x509: new X509Certificate(pem) };
  } catch (cause) {
    throw new TlsFilesError(`${flag}: ${path} is not a PEM certificate`, { cause });
  }
}

export function readPrivateKey(flag: string, path: string): PrivateKeyFile {
  const pem = read(flag, path);
  try {
    return { path, pem, key: createPrivateKey(pem) };
  } catch (cause) {
    // The parser's message says what it expected; it never quotes the input.
    throw new TlsFilesError(`${flag}: ${path} is not a PEM private key (unencrypted)`, { cause });
  }
}

/** Throws unless `key` is the private key of `cert`. */
export function checkKeyPair(cert: CertificateFile, certFlag: string, key: PrivateKeyFile, keyFlag: string) {
  if (!cert.x509.checkPrivateKey(key.key))
    throw new TlsFilesError(`${keyFlag} ${key.path} is not the private key of ${certFlag} ${cert.path}`);
}

/** Why a certificate cannot be used now ("expired at ...", "not valid before ..."), if it cannot. */
export function validityProblem(cert: X509Certificate, now = new Date()): string | undefined {
  if (now > new Date(cert.validTo)) return `expired at ${cert.validTo}`;
  if (now < new Date(cert.validFrom)) return `not valid before ${cert.validFrom}`;
  return undefined;
}
