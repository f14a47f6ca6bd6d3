// nats-server with an authorization block, and connectNats against it: the right credentials
// connect, none or wrong ones fail with an error that says what to do and repeats no secret.

import { connectNats, NatsConnectError, parseNatsUrl } from '@medcluster/worker';
import { describe, expect, it } from 'vitest';
import { startNatsServer } from './nats-server.js';

describe('nats-server with authorization', () => {
  it('users and passwords: the right one connects; none, or a wrong one, is refused clearly', async () => {
    const server = await startNatsServer({
      authorization: { users: [{ user: 'worker', password: 'pw-0123456789' }] },
    });
    try {
      const ok = await connectNats(parseNatsUrl(server.url.replace('//', '//worker:pw-0123456789@')), 'test');
      await ok.close();
      await expect(connectNats({ servers: server.url }, 'anonymous')).rejects.toThrow(
        /refused anonymous \(authorization violation\): it requires credentials/,
      );
      const wrong = connectNats({ servers: server.url, auth: { user: 'worker', pass: 'nope-nope' } }, 'w');
      await expect(wrong).rejects.toThrow(NatsConnectError);
      await expect(wrong).rejects.toThrow(/check the credentials \(user 'worker' and a password\)/);
      await expect(wrong).rejects.not.toThrow(/nope-nope/);
    } finally {
      await server.stop();
    }
  });

  it('a token: in the URL or as an option', async () => {
    const server = await startNatsServer({ authorization: { token: 'tok-abcdef0123' } });
    try {
      const target = parseNatsUrl(server.url.replace('//', '//tok-abcdef0123@'));
      expect(target.servers).toBe(server.url);
      await (await connectNats(target, 'by-url')).close();
      await expect(connectNats({ servers: server.url, auth: { token: 'other' } }, 't')).rejects.toThrow(
        /check the credentials \(a token\)/,
      );
    } finally {
      await server.stop();
    }
  });
});
