// API_CORS_ORIGINS: a chat front end running in a browser calls the API from its own origin. Headless Debian Chromium
// (playwright-core) on a page served from one loopback port calls the API on another: let in when the page's origin
// is listed (answers, streamed answers, and the waits of a refusal readable), blocked by the browser when it is not.
// The preflight and the headers, and the settings refused at start, through plain HTTP.
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startApiServer, type ApiServer } from '../../adapters/api/server.js';
import { ConversationManager } from '../../src/conversation/index.js';
import { MiniGPT } from '../../src/inference/model.js';
import { ROOT } from '../helpers/cli.js';

const CHROMIUM = '/usr/bin/chromium';
if (!existsSync(CHROMIUM))
  throw new Error(`the API's CORS test needs ${CHROMIUM}: apt-get install -y chromium (npm test does first: scripts/test-tools.sh)`);

const MODEL = { id: 'minigpt-demo', created: 1, architecture: 'minigpt-v2' as const };
let model: MiniGPT;
let manager: ConversationManager;
/** the front end's page: its origin is the one let in */
let pages: Server;
let pageOrigin: string;
let open: ApiServer;
let closed: ApiServer;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  model = await MiniGPT.load(join(ROOT, 'models', 'demo'), { provider: 'cpu', forcedAnswer: 'a grey square' });
  manager = new ConversationManager({ model, defaults: { maxNewTokens: 8, temperature: 0 } });
  pages = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>front end</title>');
  });
  await new Promise<void>((done) => pages.listen(0, '127.0.0.1', done));
  pageOrigin = `http://127.0.0.1:${(pages.address() as AddressInfo).port}`;
  open = await startApiServer({ manager, port: 0, model: MODEL, corsOrigins: [pageOrigin] });
  closed = await startApiServer({ manager, port: 0, model: MODEL });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'],
  });
  page = await browser.newPage();
  await page.goto(`${pageOrigin}/`);
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await open?.close();
  await closed?.close();
  await new Promise((done) => pages?.close(done));
  await manager?.close();
  await model?.close();
});

/** What the page's own script gets from `fetch` of the API at `api`; `error` when the browser blocked it. */
function fromPage(
  api: string,
  body: Record<string, unknown>,
): Promise<{ status?: number; text?: string; retryAfter?: string | null; error?: string }> {
  return page.evaluate(
    async ({ api, body }) => {
      try {
        const r = await fetch(`${api}/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: 'Bearer from-the-page', 'x-stainless-lang': 'js' },
          body: JSON.stringify({ model: 'minigpt-demo', messages: [{ role: 'user', content: 'hello' }], ...body }),
        });
        return { status: r.status, text: await r.text(), retryAfter: r.headers.get('retry-after') };
      } catch (err) {
        return { error: String(err) };
      }
    },
    { api, body },
  );
}

describe('API_CORS_ORIGINS in Chromium', () => {
  it("a listed origin's page gets answers, streamed too; another API refuses it, enforced by the browser", async () => {
    const plain = await fromPage(open.url, {});
    expect(plain.status, plain.error).toBe(200);
    expect(JSON.parse(plain.text!).choices[0].message.content).toBe('a grey square');
    const streamed = await fromPage(open.url, { stream: true });
    expect(streamed.status).toBe(200);
    expect(streamed.text).toContain('data: [DONE]');
    const blocked = await fromPage(closed.url, {});
    expect(blocked.error).toMatch(/TypeError: Failed to fetch/);
  });

  it("a refusal's body and wait are readable by the page", async () => {
    const tight = new ConversationManager({ model, maxQueue: 0, defaults: { maxNewTokens: 8 } });
    const busy = await startApiServer({ manager: tight, port: 0, model: MODEL, corsOrigins: [pageOrigin] });
    try {
      // The manager is full while one answer runs: the model's engine held by a task of the test's, the answer
      // waits for its turn to prefill.
      let release!: () => void;
      const held = model.engine.exclusive(() => new Promise<void>((r) => (release = r)));
      const running = fetch(`${busy.url}/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'minigpt-demo', messages: [{ role: 'user', content: 'hi' }], stream: true }),
      });
      await vi.waitFor(() => expect(model.handoff.pending).toBe(1));
      const refused = await fromPage(busy.url, {});
      expect(refused.status).toBe(503);
      expect(JSON.parse(refused.text!).error.code).toBe('server_busy');
      expect(refused.retryAfter).toBe('2');
      release();
      await held;
      const reader = (await running).body!.getReader();
      await reader.cancel();
    } finally {
      await busy.close();
      await tight.close();
    }
  });
});

describe('API_CORS_ORIGINS over HTTP', () => {
  const preflight = (url: string, origin: string, method = 'POST', headers = 'authorization, content-type, x-stainless-os') =>
    fetch(`${url}/chat/completions`, {
      method: 'OPTIONS',
      headers: { origin, 'access-control-request-method': method, 'access-control-request-headers': headers },
    });

  it('grants the preflight of a listed origin only, for GET and POST with the headers it asks for', async () => {
    const ok = await preflight(open.url, pageOrigin);
    expect(ok.status).toBe(204);
    expect(ok.headers.get('access-control-allow-origin')).toBe(pageOrigin);
    expect(ok.headers.get('access-control-allow-methods')).toBe('GET, POST');
    expect(ok.headers.get('access-control-allow-headers')).toBe('authorization, content-type, x-stainless-os');
    expect(ok.headers.get('access-control-max-age')).toBe('600');
    const other = await preflight(open.url, 'http://127.0.0.1:1');
    expect(other.status).toBe(403);
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
    expect(((await other.json()) as { error: { code: string } }).error.code).toBe('origin_not_allowed');
    expect((await preflight(open.url, pageOrigin, 'DELETE')).status).toBe(403);
    expect((await preflight(open.url, pageOrigin, 'POST', 'x-bad header')).status).toBe(403);
    expect((await preflight(closed.url, pageOrigin)).status).toBe(403);
    // an answer carries the origin only for a listed one
    const answer = (origin: string) =>
      fetch(`${open.url}/models`, { headers: { origin } }).then((r) => r.headers.get('access-control-allow-origin'));
    expect(await answer(pageOrigin)).toBe(pageOrigin);
    expect(await answer('http://evil.example')).toBeNull();
  });

  it('refuses `*` without keys and anything that is not an origin, at start', async () => {
    await expect(startApiServer({ manager, port: 0, model: MODEL, corsOrigins: ['*'] })).rejects.toThrow(
      /API_CORS_ORIGINS=\* without MINIGPT_API_KEYS/,
    );
    await expect(startApiServer({ manager, port: 0, model: MODEL, corsOrigins: ['localhost:3000'] })).rejects.toThrow(/is not an origin/);
    await expect(startApiServer({ manager, port: 0, model: MODEL, corsOrigins: ['http://localhost:3000/app'] })).rejects.toThrow(
      /is not an origin/,
    );
    const keyed = await startApiServer({ manager, port: 0, model: MODEL, keys: ['k'], corsOrigins: ['*'] });
    try {
      const r = await fetch(`${keyed.url}/models`, { headers: { origin: 'http://anywhere.example', authorization: 'Bearer k' } });
      expect(r.headers.get('access-control-allow-origin')).toBe('http://anywhere.example');
    } finally {
      await keyed.close();
    }
  });
});
