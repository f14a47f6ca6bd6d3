// API keys (bearer tokens) for the public HTTP and gRPC APIs: read once at start from a file
// (one key per line, `#` comments and blank lines allowed) or from $MEDCLUSTER_API_KEYS (keys
// separated by commas or newlines). A presented key is compared with every configured key in
// constant time: both sides are hashed to SHA-256 first, so neither a key's length nor the
// position of its first wrong character shows in the time a refusal takes. Messages name lines,
// never keys.

import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';

/** Shortest key accepted: shorter ones are guessable (`openssl rand -hex 32` makes a good one). */
export const MIN_API_KEY_LENGTH = 16;

export class ApiKeysError extends Error {
  override name = 'ApiKeysError';
}

const digest = (text: string) => createHash('sha256').update(text, 'utf8').digest();

/** Why a request's credentials were refused (the 401's message), or undefined when accepted. */
export type AuthRefusal = 'missing' | 'invalid';

export class ApiKeys {
  private readonly digests: Buffer[];

  private constructor(keys: string[]) {
    this.digests = keys.map(digest);
  }

  get size(): number {
    return this.digests.length;
  }

  /** Keys from text: one per line (or comma-separated), `#` starts a comment. */
  static parse(text: string, source: string): ApiKeys {
    const keys: string[] = [];
    for (const [i, line] of text.split(/\r?\n/).entries()) {
      const content = line.replace(/#.*$/, '');
      for (const raw of content.split(',')) {
        const key = raw.trim();
        if (key === '') continue;
        const where = `${source} line ${i + 1}`;
        if (/[^\x21-\x7e]/.test(key))
          throw new ApiKeysError(`${where}: a key must be printable ASCII with no spaces`);
        if (key.length < MIN_API_KEY_LENGTH)
          throw new ApiKeysError(`${where}: a key must be at least ${MIN_API_KEY_LENGTH} characters`);
        keys.push(key);
      }
    }
    if (keys.length === 0) throw new ApiKeysError(`${source} holds no key`);
    return new ApiKeys(keys);
  }

  static fromFile(path: string): ApiKeys {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (cause) {
      throw new ApiKeysError(
        `--api-keys-file: cannot read ${path} (${(cause as NodeJS.ErrnoException).code ?? cause})`,
      );
    }
    return ApiKeys.parse(text, `--api-keys-file ${path}`);
  }

  /** Whether `key` is one of the keys; takes the same time whichever it matches, if any. */
  accepts(key: string): boolean {
    const presented = digest(key);
    let found = false;
    for (const d of this.digests) found = timingSafeEqual(presented, d) || found;
    return found;
  }

  /**
   * Checks an `Authorization` value (`Bearer <key>`, the scheme in any case): undefined when
   * accepted, else why not.
   */
  check(authorization: string | undefined): AuthRefusal | undefined {
    if (authorization === undefined || authorization === '') return 'missing';
    const m = /^bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization);
    if (!m) return 'invalid';
    return this.accepts(m[1]) ? undefined : 'invalid';
  }
}

/** What a refused caller is told: how to authenticate, and nothing about the keys. */
export function refusalMessage(refusal: AuthRefusal): string {
  return refusal === 'missing'
    ? 'this server requires an API key: send the header `Authorization: Bearer <key>`'
    : 'the API key is not valid';
}
