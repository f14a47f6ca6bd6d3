// --internal-ca, --internal-cert, --internal-key: mutual TLS between the coordinator and the
// workers (`up`, `coordinator` and `worker` take the same three; `up` hands them to its workers).

import { InternalTls, type Logger, TlsFilesError } from '@medcluster/worker';
import { UsageError } from './args.js';

export const INTERNAL_TLS_FLAGS = {
  'internal-ca': { type: 'string' },
  'internal-cert': { type: 'string' },
  'internal-key': { type: 'string' },
} as const;

export const INTERNAL_TLS_USAGE = `Internal mutual TLS (coordinator <-> workers, worker <-> worker; all three or none):
  --internal-ca FILE            PEM CA: peers must present a certificate it issued
  --internal-cert FILE          PEM certificate of this process, issued by that CA, naming the
                                hosts peers dial (scripts/dev-ca.sh makes a development CA)
  --internal-key FILE           its PEM private key (unencrypted)`;

type Values = { 'internal-ca'?: string; 'internal-cert'?: string; 'internal-key'?: string };

/** The loaded files, or undefined when none of the flags is given (plaintext). */
export function internalTlsFromFlags(flags: Values): InternalTls | undefined {
  const given = (['internal-ca', 'internal-cert', 'internal-key'] as const).filter(
    (f) => flags[f] !== undefined,
  );
  if (given.length === 0) return undefined;
  if (given.length < 3)
    throw new UsageError(
      '--internal-ca, --internal-cert and --internal-key go together: give all three or none',
    );
  try {
    return InternalTls.load({
      ca: flags['internal-ca'] as string,
      cert: flags['internal-cert'] as string,
      key: flags['internal-key'] as string,
    });
  } catch (err) {
    if (err instanceof TlsFilesError) throw new UsageError(err.message);
    throw err;
  }
}

/** One line on what this process presents, and an error line for anything peers will refuse. */
export function logInternalTls(log: Logger, tls: InternalTls | undefined): void {
  if (!tls) return;
  log.info(`internal mutual TLS: ${tls.describe()}`);
  for (const problem of tls.ownCertificateProblems()) log.error(`internal TLS: ${problem}`);
}
