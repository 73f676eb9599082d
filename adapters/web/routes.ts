// The web demo's routes behind the guard (guard.ts): the page and its static files, the model's info, the
// example scenes, a chat turn streamed as server-sent events, and a conversation's reset.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { extname, resolve, sep } from 'node:path';
import { selectorTask, type ConversationKey, type ConversationRequest, type TaskTag } from '../../src/conversation/index.js';
import { LIMITS } from '../../src/conversation/limits.js';
import { taskPrompt, TASK_BUTTON_PROMPTS, TASK_HINTS } from '../../src/grounding/tasks.js';
import { sseHeartbeat } from '../shared/http-server.js';
import type { ConversationPort } from '../shared/port.js';
import type { ExampleSet } from './examples.js';
import { COMMON_HEADERS, HttpError, readBody, requireType, sendJson, tooLarge } from './guard.js';
import { answerSegments } from './render.js';
import type { WebModelInfo } from './server.js';

/** What the routes need from the server. */
export interface WebRoutesContext {
  manager: Pick<ConversationPort, 'handle' | 'reset'>;
  log: (line: string) => void;
  /** largest image upload in bytes */
  maxUpload: number;
  /** the task tags the page offers (none for MiniGPT-4) */
  tasks: readonly string[];
  /** the folder with index.html and its stylesheet and scripts */
  dir: string;
  /** the answers in flight (closing aborts them) */
  active: Set<AbortController>;
  /** the example scenes, rendered on first use */
  examples(): Promise<ExampleSet>;
  /** what /api/info shows of the model */
  model: WebModelInfo | undefined;
  defaults?: { temperature?: number; numBeams?: number; maxNewTokens?: number };
}

/** room for the form fields around the image */
const FORM_OVERHEAD_BYTES = 64 * 1024;
const MAX_JSON_BYTES = 16 * 1024;
const MAX_TEXT_CHARS = 8000;
const MAX_REQUEST_ID_CHARS = 64;
const MAX_BEAMS = LIMITS.beams;
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

export function info(ctx: WebRoutesContext) {
  return {
    model: ctx.model ?? null,
    maxUploadBytes: ctx.maxUpload,
    tasks: ['chat', ...ctx.tasks],
    taskPrompts: TASK_BUTTON_PROMPTS,
    taskHints: TASK_HINTS,
    defaults: {
      temperature: ctx.defaults?.temperature ?? 0.6,
      numBeams: ctx.defaults?.numBeams ?? 1,
      maxNewTokens: ctx.defaults?.maxNewTokens ?? 300,
    },
    maxBeams: MAX_BEAMS,
  };
}

export async function serveExample(ctx: WebRoutesContext, req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
  if (path === '/examples') return sendJson(res, 200, (await ctx.examples()).list);
  const id = /^\/examples\/([A-Za-z0-9_-]{1,64})\.png$/.exec(path)?.[1];
  const png = id === undefined ? undefined : (await ctx.examples()).png(id);
  if (!png) throw new HttpError(404, 'not_found', 'no such example');
  res.writeHead(200, { ...COMMON_HEADERS, 'content-type': 'image/png', 'content-length': String(png.length) });
  res.end(req.method === 'HEAD' ? undefined : png);
}

