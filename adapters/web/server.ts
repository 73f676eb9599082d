// The local web demo (issue 3): a plain node:http server that serves one static page and streams answers
// from the conversation manager as server-sent events over a POST response.
//
//   GET  /                 the page (adapters/web/public/index.html; inline CSS/JS, a CSP nonce per response)
//   GET  /api/info         model name, demo notice, limits and generation defaults (JSON)
//   POST /api/chat         multipart/form-data: conversation, text, task, temperature, numBeams, [image]
//                          -> text/event-stream, one `data: {json}` per answer event
//   POST /api/reset        application/json {conversation} -> 204
//   GET  /examples         example scenes (adapters/web/examples.ts): [{id, task, prompt, width, height, alt}]
//   GET  /examples/<id>.png  an example scene, rendered on first request and kept in memory
//
// Security: binds to loopback unless remote access is asked for explicitly; every request's Host must be one
// of the server's own names (DNS rebinding); every POST must carry the page's own Origin (CSRF) and the
// expected content type; bodies are capped (413); static files are looked up by name inside public/ only;
// the page renders model text with textContent only.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isIP, type AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import { extname, join, resolve, sep } from 'node:path';
import type { AnswerEvent, ConversationKey, ConversationRequest, TaskTag } from '../../src/conversation/index.js';
import { parseTask, taskPrompt, TASK_BUTTON_PROMPTS, TASK_HINTS, TASKS } from '../../src/grounding/tasks.js';
import { answerSegments } from './render.js';
import { EXAMPLE_SEED, renderExamples, type ExampleSet } from './examples.js';
import { LIMITS } from '../../src/conversation/limits.js';
import { closeServer, urlHost } from '../shared/http-server.js';

/** What the server needs from the conversation manager. */
export interface WebConversationManager {
  handle(req: ConversationRequest): AsyncIterable<AnswerEvent>;
  reset(key: ConversationKey): Promise<void>;
}

export interface WebModelInfo {
  /** package name (model.json `name`) */
  name: string;
  /** where it was loaded from, as shown in the footer (e.g. `models/demo`) */
  path?: string;
  /** a sentence for the footer, e.g. that the demo package has random weights */
  notice?: string;
  /** MiniGPT-4 has no task tags: the page then offers free chat only (default minigpt-v2) */
  architecture?: 'minigpt-v2' | 'minigpt-4';
}

export interface WebServerOptions {
  manager: WebConversationManager;
  /** default 127.0.0.1; a non-loopback address needs `allowRemote` */
  host?: string;
  /** default 7860; 0 picks a free port */
  port?: number;
  log?: (line: string) => void;
  /** largest image upload in bytes (default 20 MiB); bigger requests get HTTP 413 */
  maxUploadBytes?: number;
  model?: WebModelInfo;
  /** generation defaults shown in the page (from the config) */
  defaults?: { temperature?: number; numBeams?: number; maxNewTokens?: number };
  /** allow binding to a non-loopback address (the demo has no authentication) */
  allowRemote?: boolean;
  /** extra host names (or host:port) accepted in the Host header, e.g. a reverse proxy's name */
  allowedHosts?: readonly string[];
  /** the example scenes the page offers (default: 6 scenes of seed 4242); false: none */
  examples?: false | { seed?: number; count?: number };
}

export interface WebServer {
  /** http://host:port/ */
  url: string;
  host: string;
  port: number;
  close(): Promise<void>;
}

export const DEFAULT_WEB_HOST = '127.0.0.1';
export const DEFAULT_WEB_PORT = 7860;
export const DEFAULT_MAX_UPLOAD_BYTES = LIMITS.imageBytes;
/** room for the form fields around the image */
const FORM_OVERHEAD_BYTES = 64 * 1024;
const MAX_JSON_BYTES = 16 * 1024;
const MAX_TEXT_CHARS = 8000;
const MAX_BEAMS = LIMITS.beams;
/** discard at most this much of an oversized upload before dropping the connection */
const MAX_DRAIN_BYTES = 256 * 1024 * 1024;
const HEARTBEAT_MS = 15_000;
const CONVERSATION_ID_RE = /^[A-Za-z0-9_-]{8,64}$/;

