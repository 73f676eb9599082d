// The web demo over HTTP: the page, streamed answers from a real (tiny) model through the real
// conversation manager, and the error and security paths.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import type { MiniGPT } from '../../src/inference/model.js';
import type { ConversationManager } from '../../src/conversation/index.js';
import type { AnswerEvent, ConversationRequest } from '../../src/conversation/index.js';
import { startWebServer, type WebConversationManager, type WebServer } from '../../adapters/web/server.js';
import { answerSegments } from '../../adapters/web/render.js';
import { postChat, randomConversation, rawRequest, readEvents, startTinyWeb, testPng, type WebEvent } from './helpers.js';

const FORCED = '<p>red square</p> {<20><20><70><70>} on a grey background';
const LIMIT = 256 * 1024;

let work: string;
let model: MiniGPT;
let manager: ConversationManager;
let server: WebServer;
let png: Buffer;
const logs: string[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-web-'));
  ({ model, manager, server } = await startTinyWeb(work, FORCED, {
    maxUploadBytes: LIMIT,
    model: { path: 'models/demo', notice: 'random weights' },
    log: (l) => logs.push(l),
  }));
  png = await testPng();
});

afterAll(async () => {
  await server?.close();
  await manager?.close();
  await model?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

const ofType = (evs: WebEvent[], t: string) => evs.filter((e) => e.type === t);

describe('web demo: page and info', () => {
  it('listens on loopback and serves the page with a per-response CSP nonce on its stylesheet and script', async () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    const res = await fetch(server.url);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('cache-control')).toBe('no-store');
    const csp = res.headers.get('content-security-policy') ?? '';
    const nonce = /script-src 'nonce-([^']+)'/.exec(csp)?.[1];
    expect(nonce).toBeTruthy();
    const directives = new Map(csp.split(/;\s*/).map((d) => [d.split(' ')[0], d.split(' ').slice(1)] as const));
    // only the nonce: no 'unsafe-inline', and not 'self' either (an injected tag naming a same-origin file loads nothing)
    expect(directives.get('script-src')).toEqual([`'nonce-${nonce}'`]);
    expect(directives.get('style-src')).toEqual([`'nonce-${nonce}'`]);
    expect(directives.get('default-src')).toEqual(["'none'"]);
    expect(directives.get('frame-ancestors')).toEqual(["'none'"]);
    const html = await res.text();
    expect(html).not.toContain('__CSP_NONCE__');
    expect(html).toContain(`<link rel="stylesheet" href="/app.css" nonce="${nonce}">`);
    expect(html).toContain(`<script type="module" src="/app.js" nonce="${nonce}"></script>`);
    // no inline script or style left: every <script> has a src and is empty, no <style> element, no style attributes
    expect(html.match(/<script\b[^>]*>/g)).toEqual([`<script type="module" src="/app.js" nonce="${nonce}">`]);
    expect(html).toMatch(/<script\b[^>]*><\/script>/);
    expect(html).not.toMatch(/<style\b|\sstyle=|\son[a-z]+=/i);
    // everything local: no external URLs
    expect(html).not.toMatch(/\b(src|href)=["']?https?:/i);
    const again = await fetch(new URL('/index.html', server.url));
    expect(again.headers.get('content-security-policy')).not.toBe(csp);
  });

  it('serves the stylesheet and the script modules (and their imports) as files with their types', async () => {
    const get = async (path: string, type: string) => {
      const res = await fetch(new URL(path, server.url));
      expect(res.status, path).toBe(200);
      expect(res.headers.get('content-type'), path).toBe(type);
      expect(res.headers.get('x-content-type-options'), path).toBe('nosniff');
      expect(res.headers.get('cache-control'), path).toBe('no-store');
      return res.text();
    };
    const css = await get('/app.css', 'text/css; charset=utf-8');
    expect(css).toContain('--accent');
    const seen = new Set<string>();
    const pending = ['/app.js'];
    while (pending.length > 0) {
      const path = pending.pop()!;
      if (seen.has(path)) continue;
      seen.add(path);
      const js = await get(path, 'text/javascript; charset=utf-8');
      expect(js, path).not.toContain('__CSP_NONCE__');
      // model text goes in with textContent only; nothing is loaded from elsewhere
      expect(js, path).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function/);
      expect(js, path).not.toMatch(/https?:\/\//);
      for (const m of js.matchAll(/^import\b[^'"]*['"]\.\/([A-Za-z0-9_-]+\.js)['"]/gm)) pending.push(`/${m[1]}`);
    }
    expect([...seen].sort()).toEqual(['/app-common.js', '/app-image.js', '/app.js']);
    const head = await fetch(new URL('/app.js', server.url), { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
  });

  it('describes the model, the limits and the tasks', async () => {
    const info = (await (await fetch(new URL('/api/info', server.url))).json()) as Record<string, any>;
    expect(info.model).toEqual({ name: model.meta.name, path: 'models/demo', notice: 'random weights' });
    expect(info.maxUploadBytes).toBe(LIMIT);
    expect(info.tasks).toEqual(['chat', 'grounding', 'refer', 'detection', 'identify', 'vqa', 'caption']);
    expect(info.defaults).toMatchObject({ temperature: 0.6, numBeams: 1 });
  });

  it('refuses to bind to a non-loopback address unless told to', async () => {
    await expect(startWebServer({ manager, host: '0.0.0.0', port: 0 })).rejects.toThrow(/loopback only.*WEB_ALLOW_REMOTE/s);
  });
});

describe('web demo: answers', () => {
  it('uploads an image and streams the answer: text pieces, final segments, the annotated image, timings', async () => {
    const conversation = randomConversation();
    const res = await postChat(server.url, { conversation, text: '[grounding] describe this image', task: 'chat', image: png });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    const evs = await readEvents(res);
    const types = evs.map((e) => e.type);
    expect(ofType(evs, 'error')).toEqual([]);
    expect(types[0]).toBe('queued');
    expect(types).toContain('started');
    expect(types.at(-1)).toBe('end');
    const pieces = ofType(evs, 'text').map((e) => e.text as string);
    expect(pieces.length).toBeGreaterThan(3);
    const final = ofType(evs, 'final')[0];
    expect(final.text).toBe(FORCED);
    expect(pieces.join('')).toBe(FORCED);
    expect(final.segments).toEqual([
      { text: 'red square', colour: expect.stringMatching(/^#[0-9a-f]{6}$/), boxes: 1 },
      { text: 'on a grey background' },
    ]);
    const image = ofType(evs, 'image')[0];
    expect(image.mime).toBe('image/png');
    const meta = await sharp(Buffer.from(image.data as string, 'base64')).metadata();
    expect([meta.width, meta.height]).toEqual([200, 150]);
    expect(ofType(evs, 'timings')).toHaveLength(1);
    // the task tag typed in the text is what the model was asked
    const state = await manager.history({ platform: 'web', workspace: 'local', channel: 'web', thread: conversation });
    expect(state?.turns[0].task).toBe('grounding');
    expect(state?.turns[0].user).toMatch(/^\[grounding\] describe this image/);

    // A follow-up in the same conversation keeps the image; a new conversation has none.
    const follow = await readEvents(await postChat(server.url, { conversation, text: 'what colour is it?', task: 'vqa' }));
    expect(ofType(follow, 'error')).toEqual([]);
    expect(ofType(follow, 'final')).toHaveLength(1);
    const after = await manager.history({ platform: 'web', workspace: 'local', channel: 'web', thread: conversation });
    expect(after?.turns.map((t) => t.task)).toEqual(['grounding', 'vqa']);
    expect(after?.image.hash).toBe(state?.image.hash);

    const other = await readEvents(await postChat(server.url, { conversation: randomConversation(), text: 'what is this?' }));
    expect(ofType(other, 'error')).toEqual([expect.objectContaining({ code: 'no_image' })]);
  });

  it('reset forgets the conversation', async () => {
    const conversation = randomConversation();
    await readEvents(await postChat(server.url, { conversation, text: 'hi', image: png }));
    const res = await fetch(new URL('/api/reset', server.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', origin: new URL(server.url).origin },
      body: JSON.stringify({ conversation }),
    });
    expect(res.status).toBe(204);
    const evs = await readEvents(await postChat(server.url, { conversation, text: 'and now?' }));
    expect(ofType(evs, 'error')).toEqual([expect.objectContaining({ code: 'no_image' })]);
  });

  it('regenerates the latest answer by the request id its final event gave; refuses an image with it', async () => {
    const conversation = randomConversation();
    const first = ofType(await readEvents(await postChat(server.url, { conversation, text: 'hi', image: png })), 'final')[0] as any;
    expect(first.requestId).toMatch(/^[0-9a-f]{16}$/);
    const again = ofType(await readEvents(await postChat(server.url, { conversation, regenerate: first.requestId })), 'final')[0] as any;
    expect(again.requestId).not.toBe(first.requestId);
    const thread = { platform: 'web' as const, workspace: 'local', channel: 'web', thread: conversation };
    expect((await manager.history(thread))!.turns.map((t) => t.requestId)).toEqual([again.requestId]);
    // the first answer is no longer stored: refused in the stream, nothing changed
    const stale = await readEvents(await postChat(server.url, { conversation, regenerate: first.requestId }));
    expect(ofType(stale, 'error')).toEqual([expect.objectContaining({ code: 'stale' })]);
    const withImage = await postChat(server.url, { conversation, regenerate: again.requestId, image: png });
    expect(withImage.status).toBe(400);
    expect(((await withImage.json()) as any).error.message).toBe('a regenerate request takes no image');
    expect((await manager.history(thread))!.turns.map((t) => t.requestId)).toEqual([again.requestId]);
  });

  it('answers an edited latest question again by the request id it was first asked under; refuses an image or no text with it', async () => {
    const conversation = randomConversation();
    const thread = { platform: 'web' as const, workspace: 'local', channel: 'web', thread: conversation };
    const first = ofType(await readEvents(await postChat(server.url, { conversation, text: 'hi', image: png })), 'final')[0] as any;
    const regenerated = ofType(
      await readEvents(await postChat(server.url, { conversation, regenerate: first.requestId })),
      'final',
    )[0] as any;
    // (regenerated since: still found by the id it was first asked under)
    const edited = ofType(
      await readEvents(await postChat(server.url, { conversation, edit: first.requestId, text: 'what is in the corner?', task: 'vqa' })),
      'final',
    )[0] as any;
    expect(edited.task).toBe('vqa');
    expect((await manager.history(thread))!.turns.map((t) => [t.user, t.requestId, t.askedAs])).toEqual([
      ['[vqa] what is in the corner?', edited.requestId, first.requestId],
    ]);
    expect(regenerated.requestId).not.toBe(edited.requestId);
    // the same text again: refused in the stream, nothing changed
    const same = await readEvents(
      await postChat(server.url, { conversation, edit: first.requestId, text: 'what is in the corner?', task: 'vqa' }),
    );
    expect(ofType(same, 'error')).toEqual([
      expect.objectContaining({ code: 'stale', message: 'The edited question is the same as the one answered.' }),
    ]);
    for (const [fields, message] of [
      [{ edit: first.requestId, text: 'x', image: png }, 'an edited question takes no image'],
      [{ edit: first.requestId, text: '' }, 'type the edited question'],
      [{ edit: first.requestId, regenerate: edited.requestId, text: 'x' }, 'a request regenerates an answer or edits a question, not both'],
    ] as const) {
      const res = await postChat(server.url, { conversation, ...fields });
      expect(res.status).toBe(400);
      expect(((await res.json()) as any).error.message).toBe(message);
    }
    expect((await manager.history(thread))!.turns.map((t) => t.requestId)).toEqual([edited.requestId]);
  });

  it('passes temperature and beams on, validated', async () => {
    const conversation = randomConversation();
    const ok = await readEvents(await postChat(server.url, { conversation, text: 'hi', image: png, temperature: '0', numBeams: '2' }));
    expect(ofType(ok, 'final')).toHaveLength(1);
    const bad = await postChat(server.url, { conversation, text: 'hi', temperature: 'hot' });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as any).error.message).toMatch(/temperature/);
    const badTask = await postChat(server.url, { conversation, text: 'hi', task: 'jump' });
    expect(badTask.status).toBe(400);
    const badId = await postChat(server.url, { conversation: '../../x', text: 'hi' });
    expect(badId.status).toBe(400);
  });
});

describe('web demo: errors', () => {
  it('answers non-image bytes with a bad_image error event, and the next request works', async () => {
    const conversation = randomConversation();
    const evs = await readEvents(
      await postChat(server.url, {
        conversation,
        text: 'what is this?',
        image: Buffer.from('just some text, not a picture'),
        imageType: 'text/plain',
      }),
    );
    const errors = ofType(evs, 'error');
    expect(errors).toHaveLength(1);
    expect(errors[0].code).toBe('bad_image');
    expect(errors[0].message).toMatch(/image/i);
    expect(ofType(evs, 'final')).toEqual([]);
    const next = await readEvents(await postChat(server.url, { conversation, text: 'what is this?', image: png }));
    expect(ofType(next, 'error')).toEqual([]);
  });

  it('refuses an oversized upload with 413 and a clear message (declared length and chunked)', async () => {
    const big = Buffer.alloc(LIMIT + 100_000, 7);
    const res = await postChat(server.url, { conversation: randomConversation(), text: 'hi', image: big });
    expect(res.status).toBe(413);
    const body = (await res.json()) as any;
    expect(body.error.code).toBe('too_large');
    expect(body.error.message).toMatch(/too large.*limit is 0\.25 MB/);

    // A chunked body (no Content-Length) is cut off at the limit too.
    const form = new Response(
      (() => {
        const f = new FormData();
        f.append('conversation', randomConversation());
        f.append('image', new Blob([big], { type: 'image/png' }), 'x.png');
        return f;
      })(),
    );
    const ct = form.headers.get('content-type')!;
    const stream = form.body!;
    const res2 = await fetch(new URL('/api/chat', server.url), {
      method: 'POST',
      body: stream,
      headers: { 'content-type': ct, origin: new URL(server.url).origin },
      duplex: 'half',
    } as RequestInit);
    expect(res2.status).toBe(413);
    // and the server still answers
    expect((await fetch(new URL('/api/info', server.url))).status).toBe(200);
  });

  it('refuses cross-origin and origin-less POSTs, and foreign Host headers (DNS rebinding)', async () => {
    const conversation = randomConversation();
    const evil = await postChat(server.url, { conversation, text: 'hi', image: png }, { headers: { origin: 'http://evil.example' } });
    expect(evil.status).toBe(403);
    expect(((await evil.json()) as any).error.code).toBe('cross_origin');
    // refused before its (large) body is read: still a clean 403, not a reset connection
    const evilBig = await postChat(
      server.url,
      { conversation, text: 'hi', image: Buffer.alloc(3_000_000, 1) },
      { headers: { origin: 'http://evil.example' } },
    );
    expect(evilBig.status).toBe(403);
    const site = await postChat(server.url, { conversation, text: 'hi', image: png }, { headers: { 'sec-fetch-site': 'cross-site' } });
    expect(site.status).toBe(403);
    const reset = await fetch(new URL('/api/reset', server.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ conversation }),
    });
    expect(reset.status).toBe(403);
    // nothing reached the manager
    expect(await manager.history({ platform: 'web', workspace: 'local', channel: 'web', thread: conversation })).toBeNull();

    const rebind = await rawRequest(server.url, { path: '/', headers: { host: `evil.example:${server.port}` } });
    expect(rebind.status).toBe(421);
    expect(rebind.body).not.toContain('<script');
    const rebindPost = await rawRequest(server.url, {
      method: 'POST',
      path: '/api/reset',
      headers: { host: `evil.example:${server.port}`, origin: `http://evil.example:${server.port}`, 'content-type': 'application/json' },
      body: Buffer.from(JSON.stringify({ conversation })),
    });
    expect(rebindPost.status).toBe(421);
    const localhost = await rawRequest(server.url, { path: '/', headers: { host: `localhost:${server.port}` } });
    expect(localhost.status).toBe(200);
  });

  it('checks content types and methods', async () => {
    const origin = new URL(server.url).origin;
    const json = await fetch(new URL('/api/chat', server.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', origin },
      body: '{}',
    });
    expect(json.status).toBe(415);
    const form = await fetch(new URL('/api/reset', server.url), { method: 'POST', headers: { origin }, body: new FormData() });
    expect(form.status).toBe(415);
    const get = await fetch(new URL('/api/chat', server.url));
    expect(get.status).toBe(405);
    const put = await fetch(server.url, { method: 'PUT', headers: { origin }, body: 'x' });
    expect(put.status).toBe(405);
  });

  it('serves nothing outside its public folder (path traversal)', async () => {
    for (const path of [
      '/../package.json',
      '/..%2fpackage.json',
      '/%2e%2e/%2e%2e/%2e%2e/package.json',
      '/%2e%2e%2f%2e%2e%2f%2e%2e%2fpackage.json',
      '/..\\..\\..\\package.json',
      '/%5c..%5c..%5cpackage.json',
      '/server.ts',
      '/public/index.html',
      '/index.html%00.png',
      '//etc/passwd',
      '/%2fetc%2fpasswd',
      '/.hidden',
      '/%E0%A4%A',
    ]) {
      const res = await rawRequest(server.url, { path });
      expect([400, 404], path).toContain(res.status);
      expect(res.body, path).not.toContain('"name": "minigpt-bot"');
      expect(res.body, path).not.toContain('root:');
    }
  });
});

