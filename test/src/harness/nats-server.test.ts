import { freePort } from '@medcluster/worker';
import { connect } from 'nats';
import { describe, expect, it } from 'vitest';
import { startNats } from './nats.js';
import { findNatsServer, NatsServerError, startNatsServer } from './nats-server.js';

describe('startNatsServer', () => {
  it('starts a real server that delivers messages, and stops it', async () => {
    const server = await startNatsServer();
    expect(server.url).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/);
    const nc = await connect({ servers: server.url });
    const sub = nc.subscribe('t.echo', { max: 1 });
    nc.publish('t.echo', new TextEncoder().encode('hi'));
    for await (const m of sub) expect(new TextDecoder().decode(m.data)).toBe('hi');
    await nc.close();
    await server.stop();
    await expect(connect({ servers: server.url, reconnect: false, timeout: 500 })).rejects.toThrow();
  });

  it('starts two servers side by side on different ports', async () => {
    const [a, b] = await Promise.all([startNatsServer(), startNatsServer({ jetstream: true })]);
    expect(a.port).not.toBe(b.port);
    await Promise.all([a.stop(), b.stop()]);
  });

  it('says how to install nats-server when the binary is missing', () => {
    const saved = process.env.NATS_SERVER_BIN;
    delete process.env.NATS_SERVER_BIN;
    try {
      expect(() => findNatsServer(undefined, ['/nonexistent-dir'])).toThrow(NatsServerError);
      expect(() => findNatsServer(undefined, ['/nonexistent-dir'])).toThrow(/apt-get install -y nats-server/);
      expect(findNatsServer()).toMatch(/nats-server$/);
    } finally {
      if (saved !== undefined) process.env.NATS_SERVER_BIN = saved;
    }
  });

  it('freePort returns a bindable port', async () => {
    const port = await freePort();
    expect(port).toBeGreaterThan(0);
    expect(port).toBeLessThan(65536);
  });
});

describe('startNats', () => {
  it('chooses a container or the binary, and restarts on the same port with the JetStream store kept', async () => {
    const server = await startNats({ jetstream: true });
    try {
      const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
      const kv = await nc.jetstream().views.kv('harness-restart');
      await kv.put('k', new TextEncoder().encode('kept'));
      await server.restart(200);
      // The client reconnects by itself (JetStream answers once it recovered its streams), and
      // the store survived.
      let entry: Awaited<ReturnType<typeof kv.get>> = null;
      for (let i = 0; i < 20 && entry === null; i++) entry = await kv.get('k', undefined).catch(() => null);
      expect(new TextDecoder().decode(entry?.value)).toBe('kept');
      await nc.close();
    } finally {
      await server.stop();
    }
  });
});