const STATIC_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};

const COMMON_HEADERS: Readonly<Record<string, string>> = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-store',
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The folder with index.html: beside this file in the source tree, or in the source tree from dist/. */
export function publicDir(): string {
  const here = import.meta.dirname;
  const candidates = [join(here, 'public'), resolve(here, '..', '..', '..', 'adapters', 'web', 'public')];
  return candidates.find((d) => existsSync(join(d, 'index.html'))) ?? candidates[0];
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

function formatHost(host: string): string {
  return isIP(host) === 6 ? `[${host}]` : host;
}

const mb = (n: number) => `${(n / (1024 * 1024)).toFixed(n < 1024 * 1024 ? 2 : 1)} MB`;

/** Starts the web demo; resolves once it listens. */
export async function startWebServer(opts: WebServerOptions): Promise<WebServer> {
  const host = opts.host ?? DEFAULT_WEB_HOST;
  const log = opts.log ?? (() => {});
  const maxUpload = opts.maxUploadBytes ?? DEFAULT_MAX_UPLOAD_BYTES;
  if (!isLoopbackHost(host) && !opts.allowRemote) {
    throw new Error(
      `refusing to serve the web demo on ${host}: it has no authentication, so it listens on loopback only ` +
        `(WEB_HOST=127.0.0.1). Set WEB_ALLOW_REMOTE=1 to serve it on ${host} anyway.`,
    );
  }
  const dir = publicDir();
  const tasks: readonly string[] = opts.model?.architecture === 'minigpt-4' ? [] : TASKS;
  const active = new Set<AbortController>();
  let allowed = new Set<string>();
  let port = 0;
  // Rendered on first request, once per server; a failed render is tried again on the next request.
  let examples: Promise<ExampleSet> | null = null;
  const loadExamples = (): Promise<ExampleSet> => {
    if (opts.examples === false) return Promise.resolve({ list: [], png: () => undefined });
    examples ??= renderExamples({
      seed: opts.examples?.seed ?? EXAMPLE_SEED,
      count: opts.examples?.count,
      tags: tasks.length > 0,
    }).catch((err: unknown) => {
      examples = null;
      throw err;
    });
    return examples;
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // Refused before its body was read: read and drop the rest (bounded), so the client sees the answer.
      if (!req.complete && req.listenerCount('data') === 0) {
        res.setHeader('connection', 'close');
        let drained = 0;
        req.on('data', (chunk: Buffer) => {
          drained += chunk.length;
          if (drained > MAX_DRAIN_BYTES) req.destroy();
        });
        req.on('error', () => {});
      }
      if (err instanceof HttpError) {
        if (err.status >= 500) log(`web: ${req.method} ${req.url}: ${err.message}`);
        sendError(res, err);
        return;
      }
      log(`web: ${req.method} ${req.url}: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
      sendError(res, new HttpError(500, 'internal', 'internal error'));
    });
  });
  server.requestTimeout = 120_000;
  server.headersTimeout = 30_000;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    checkHost(req);
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    if (path.startsWith('/api/')) {
      if (path === '/api/info') {
        if (req.method !== 'GET' && req.method !== 'HEAD') throw methodNotAllowed('GET');
        return sendJson(res, 200, info());
      }
      if (path === '/api/chat') {
        if (req.method !== 'POST') throw methodNotAllowed('POST');
        checkOrigin(req);
        return chat(req, res);
      }
      if (path === '/api/reset') {
        if (req.method !== 'POST') throw methodNotAllowed('POST');
        checkOrigin(req);
        return reset(req, res);
      }
      throw new HttpError(404, 'not_found', 'no such API');
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') throw methodNotAllowed('GET');
    if (path === '/examples' || path.startsWith('/examples/')) return serveExample(req, res, path);
    return serveStatic(req, res, path);
  }

  async function serveExample(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    if (path === '/examples') return sendJson(res, 200, (await loadExamples()).list);
    const id = /^\/examples\/([A-Za-z0-9_-]{1,64})\.png$/.exec(path)?.[1];
    const png = id === undefined ? undefined : (await loadExamples()).png(id);
    if (!png) throw new HttpError(404, 'not_found', 'no such example');
    res.writeHead(200, { ...COMMON_HEADERS, 'content-type': 'image/png', 'content-length': String(png.length) });
    res.end(req.method === 'HEAD' ? undefined : png);
  }

  function methodNotAllowed(allow: string): HttpError {
    return new HttpError(405, 'method_not_allowed', `method not allowed (use ${allow})`);
  }

  /** DNS rebinding: a page on evil.example resolving to 127.0.0.1 still sends Host: evil.example. */
  function checkHost(req: IncomingMessage): void {
    const h = (req.headers.host ?? '').toLowerCase();
    if (!allowed.has(h)) throw new HttpError(421, 'bad_host', `this server does not answer for host "${h.slice(0, 100)}"`);
  }

  /** CSRF: browsers send Origin with every POST; it must be this server's own. */
  function checkOrigin(req: IncomingMessage): void {
    const origin = req.headers.origin;
    const site = req.headers['sec-fetch-site'];
    if (typeof site === 'string' && site !== 'same-origin' && site !== 'none') {
      throw new HttpError(403, 'cross_origin', 'cross-origin requests are refused');
    }
    if (typeof origin !== 'string' || origin !== `http://${(req.headers.host ?? '').toLowerCase()}`) {
      throw new HttpError(403, 'cross_origin', 'cross-origin requests are refused (the Origin header must be this page\'s)');
    }
  }

  function info() {
    return {
      model: opts.model ?? null,
      maxUploadBytes: maxUpload,
      tasks: ['chat', ...tasks],
      taskPrompts: TASK_BUTTON_PROMPTS,
      taskHints: TASK_HINTS,
      defaults: {
        temperature: opts.defaults?.temperature ?? 0.6,
        numBeams: opts.defaults?.numBeams ?? 1,
        maxNewTokens: opts.defaults?.maxNewTokens ?? 300,
      },
      maxBeams: MAX_BEAMS,
    };
  }

  async function serveStatic(req: IncomingMessage, res: ServerResponse, rawPath: string): Promise<void> {
    let name: string;
    try {
      name = decodeURIComponent(rawPath);
    } catch {
      throw new HttpError(400, 'bad_path', 'malformed path');
    }
    if (name === '/') name = '/index.html';
    // Names only: no folders, no dot files, no traversal (`..`, `\`, NUL, encoded or not).
    if (!/^\/[A-Za-z0-9_-][A-Za-z0-9_.-]*$/.test(name) || name.includes('..')) {
      throw new HttpError(404, 'not_found', 'not found');
    }
    const file = resolve(dir, name.slice(1));
    const type = STATIC_TYPES[extname(file).toLowerCase()];
    if (!file.startsWith(dir + sep) || !type) throw new HttpError(404, 'not_found', 'not found');
    let body: Buffer;
    try {
      body = await readFile(file);
    } catch {
      throw new HttpError(404, 'not_found', 'not found');
    }
    const headers: Record<string, string> = { ...COMMON_HEADERS, 'content-type': type };
    if (type.startsWith('text/html')) {
      const nonce = randomBytes(16).toString('base64');
      body = Buffer.from(body.toString('utf8').replaceAll('__CSP_NONCE__', nonce), 'utf8');
      headers['content-security-policy'] = [
        "default-src 'none'",
        `script-src 'nonce-${nonce}'`,
        `style-src 'nonce-${nonce}'`,
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
      ].join('; ');
    }
    headers['content-length'] = String(body.length);
    res.writeHead(200, headers);
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  async function reset(req: IncomingMessage, res: ServerResponse): Promise<void> {
    requireType(req, 'application/json');
    const body = await readBody(req, res, MAX_JSON_BYTES, MAX_JSON_BYTES);
    let conversation: unknown;
    try {
      conversation = (JSON.parse(body.toString('utf8')) as { conversation?: unknown }).conversation;
    } catch {
      throw new HttpError(400, 'bad_request', 'the body must be JSON');
    }
    await opts.manager.reset(conversationKey(conversation));
    res.writeHead(204, COMMON_HEADERS);
    res.end();
  }

  async function chat(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const contentType = requireType(req, 'multipart/form-data');
    const body = await readBody(req, res, maxUpload + FORM_OVERHEAD_BYTES, maxUpload);
    let form: FormData;
    try {
      form = await new Response(body, { headers: { 'content-type': contentType } }).formData();
    } catch {
      throw new HttpError(400, 'bad_request', 'malformed multipart/form-data body');
    }
    const key = conversationKey(form.get('conversation'));
    const rawText = stringField(form, 'text');
    if (rawText.length > MAX_TEXT_CHARS) throw new HttpError(400, 'too_long', `the message is too long (at most ${MAX_TEXT_CHARS} characters)`);
    const selected = stringField(form, 'task') || 'chat';
    if (selected !== 'chat' && !tasks.includes(selected)) throw new HttpError(400, 'bad_request', `unknown task "${selected.slice(0, 40)}"`);
    // A tag typed in the message wins over the selector; the prompt is the canonical one for the task.
    let task: TaskTag | 'chat' = 'chat';
    let text = rawText.trim();
    if (tasks.length > 0) {
      const typed = parseTask(rawText).task;
      task = (typed !== 'chat' ? typed : selected) as TaskTag | 'chat';
      text = taskPrompt(task, rawText);
    }
    const generation: NonNullable<ConversationRequest['generation']> = {};
    const temperature = numberField(form, 'temperature', 0, 2);
    if (temperature !== undefined) generation.temperature = temperature;
    const numBeams = numberField(form, 'numBeams', 1, MAX_BEAMS);
    if (numBeams !== undefined) generation.numBeams = Math.round(numBeams);
    let image: Uint8Array | undefined;
    const file = form.get('image');
    if (file !== null && typeof file !== 'string') {
      if (file.size > maxUpload) throw tooLarge(file.size, maxUpload);
      image = new Uint8Array(await file.arrayBuffer());
    }
    if (!text && !image) throw new HttpError(400, 'bad_request', 'type a message or add an image');

    const controller = new AbortController();
    active.add(controller);
    // The client went away (tab closed, Stop pressed): cancel the answer.
    res.on('close', () => {
      if (!res.writableFinished) controller.abort();
      active.delete(controller);
    });
    res.writeHead(200, { ...COMMON_HEADERS, 'content-type': 'text/event-stream; charset=utf-8', 'x-accel-buffering': 'no' });
    res.flushHeaders();
    const send = (ev: object) => {
      if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(ev)}\n\n`);
    };
    const heartbeat = setInterval(() => {
      if (!res.writableEnded && !res.destroyed) res.write(': keep-alive\n\n');
    }, HEARTBEAT_MS);
    const requestId = randomBytes(8).toString('hex');
    const t0 = performance.now();
    let outcome = 'ok';
    try {
      const request: ConversationRequest = { key, user: 'web', text, task, generation, signal: controller.signal, requestId };
      if (image) request.image = image;
      for await (const ev of opts.manager.handle(request)) {
        if (controller.signal.aborted) break;
        if (ev.type === 'image') send({ type: 'image', mime: ev.mime, data: Buffer.from(ev.data).toString('base64') });
        else if (ev.type === 'final') send({ ...ev, segments: answerSegments(ev.text) });
        else {
          if (ev.type === 'error') outcome = ev.code;
          send(ev);
        }
      }
    } catch (err) {
      outcome = 'internal';
      if (!controller.signal.aborted) {
        log(`web: answer failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
        send({ type: 'error', code: 'internal', message: 'Something went wrong while answering; please try again.' });
      }
    } finally {
      clearInterval(heartbeat);
      active.delete(controller);
      if (controller.signal.aborted && outcome === 'ok') outcome = 'cancelled';
      send({ type: 'end' });
      res.end();
      // The manager logs every answer; this adds what only the web side knows.
      if (outcome !== 'ok') log(`web: chat ${key.thread.slice(0, 8)} ${task}${image ? ' +image' : ''} -> ${outcome} after ${Math.round(performance.now() - t0)} ms`);
    }
  }

  await new Promise<void>((resolveListen, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? DEFAULT_WEB_PORT, host, () => {
      server.off('error', reject);
      resolveListen();
    });
  });
  port = (server.address() as AddressInfo).port;
  allowed = allowedHosts(host, port, opts.allowedHosts ?? []);
  const url = `http://${urlHost(host)}:${port}/`;

  let closing: Promise<void> | null = null;
  return {
    url,
    host,
    port,
    close() {
      closing ??= closeServer(server, active);
      return closing;
    },
  };
}

