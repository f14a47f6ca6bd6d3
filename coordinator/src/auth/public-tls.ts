// TLS for the public endpoints: one certificate and key serve HTTPS on the HTTP port and TLS on
// the gRPC port (no client certificates: clients authenticate with API keys).

import * as grpc from '@grpc/grpc-js';
import { checkKeyPair, readCertificate, readPrivateKey, validityProblem } from '@medcluster/worker';

export interface PublicTls {
  certPath: string;
  /** PEM certificate chain. */
  cert: Buffer;
  /** PEM private key. */
  key: Buffer;
  /** Why clients will refuse the certificate now (expired, not yet valid), if they will. */
  problem?: string;
}

export function loadPublicTls(certPath: string, keyPath: string): PublicTls {
  const cert = readCertificate('--tls-cert', certPath);
  const key = readPrivateKey('--tls-key', keyPath);
  checkKeyPair(cert, '--tls-cert', key, '--tls-key');
  const problem = validityProblem(cert.x509);
  return { certPath, cert: cert.pem, key: key.pem, ...(problem ? { problem } : {}) };
}

export function publicServerCredentials(tls: PublicTls | undefined): grpc.ServerCredentials {
  return tls
    ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: tls.cert, private_key: tls.key }], false)
    : grpc.ServerCredentials.createInsecure();
}