describe('web demo: with a stub manager', () => {
  it('passes manager errors (busy) through and cancels the answer when the client goes away', async () => {
    let seen: ConversationRequest | undefined;
    let aborted = false;
    const stub: WebConversationManager = {
      async *handle(req): AsyncIterable<AnswerEvent> {
        seen = req;
        if (req.text.includes('busy')) {
          yield { type: 'error', code: 'busy', message: 'The bot is busy: please try again in a moment.' };
          return;
        }
        yield { type: 'started' };
        yield { type: 'text', text: 'a' };
        await new Promise<void>((resolve) => req.signal!.addEventListener('abort', () => resolve(), { once: true }));
        aborted = true;
      },
      async reset() {
        return 'forgotten' as const;
      },
    };
    const s = await startWebServer({ manager: stub, port: 0 });
    try {
      const busy = await readEvents(await postChat(s.url, { conversation: randomConversation(), text: 'busy?' }));
      expect(busy).toEqual([{ type: 'error', code: 'busy', message: expect.stringMatching(/busy/) }, { type: 'end' }]);
      expect(seen?.key).toEqual({ platform: 'web', workspace: 'local', channel: 'web', thread: seen!.key.thread });
      expect(seen?.user).toBe('web');

      const controller = new AbortController();
      const res = await postChat(s.url, { conversation: randomConversation(), text: 'long one' }, { signal: controller.signal });
      const reader = res.body!.getReader();
      await reader.read();
      controller.abort();
      await expect.poll(() => aborted, { timeout: 5000 }).toBe(true);
    } finally {
      await s.close();
    }
  });

  it('offers no task tags for MiniGPT-4 and sends the text as typed', async () => {
    const seen: ConversationRequest[] = [];
    const stub: WebConversationManager = {
      async *handle(req): AsyncIterable<AnswerEvent> {
        seen.push(req);
        yield { type: 'final', text: 'ok', entities: [], finishReason: 'stop' };
      },
      async reset() {
        return 'forgotten' as const;
      },
    };
    const s = await startWebServer({ manager: stub, port: 0, model: { name: 'v1', architecture: 'minigpt-4' } });
    try {
      const info = (await (await fetch(new URL('/api/info', s.url))).json()) as { tasks: string[] };
      expect(info.tasks).toEqual(['chat']);
      await readEvents(await postChat(s.url, { conversation: randomConversation(), text: ' [grounding] what is it? ', task: 'chat' }));
      expect(seen[0]).toMatchObject({ text: '[grounding] what is it?', task: 'chat' });
      expect((await postChat(s.url, { conversation: randomConversation(), text: 'x', task: 'grounding' })).status).toBe(400);
    } finally {
      await s.close();
    }
  });
});

describe('answerSegments', () => {
  it('splits phrases from plain text and never throws', () => {
    expect(answerSegments('<p>a cat</p>{<1><2><3><4>}<delim>{<5><6><7><8>} sits on <p>a mat</p> {<0><0><9><9>}.')).toEqual([
      { text: 'a cat', colour: expect.any(String), boxes: 2 },
      { text: 'sits on' },
      { text: 'a mat', colour: expect.any(String), boxes: 1 },
      { text: '.' },
    ]);
    expect(answerSegments('{<10><20><30><40>}')).toEqual([{ text: '▭', colour: expect.any(String), boxes: 1 }]);
    expect(answerSegments('plain <b>text</b>')).toEqual([{ text: 'plain <b>text</b>' }]);
    expect(answerSegments('')).toEqual([]);
  });
});
