/// <reference lib="dom" />
// A real browser against `medcluster up`: Debian's chromium, headless, driven over the DevTools
// protocol by puppeteer-core. A chat page served from another origin (test/web/chat.html) sends
// a message and streams the answer with fetch; the browser must pass CORS, preflight included.
// The test types into the page, watches what #answer shows as it changes, and compares the
// final text with the unary greedy answer.

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { REPO, startUp, stopAll } from './harness/index.js';
import { testModel } from './models.js';

const CHROMIUM = process.env.MEDCLUSTER_CHROMIUM ?? '/usr/bin/chromium';

let api: string;
let page: Server;
let pageOrigin: string;
let browser: Browser;
let profile: string;

beforeAll(async () => {
  const modelDir = await testModel();
  // up loads the model while the page's server and the browser start.
  const starting = startUp(['--model', modelDir]);
  starting.catch(() => undefined); // awaited below; a browser that fails first leaves no unhandled rejection
  const html = await readFile(join(REPO, 'test/web/chat.html'));
  // The page's own origin: another port, and `localhost` where the API is 127.0.0.1.
  page = createServer((req, res) => {
    if (req.url?.startsWith('/chat.html')) res.writeHead(200, { 'content-type': 'text/html' }).end(html);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => page.listen(0, '127.0.0.1', r));
  pageOrigin = `http://localhost:${(page.address() as AddressInfo).port}`;
  profile = await mkdtemp(join(tmpdir(), 'medcluster-chromium-'));
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    pipe: true,
    ignoreDefaultArgs: true,
    // No background traffic: nothing may leave this machine.
    args: [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      `--user-data-dir=${profile}`,
      'about:blank',
    ],
  });
  ({ http: api } = await starting);
});
afterAll(async () => {
  await browser?.close();
  await new Promise((r) => page?.close(r));
  await stopAll();
  if (profile) await rm(profile, { recursive: true, force: true });
});

describe('a browser chat page on another origin', () => {
  test('streams a chat completion with fetch: preflight, incremental updates, the unary greedy text', async () => {
    const message = 'What are the first-line treatments for hypertension?';
    const tab = await browser.newPage();
    const cdp = await tab.createCDPSession();
    await cdp.send('Network.enable');
    const requests: { method: string; url: string; type?: string }[] = [];
    cdp.on('Network.requestWillBeSent', (e) =>
      requests.push({ method: e.request.method, url: e.request.url, type: e.type }),
    );
    // Every state #answer shows, as the page shows it.
    const shown: string[] = [];
    await tab.exposeFunction('reportAnswer', (text: string) => shown.push(text));
    await tab.goto(`${pageOrigin}/chat.html?api=${encodeURIComponent(api)}`);
    await tab.evaluate(() => {
      const answer = document.getElementById('answer') as HTMLElement;
      const report = (window as unknown as { reportAnswer: (t: string) => void }).reportAnswer;
      new MutationObserver(() => report(answer.textContent ?? '')).observe(answer, {
        childList: true,
        characterData: true,
        subtree: true,
      });
    });
    await tab.type('#message', message);
    await tab.click('#send');
    await tab.waitForFunction(
      () =>
        document.getElementById('status')?.textContent !== 'streaming' &&
        document.getElementById('status')?.textContent !== 'idle',
      { timeout: 60_000 },
    );
    const status = await tab.$eval('#status', (e) => e.textContent);
    const final = await tab.$eval('#answer', (e) => e.textContent ?? '');
    const updates = Number(await tab.$eval('#updates', (e) => e.textContent));
    expect(status).toBe('done');

    const unary = await fetch(`${api}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        messages: [{ role: 'user', content: message }],
        max_tokens: 24,
        temperature: 0,
      }),
    });
    const expected = ((await unary.json()) as { choices: { message: { content: string } }[] }).choices[0]
      .message.content;
    expect(final).toBe(expected);

    // At least two incremental states before the last, each a prefix of the final text.
    const partial = [...new Set(shown.filter((t) => t !== '' && t !== final))];
    expect(updates).toBeGreaterThanOrEqual(2);
    expect(partial.length).toBeGreaterThanOrEqual(2);
    for (const t of partial) expect(final.startsWith(t)).toBe(true);

    // The browser asked first (a CORS preflight: OPTIONS, which CDP types Other) and posted;
    // to the API's origin and nowhere else.
    const toApi = requests.filter((r) => r.url === `${api}/v1/chat/completions`);
    expect(toApi.map((r) => `${r.method} ${r.type}`).sort()).toEqual(['OPTIONS Other', 'POST Fetch']);
    for (const r of requests) expect([pageOrigin, api]).toContain(new URL(r.url).origin);
    await tab.close();
  });
});