export async function serveStatic(ctx: WebRoutesContext, req: IncomingMessage, res: ServerResponse, rawPath: string): Promise<void> {
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
  const file = resolve(ctx.dir, name.slice(1));
  const type = STATIC_TYPES[extname(file).toLowerCase()];
  if (!file.startsWith(ctx.dir + sep) || !type) throw new HttpError(404, 'not_found', 'not found');
  let body: Buffer;
  try {
    body = await readFile(file);
  } catch {
    throw new HttpError(404, 'not_found', 'not found');
  }
  const headers: Record<string, string> = { ...COMMON_HEADERS, 'content-type': type };
  if (type.startsWith('text/html')) {
    // The stylesheet and the scripts are files (app.css, app.js and its imports), yet the policy allows them by
    // this response's nonce on their tags rather than by 'self': a tag injected into the page, even one naming
    // a same-origin file, loads nothing. Module imports inherit the nonce.
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

export async function reset(ctx: WebRoutesContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  requireType(req, 'application/json');
  const body = await readBody(req, res, MAX_JSON_BYTES, MAX_JSON_BYTES);
  let conversation: unknown;
  try {
    conversation = (JSON.parse(body.toString('utf8')) as { conversation?: unknown }).conversation;
  } catch {
    throw new HttpError(400, 'bad_request', 'the body must be JSON');
  }
  await ctx.manager.reset(conversationKey(conversation));
  res.writeHead(204, COMMON_HEADERS);
  res.end();
}

export async function chat(ctx: WebRoutesContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const contentType = requireType(req, 'multipart/form-data');
  const body = await readBody(req, res, ctx.maxUpload + FORM_OVERHEAD_BYTES, ctx.maxUpload);
  let form: FormData;
  try {
    form = await new Response(body, { headers: { 'content-type': contentType } }).formData();
  } catch {
    throw new HttpError(400, 'bad_request', 'malformed multipart/form-data body');
  }
  const key = conversationKey(form.get('conversation'));
  const rawText = stringField(form, 'text');
  if (rawText.length > MAX_TEXT_CHARS)
    throw new HttpError(400, 'too_long', `the message is too long (at most ${MAX_TEXT_CHARS} characters)`);
  const selected = stringField(form, 'task') || 'chat';
  if (selected !== 'chat' && !ctx.tasks.includes(selected))
    throw new HttpError(400, 'bad_request', `unknown task "${selected.slice(0, 40)}"`);
  // (the conversation layer's rule: a tag typed in the message wins over the selector); the prompt is the
  // canonical one for the task
  let task: TaskTag | 'chat' = 'chat';
  let text = rawText.trim();
  if (ctx.tasks.length > 0) {
    task = selectorTask(rawText, selected as TaskTag | 'chat');
    text = taskPrompt(task, rawText);
  }
  // Regenerate: the latest answer (its request id, from its `final` event) given again; the question is the stored one.
  const regenerate = stringField(form, 'regenerate');
  if (regenerate.length > MAX_REQUEST_ID_CHARS) throw new HttpError(400, 'bad_request', 'malformed regenerate id');
  // An edited question: the latest question (the request id it was first asked under) asked again with this text.
  const edit = stringField(form, 'edit');
  if (edit.length > MAX_REQUEST_ID_CHARS) throw new HttpError(400, 'bad_request', 'malformed edit id');
  if (edit && regenerate) throw new HttpError(400, 'bad_request', 'a request regenerates an answer or edits a question, not both');
  const generation: NonNullable<ConversationRequest['generation']> = {};
  const temperature = numberField(form, 'temperature', 0, 2);
  if (temperature !== undefined) generation.temperature = temperature;
  const numBeams = numberField(form, 'numBeams', 1, MAX_BEAMS);
  if (numBeams !== undefined) generation.numBeams = Math.round(numBeams);
  let image: Uint8Array | undefined;
  const file = form.get('image');
  if (file !== null && typeof file !== 'string') {
    if (file.size > ctx.maxUpload) throw tooLarge(file.size, ctx.maxUpload);
    image = new Uint8Array(await file.arrayBuffer());
  }
  if (regenerate && image) throw new HttpError(400, 'bad_request', 'a regenerate request takes no image');
  if (edit && image) throw new HttpError(400, 'bad_request', 'an edited question takes no image');
  if (edit && !text) throw new HttpError(400, 'bad_request', 'type the edited question');
  if (!text && !image && !regenerate) throw new HttpError(400, 'bad_request', 'type a message or add an image');

  const controller = new AbortController();
  ctx.active.add(controller);
  // The client went away (tab closed, Stop pressed): cancel the answer.
  res.on('close', () => {
    if (!res.writableFinished) controller.abort();
    ctx.active.delete(controller);
  });
  res.writeHead(200, { ...COMMON_HEADERS, 'content-type': 'text/event-stream; charset=utf-8', 'x-accel-buffering': 'no' });
  res.flushHeaders();
  const send = (ev: object) => {
    if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(ev)}\n\n`);
  };
  const stopHeartbeat = sseHeartbeat(res, HEARTBEAT_MS);
  const requestId = randomBytes(8).toString('hex');
  const t0 = performance.now();
  let outcome = 'ok';
  try {
    const request: ConversationRequest = { key, user: 'web', text, task, generation, signal: controller.signal, requestId };
    if (image) request.image = image;
    if (regenerate) request.regenerate = regenerate;
    if (edit) request.edit = edit;
    for await (const ev of ctx.manager.handle(request)) {
      if (controller.signal.aborted) break;
      if (ev.type === 'image') send({ type: 'image', mime: ev.mime, data: Buffer.from(ev.data).toString('base64') });
      else if (ev.type === 'final') send({ ...ev, segments: answerSegments(ev.text), requestId });
      else {
        if (ev.type === 'error') outcome = ev.code;
        send(ev);
      }
    }
  } catch (err) {
    outcome = 'internal';
    if (!controller.signal.aborted) {
      ctx.log(`web: answer failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      send({ type: 'error', code: 'internal', message: 'Something went wrong while answering; please try again.' });
    }
  } finally {
    stopHeartbeat();
    ctx.active.delete(controller);
    if (controller.signal.aborted && outcome === 'ok') outcome = 'cancelled';
    send({ type: 'end' });
    res.end();
    // The manager logs every answer; this adds what only the web side knows.
    if (outcome !== 'ok')
      ctx.log(
        `web: chat ${key.thread.slice(0, 8)} ${task}${image ? ' +image' : ''} -> ${outcome} after ${Math.round(performance.now() - t0)} ms`,
      );
  }
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
