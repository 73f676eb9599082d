// Shared by the web demo tests: a tiny real model package (the fixture checkpoints converted by our own
// converter, with the demo model's 512-piece tokenizer so box syntax round-trips), images, and an SSE reader.
import { request } from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager } from '../../src/conversation/index.js';
import { startWebServer, type WebModelInfo, type WebServer, type WebServerOptions } from '../../adapters/web/server.js';

export const ROOT = join(import.meta.dirname, '..', '..');

/** Converts the tiny MiniGPT-v2 fixture into `<work>/pkg`: the tiny random-weight package of scripts/build-demo-model.mjs. */
export async function buildTinyPackage(work: string): Promise<string> {
  const script = pathToFileURL(join(ROOT, 'scripts', 'build-demo-model.mjs')).href;
  const { buildDemoModel } = (await import(script)) as { buildDemoModel(out: string): Promise<string> };
  return buildDemoModel(join(work, 'pkg'));
}

/**
 * The web demo on a free port over the tiny package built in `work`, its answers forced to `forcedAnswer` (a manager
 * of 64 new tokens at the most); `opts` are the server's other options, its model info named after the package.
 */
export async function startTinyWeb(
  work: string,
  forcedAnswer: string,
  opts: Omit<WebServerOptions, 'manager' | 'port' | 'model'> & { model: Omit<WebModelInfo, 'name'> },
): Promise<{ model: MiniGPT; manager: ConversationManager; server: WebServer }> {
  const model = await MiniGPT.load(await buildTinyPackage(work), { provider: 'cpu', forcedAnswer });
  const manager = new ConversationManager({ model, defaults: { maxNewTokens: 64 } });
  try {
    const server = await startWebServer({ ...opts, manager, port: 0, model: { name: model.meta.name, ...opts.model } });
    return { model, manager, server };
  } catch (e) {
    await manager.close();
    await model.close();
    throw e;
  }
}

/** A PNG: a grey background with a red square. */
export async function testPng(width = 200, height = 150): Promise<Buffer> {
  const square = await sharp({
    create: { width: Math.round(width / 2), height: Math.round(height / 2), channels: 3, background: '#dd2222' },
  })
    .png()
    .toBuffer();
  return sharp({ create: { width, height, channels: 3, background: '#888888' } })
    .composite([{ input: square, left: Math.round(width / 5), top: Math.round(height / 5) }])
    .png()
    .toBuffer();
}

export type WebEvent = { type: string; [k: string]: unknown };

/** What GET /examples lists of each example scene. */
export interface ListedExample {
  id: string;
  task: string;
  prompt: string;
  width: number;
  height: number;
  alt: string;
}

/** Reads a text/event-stream response to its end. */
export async function readEvents(res: Response): Promise<WebEvent[]> {
  const text = await res.text();
  return text
    .split('\n\n')
    .map((frame) =>
      frame
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n'),
    )
    .filter((d) => d !== '')
    .map((d) => JSON.parse(d) as WebEvent);
}

export interface ChatFields {
  conversation: string;
  text?: string;
  task?: string;
  temperature?: string;
  numBeams?: string;
  image?: Uint8Array;
  imageType?: string;
  /** the request id of the latest answer, to give again */
  regenerate?: string;
  /** the request id the latest question was first asked under, to ask again with `text` */
  edit?: string;
}

export function chatForm(f: ChatFields): FormData {
  const form = new FormData();
  form.append('conversation', f.conversation);
  form.append('text', f.text ?? '');
  if (f.task !== undefined) form.append('task', f.task);
  if (f.temperature !== undefined) form.append('temperature', f.temperature);
  if (f.numBeams !== undefined) form.append('numBeams', f.numBeams);
  if (f.regenerate !== undefined) form.append('regenerate', f.regenerate);
  if (f.edit !== undefined) form.append('edit', f.edit);
  if (f.image) form.append('image', new Blob([f.image], { type: f.imageType ?? 'image/png' }), 'upload.png');
  return form;
}

/** POST /api/chat as the page does it (same Origin). */
export function postChat(base: string, f: ChatFields, init: RequestInit = {}): Promise<Response> {
  const url = new URL('/api/chat', base);
  return fetch(url, {
    method: 'POST',
    body: chatForm(f),
    ...init,
    headers: { origin: url.origin, ...(init.headers as Record<string, string> | undefined) },
  });
}

/** A raw HTTP request (exact path and Host header, which fetch would normalise or refuse). */
export function rawRequest(
  base: string,
  opts: { method?: string; path: string; headers?: Record<string, string>; body?: Buffer },
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request(
      { host: u.hostname, port: u.port, method: opts.method ?? 'GET', path: opts.path, headers: { host: u.host, ...opts.headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

export function randomConversation(): string {
  return `t${Math.random().toString(36).slice(2)}${Date.now().toString(36)}`;
}
