// The OpenAI-compatible API (issue 23): the chat completions endpoint that local model servers speak, so
// that the official SDKs, chat front ends and other bots can use MiniGPT. A translator like the other
// adapters: OpenAI requests in, the conversation manager's answer events out as OpenAI responses.
//
//   GET  /v1/models               the served package
//   GET  /v1/models/<id>          one model
//   POST /v1/chat/completions     application/json; `stream: true` answers with server-sent events
//
// Auth: `Authorization: Bearer <key>` against MINIGPT_API_KEYS. Without keys the server listens on loopback
// only and answers only to loopback Host names (a web page cannot reach it through DNS rebinding); POST
// bodies must be JSON, which a cross-site page cannot send without a CORS preflight that is never granted.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { ConversationRequest } from '../../src/conversation/index.js';
import { ApiError, badRequest, tooManyRequests } from './errors.js';
import type { RateLimiter } from '../shared/rate-limit.js';
import { LocalConcurrency, type ConcurrencyLimiter } from './concurrency.js';
import { CorsPolicy } from './cors.js';
import { parseChatRequest } from './request.js';
import { imageBytes } from './images.js';
import {
  chunkObject,
  completionObject,
  extension,
  runCompletion,
  usageChunk,
  type ApiConversationManager,
  type CompletionIds,
} from './completion.js';
import { LIMITS } from '../../src/conversation/limits.js';
import {
  drainRefused,
  isLoopbackHost,
  listen,
  runningServer,
  sseHeartbeat,
  urlHost,
  type RunningHttpServer,
} from '../shared/http-server.js';

export interface ApiModelInfo {
  /** the id clients send as `model` */
  id: string;
  /** unix seconds (e.g. when the package was converted) */
  created: number;
  architecture: 'minigpt-v2' | 'minigpt-4';
  /** execution provider and weight type, shown in /v1/models */
  provider?: string;
  dtype?: string;
  /** the test hook forces every answer (MINIGPT_TEST_FORCED_ANSWER): /v1/models says so */
  forcedAnswer?: boolean;
  /** the language model's vocabulary size, where known: logit_bias ids at or above it are refused (400) */
  vocabSize?: number;
}

export interface ApiServerOptions {
  manager: ApiConversationManager;
  model: ApiModelInfo;
  /** default 127.0.0.1; a non-loopback address needs `keys` */
  host?: string;
  /** default 8000; 0 picks a free port */
  port?: number;
  /** bearer keys; empty: no authentication (loopback only) */
  keys?: readonly string[];
  /** hosts `image_url` may be fetched from (see imageHostAllowed); default none: data URLs only */
  imageHosts?: readonly string[];
  /** largest image in bytes (default 20 MiB) */
  maxImageBytes?: number;
  /**
   * Requests per key in a window (API_RATE_LIMIT; counted in Redis for front ends on it): over it, 429 with the wait.
   * Default none. Without keys the loopback clients share one count.
   */
  rateLimit?: { limiter: RateLimiter; max: number; windowMs: number };
  /**
   * Most requests of one key waiting or being answered at once (API_MAX_CONCURRENT; counted by `concurrency`): more
   * are refused with 429, so that one client cannot fill the queue the chat users share. Default none.
   */
  maxConcurrent?: number;
  /** where the requests in progress are counted (front ends on Redis: there, shared); default this process */
  concurrency?: ConcurrencyLimiter;
  /** origins whose pages may call the API from a browser (API_CORS_ORIGINS, CorsPolicy); default none; `*` needs `keys` */
  corsOrigins?: readonly string[];
  log?: (line: string) => void;
}

/** `url`: http://host:port/v1 (the SDKs' baseURL) */
export type ApiServer = RunningHttpServer;

export const DEFAULT_API_HOST = '127.0.0.1';
export const DEFAULT_API_PORT = 8000;
const DEFAULT_MAX_IMAGE_BYTES = LIMITS.imageBytes;
const HEARTBEAT_MS = 15_000;