/** Host header values this server answers to. */
function allowedHosts(host: string, port: number, extra: readonly string[]): Set<string> {
  const names = new Set<string>(['localhost', '127.0.0.1', '[::1]']);
  const h = host.toLowerCase();
  if (h === '0.0.0.0' || h === '::') {
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) names.add(formatHost(a.address.toLowerCase()));
  } else {
    names.add(formatHost(h));
  }
  const out = new Set<string>();
  for (const n of names) out.add(`${n}:${port}`);
  for (const e of extra) {
    const v = e.trim().toLowerCase();
    if (!v) continue;
    out.add(/:\d+$/.test(v) && !v.endsWith(']') ? v : `${v}:${port}`);
    if (/:\d+$/.test(v)) out.add(v);
  }
  return out;
}

function conversationKey(id: unknown): ConversationKey {
  if (typeof id !== 'string' || !CONVERSATION_ID_RE.test(id)) {
    throw new HttpError(400, 'bad_request', 'missing or malformed conversation id');
  }
  return { platform: 'web', workspace: 'local', channel: 'web', thread: id };
}

function stringField(form: FormData, name: string): string {
  const v = form.get(name);
  return typeof v === 'string' ? v : '';
}

function numberField(form: FormData, name: string, min: number, max: number): number | undefined {
  const v = stringField(form, name).trim();
  if (v === '') return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) throw new HttpError(400, 'bad_request', `${name} must be a number in [${min}, ${max}]`);
  return n;
}

function requireType(req: IncomingMessage, type: string): string {
  const ct = req.headers['content-type'] ?? '';
  if (ct.split(';')[0].trim().toLowerCase() !== type) {
    throw new HttpError(415, 'bad_content_type', `expected Content-Type ${type}`);
  }
  return ct;
}

function tooLarge(size: number | undefined, limit: number): HttpError {
  return new HttpError(
    413,
    'too_large',
    `The image is too large${size ? ` (${mb(size)})` : ''}: the limit is ${mb(limit)}. Please send a smaller image.`,
  );
}

/**
 * Reads a request body of at most `limit` bytes. Over the limit: 413, and the rest of the upload is read
 * and discarded (up to a bound) so the client gets to see the answer instead of a reset connection.
 */
function readBody(req: IncomingMessage, res: ServerResponse, limit: number, shownLimit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  return new Promise<Buffer>((resolveBody, reject) => {
    const refuse = (size: number | undefined) => {
      req.removeAllListeners('data');
      req.removeAllListeners('end');
      let drained = 0;
      req.on('data', (chunk: Buffer) => {
        drained += chunk.length;
        if (drained > MAX_DRAIN_BYTES) req.destroy();
      });
      req.on('error', () => {});
      res.setHeader('connection', 'close');
      reject(tooLarge(size, shownLimit));
    };
    if (Number.isFinite(declared) && declared > limit) {
      refuse(declared);
      return;
    }
    const chunks: Buffer[] = [];
    let total = 0;
    req.on('data', (chunk: Buffer) => {
      total += chunk.length;
      if (total > limit) refuse(undefined);
      else chunks.push(chunk);
    });
    req.on('end', () => resolveBody(Buffer.concat(chunks, total)));
    req.on('error', reject);
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...COMMON_HEADERS, 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(text)) });
  res.end(text);
}

function sendError(res: ServerResponse, err: HttpError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (err.status === 405) res.setHeader('allow', err.message.includes('POST') ? 'POST' : 'GET, HEAD');
  sendJson(res, err.status, { error: { code: err.code, message: err.message } });
}