const HEADERS: Readonly<Record<string, string>> = { 'x-content-type-options': 'nosniff', 'cache-control': 'no-store' };

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Starts the API; resolves once it listens. */
export async function startApiServer(opts: ApiServerOptions): Promise<ApiServer> {
  const host = opts.host ?? DEFAULT_API_HOST;
  const keys = (opts.keys ?? []).map((k) => k.trim()).filter(Boolean);
  if (keys.length === 0 && !isLoopbackHost(host)) {
    throw new Error(
      `refusing to serve the API on ${host} without authentication: set MINIGPT_API_KEYS (comma-separated keys), or listen on 127.0.0.1`,
    );
  }
  const keyDigests = keys.map(digest);
  const cors = new CorsPolicy(opts.corsOrigins ?? [], keys.length > 0);
  const log = opts.log ?? (() => {});
  const maxImageBytes = opts.maxImageBytes ?? DEFAULT_MAX_IMAGE_BYTES;
  // A base64 data URL is 4/3 of the image; room for a second (earlier) image and the text.
  const maxBody = Math.ceil((maxImageBytes * 4) / 3) * 2 + 1024 * 1024;
  const active = new Set<AbortController>();
  /** requests in progress per key (`maxConcurrent`) */
  const concurrency = opts.concurrency ?? new LocalConcurrency();
  let loopbackNames = new Set<string>();

  const server: Server = createServer((req, res) => {
    // (on every answer to an allowed page, errors included: its script reads them)
    const origin = req.headers.origin;
    if (cors.allows(origin)) for (const [k, v] of Object.entries(cors.responseHeaders(origin))) res.setHeader(k, v);
    handle(req, res).catch((err: unknown) => {
      // Refused before its body was read: read and drop the rest (bounded), so that the client sees the answer.
      if (!req.complete && req.listenerCount('data') === 0) drainRefused(req, res);
      const e = err instanceof ApiError ? err : new ApiError(500, 'server_error', 'internal_error', 'internal error');
      if (!(err instanceof ApiError) || e.status >= 500)
        log(`api: ${req.method} ${req.url}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      sendError(res, e);
    });
  });
  server.requestTimeout = 120_000;
  server.headersTimeout = 30_000;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // (a browser's preflight carries no key: it asks whether the page may send one)
    if (req.method === 'OPTIONS') return preflight(req, res);
    const keyIndex = authorize(req);
    const path = new URL(req.url ?? '/', 'http://localhost').pathname.replace(/\/+$/, '');
    if (path === '/v1/models') {
      if (req.method !== 'GET') throw methodNotAllowed('GET');
      return sendJson(res, 200, { object: 'list', data: [modelObject()] });
    }
    if (path.startsWith('/v1/models/')) {
      if (req.method !== 'GET') throw methodNotAllowed('GET');
      const id = path.slice('/v1/models/'.length);
      let decoded: string | undefined;
      try {
        decoded = decodeURIComponent(id);
      } catch {
        // malformed escapes: no such model
      }
      if (decoded !== opts.model.id) throw unknownModel(decoded ?? id);
      return sendJson(res, 200, modelObject());
    }
    if (path === '/v1/chat/completions') {
      if (req.method !== 'POST') throw methodNotAllowed('POST');
      return chat(req, res, keyIndex);
    }
    throw new ApiError(
      404,
      'not_found_error',
      'unknown_url',
      `Unknown request URL: ${req.method} ${path.slice(0, 200)}. This server has /v1/models and /v1/chat/completions.`,
    );
  }

  /** Without keys, only loopback Host names are answered (no DNS rebinding); throws 421. */
  function checkHost(req: IncomingMessage): void {
    if (keyDigests.length > 0) return;
    const h = (req.headers.host ?? '').toLowerCase();
    if (!loopbackNames.has(h))
      throw new ApiError(421, 'invalid_request_error', 'bad_host', `this server does not answer for host "${h.slice(0, 100)}"`);
  }

  /** A browser's CORS preflight: granted to the pages of API_CORS_ORIGINS only. */
  function preflight(req: IncomingMessage, res: ServerResponse): void {
    checkHost(req);
    const origin = req.headers.origin;
    if (!cors.allows(origin))
      throw new ApiError(
        403,
        'invalid_request_error',
        'origin_not_allowed',
        cors.enabled
          ? `pages from ${String(origin).slice(0, 100)} may not use this API (API_CORS_ORIGINS)`
          : 'this API takes no requests from web pages on other origins (API_CORS_ORIGINS is not set)',
      );
    const method = req.headers['access-control-request-method'];
    const headers = cors.preflightHeaders(origin, method, req.headers['access-control-request-headers']);
    if (!headers)
      throw new ApiError(
        403,
        'invalid_request_error',
        'cors_request_not_allowed',
        'only GET and POST, with plain header names, are let through',
      );
    res.writeHead(204, { ...HEADERS, ...headers });
    res.end();
  }

  /** The index of the key used (-1 without keys); throws 401/421. */
  function authorize(req: IncomingMessage): number {
    checkHost(req);
    if (keyDigests.length === 0) return -1;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (m) {
      const d = digest(m[1]);
      const i = keyDigests.findIndex((k) => timingSafeEqual(k, d));
      if (i >= 0) return i;
    }
    throw new ApiError(
      401,
      'invalid_request_error',
      'invalid_api_key',
      m ? 'Incorrect API key provided.' : 'You did not provide an API key: send it as "Authorization: Bearer <key>".',
      null,
      { 'www-authenticate': 'Bearer' },
    );
  }

  function modelObject() {
    const m = opts.model;
    return {
      id: m.id,
      object: 'model',
      created: m.created,
      owned_by: 'minigpt-bot',
      minigpt: {
        architecture: m.architecture,
        provider: m.provider ?? null,
        dtype: m.dtype ?? null,
        ...(m.forcedAnswer ? { forced_answer: true } : {}),
      },
    };
  }

  function unknownModel(id: string): ApiError {
    return new ApiError(
      404,
      'invalid_request_error',
      'model_not_found',
      `The model "${id.slice(0, 100)}" does not exist: this server serves "${opts.model.id}".`,
      'model',
    );
  }

  async function chat(req: IncomingMessage, res: ServerResponse, keyIndex: number): Promise<void> {
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type !== 'application/json')
      throw new ApiError(
        415,
        'invalid_request_error',
        'unsupported_media_type',
        'the request body must be JSON (Content-Type: application/json)',
      );
    const raw = await readBody(req, maxBody);
    let body: unknown;
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch {
      throw badRequest('We could not parse the JSON body of your request.', null, 'invalid_json');
    }
    const parsed = parseChatRequest(body, opts.model.vocabSize);
    if (parsed.model !== opts.model.id) throw unknownModel(parsed.model);
    const key = keyIndex >= 0 ? `key${keyIndex + 1}` : 'local';
    await admit(key, res);

    const controller = new AbortController();
    active.add(controller);
    res.on('close', () => {
      if (!res.writableFinished) controller.abort();
      active.delete(controller);
    });
    try {
      const image = parsed.image
        ? await imageBytes(parsed.image, { allowedHosts: opts.imageHosts ?? [], maxBytes: maxImageBytes, signal: controller.signal })
        : undefined;
      const requestId = randomBytes(12).toString('hex');
      const ids: CompletionIds = { id: `chatcmpl-${requestId}`, created: Math.floor(Date.now() / 1000), model: opts.model.id };
      // The first choice that fails stops the others (the client gets its error, not a partial set).
      const stopChoices = new AbortController();
      const signal = AbortSignal.any([controller.signal, stopChoices.signal]);
      const seed = parsed.generation.seed;
      const requests = Array.from({ length: parsed.choices }, (_, i): ConversationRequest => {
        const id = parsed.choices > 1 ? `${requestId}.${i}` : requestId;
        return {
          // Every request is its own conversation: the messages carry the history; the key only schedules it. Each
          // choice is one of its own, answered beside the others (batched with them on the model).
          key: { platform: 'api', workspace: key, channel: 'v1', thread: id },
          user: parsed.user ?? 'api',
          text: parsed.text,
          history: parsed.history,
          // (a seed gives every choice its own, so that they differ and are repeated all the same)
          generation: i > 0 && seed !== undefined ? { ...parsed.generation, seed: seed + i } : parsed.generation,
          annotate: parsed.annotatedImage,
          signal,
          requestId: id,
          ...(image ? { image } : {}),
        };
      });
      if (parsed.stream) await streamed(res, ids, requests, parsed.includeUsage, controller.signal, stopChoices);
      else
        sendJson(
          res,
          200,
          completionObject(
            ids,
            await allChoices(
              requests.map((r) => runCompletion(opts.manager, r)),
              stopChoices,
            ),
          ),
        );
    } finally {
      active.delete(controller);
    }
  }

  /**
   * Throws 429 when `key` is over its limits; else counts the request as in progress until `res` closes (and against
   * the rate limit's window: a refused one is not counted).
   */
  async function admit(key: string, res: ServerResponse): Promise<void> {
    const cap = opts.maxConcurrent;
    const release = cap ? await concurrency.acquire(key, cap) : undefined;
    if (release === null) {
      log(`api: ${key}: refused, ${cap} request(s) of it in progress`);
      throw tooManyRequests(
        'too_many_concurrent_requests',
        `This API key has ${cap} request${cap === 1 ? '' : 's'} in progress, the most this server takes at once from one key: send the next when one has finished.`,
        1000,
      );
    }
    // (the place is taken before the rate limit's await, so that requests arriving together cannot all pass the cap)
    // (a client gone while Redis answered: given back at once)
    if (release && res.closed) release();
    else if (release) res.once('close', release);
    const rl = opts.rateLimit;
    if (!rl) return;
    const r = await rl.limiter.take(key);
    if (r.ok) return;
    release?.();
    const s = Math.max(1, Math.ceil(r.retryAfterMs / 1000));
    if (await rl.limiter.shouldWarn(key)) log(`api: ${key}: over its rate limit (${rl.max} per ${rl.windowMs / 1000} s)`);
    throw tooManyRequests(
      'rate_limit_exceeded',
      `Rate limit reached for this API key: ${rl.max} request${rl.max === 1 ? '' : 's'} per ${rl.windowMs / 1000} s. Please try again in ${s} s.`,
      r.retryAfterMs,
    );
  }

  /**
   * Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. The status line waits for the
   * first piece of the answer, so that a refusal (busy, bad image, too long) is still an HTTP error; an error
   * after that is an `error` event, which the SDKs raise.
   */
  async function streamed(
    res: ServerResponse,
    ids: CompletionIds,
    requests: readonly ConversationRequest[],
    includeUsage: boolean,
    signal: AbortSignal,
    stopChoices: AbortController,
  ): Promise<void> {
    let stopHeartbeat: (() => void) | undefined;
    const send = (data: string): Promise<void> | void => {
      if (res.writableEnded || res.destroyed) return;
      if (!res.write(`data: ${data}\n\n`)) return new Promise<void>((done) => res.once('drain', done).once('close', done));
    };
    const open = () => {
      if (res.headersSent) return;
      res.writeHead(200, { ...HEADERS, 'content-type': 'text/event-stream; charset=utf-8', 'x-accel-buffering': 'no' });
      stopHeartbeat = sseHeartbeat(res, HEARTBEAT_MS);
      for (let i = 0; i < requests.length; i++) void send(JSON.stringify(chunkObject(ids, i, { role: 'assistant', content: '' })));
    };
    try {
      // each choice's pieces as they come, interleaved, and its last chunk when it ends
      const runs = requests.map(async (request, i) => {
        const answer = await runCompletion(opts.manager, request, (text, logprobs) => {
          open();
          return send(JSON.stringify(chunkObject(ids, i, { content: text }, null, {}, logprobs)));
        });
        open();
        await send(JSON.stringify(chunkObject(ids, i, {}, answer.finishReason, { minigpt: extension(answer) })));
        return answer;
      });
      const answers = await allChoices(runs, stopChoices);
      if (includeUsage) await send(JSON.stringify(usageChunk(ids, answers)));
      await send('[DONE]');
      res.end();
    } catch (err) {
      if (!res.headersSent) throw err;
      if (!signal.aborted) {
        const e =
          err instanceof ApiError
            ? err
            : new ApiError(500, 'server_error', 'internal_error', 'Something went wrong while answering; please try again.');
        if (!(err instanceof ApiError)) log(`api: answer failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
        await send(JSON.stringify(e.toJSON()));
      }
      res.end();
    } finally {
      stopHeartbeat?.();
    }
  }

  await listen(server, opts.port ?? DEFAULT_API_PORT, host);
  const port = (server.address() as AddressInfo).port;
  loopbackNames = new Set(['localhost', '127.0.0.1', '[::1]'].map((n) => `${n}:${port}`));

  return runningServer(server, active, { url: `http://${urlHost(host)}:${port}/v1`, host, port });
}

/** Every choice's answer; the first to fail stops the others (`stop`), then its error is thrown. */
async function allChoices<T>(runs: readonly Promise<T>[], stop: AbortController): Promise<T[]> {
  try {
    return await Promise.all(runs);
  } catch (err) {
    stop.abort();
    await Promise.allSettled(runs);
    throw err;
  }
}

function methodNotAllowed(allow: string): ApiError {
  return new ApiError(405, 'invalid_request_error', 'method_not_allowed', `method not allowed (use ${allow})`, null, { allow });
}

/** A request body of at most `limit` bytes (413 beyond it; the rest is not read: the connection closes). */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  const refusal = () =>
    new ApiError(
      413,
      'invalid_request_error',
      'request_too_large',
      `The request is too large: at most ${Math.round(limit / (1024 * 1024))} MB are accepted (images included).`,
      null,
      {
        connection: 'close',
      },
    );
  if (Number.isFinite(declared) && declared > limit) return Promise.reject(refusal());
  return new Promise<Buffer>((resolveBody, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    req.on('data', (chunk: Buffer) => {
      total += chunk.length;
      if (total > limit) {
        req.removeAllListeners('data');
        reject(refusal());
      } else chunks.push(chunk);
    });
    req.on('end', () => resolveBody(Buffer.concat(chunks, total)));
    req.on('error', reject);
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Readonly<Record<string, string>> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...HEADERS,
    ...headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(text)),
  });
  res.end(text);
}

function sendError(res: ServerResponse, err: ApiError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, err.status, err.toJSON(), err.headers);
}
