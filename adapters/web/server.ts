// The local web demo (issue 3): a plain node:http server that serves one static page and streams answers
// from the conversation manager as server-sent events over a POST response.
//
//   GET  /                 the page (adapters/web/public/index.html; a CSP nonce per response on its tags)
//   GET  /app.css, /app.js the page's stylesheet and script modules (app.js imports app-common.js, app-image.js)
//   GET  /api/info         model name, demo notice, limits and generation defaults (JSON)
//   POST /api/chat         multipart/form-data: conversation, text, task, temperature, numBeams, [image]
//                          -> text/event-stream, one `data: {json}` per answer event
//   POST /api/reset        application/json {conversation} -> 204
//   GET  /examples         example scenes (adapters/web/examples.ts): [{id, task, prompt, width, height, alt}]
//   GET  /examples/<id>.png  an example scene, rendered on first request and kept in memory
//
// Security: binds to loopback unless remote access is asked for explicitly; the guard (guard.ts) checks
// Host, Origin, content types and body sizes; static files are looked up by name inside public/ only
// (routes.ts); the page renders model text with textContent only.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { TASKS } from '../../src/grounding/tasks.js';
import { LIMITS } from '../../src/conversation/limits.js';
import { drainRefused, isLoopbackHost, listen, runningServer, urlHost, type RunningHttpServer } from '../shared/http-server.js';
import type { ConversationPort } from '../shared/port.js';
import { EXAMPLE_SEED, renderExamples, type ExampleSet } from './examples.js';
import { allowedHosts, checkHost, checkOrigin, HttpError, methodNotAllowed, sendError, sendJson } from './guard.js';
import { chat, info, reset, serveExample, serveStatic, type WebRoutesContext } from './routes.js';

export { isLoopbackHost } from '../shared/http-server.js';

/** What the server needs from the conversation manager. */
export type WebConversationManager = Pick<ConversationPort, 'handle' | 'reset'>;

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

/** `url`: http://host:port/ */
export type WebServer = RunningHttpServer;

export const DEFAULT_WEB_HOST = '127.0.0.1';
export const DEFAULT_WEB_PORT = 7860;
export const DEFAULT_MAX_UPLOAD_BYTES = LIMITS.imageBytes;

/** The folder with index.html: beside this file in the source tree, or in the source tree from dist/. */
export function publicDir(): string {
  const here = import.meta.dirname;
  const candidates = [join(here, 'public'), resolve(here, '..', '..', '..', 'adapters', 'web', 'public')];
  return candidates.find((d) => existsSync(join(d, 'index.html'))) ?? candidates[0];
}

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

  const ctx: WebRoutesContext = {
    manager: opts.manager,
    log,
    maxUpload,
    tasks,
    dir,
    active,
    examples: loadExamples,
    model: opts.model,
    ...(opts.defaults ? { defaults: opts.defaults } : {}),
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // Refused before its body was read: read and drop the rest (bounded), so the client sees the answer.
      if (!req.complete && req.listenerCount('data') === 0) drainRefused(req, res);
      if (err instanceof HttpError) {
        if (err.status >= 500) log(`web: ${req.method} ${req.url}: ${err.message}`);
        sendError(res, err);
        return;
      }
      log(`web: ${req.method} ${req.url}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      sendError(res, new HttpError(500, 'internal', 'internal error'));
    });
  });
  server.requestTimeout = 120_000;
  server.headersTimeout = 30_000;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    checkHost(req, allowed);
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    if (path.startsWith('/api/')) {
      if (path === '/api/info') {
        if (req.method !== 'GET' && req.method !== 'HEAD') throw methodNotAllowed('GET');
        return sendJson(res, 200, info(ctx));
      }
      if (path === '/api/chat') {
        if (req.method !== 'POST') throw methodNotAllowed('POST');
        checkOrigin(req);
        return chat(ctx, req, res);
      }
      if (path === '/api/reset') {
        if (req.method !== 'POST') throw methodNotAllowed('POST');
        checkOrigin(req);
        return reset(ctx, req, res);
      }
      throw new HttpError(404, 'not_found', 'no such API');
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') throw methodNotAllowed('GET');
    if (path === '/examples' || path.startsWith('/examples/')) return serveExample(ctx, req, res, path);
    return serveStatic(ctx, req, res, path);
  }

  await listen(server, opts.port ?? DEFAULT_WEB_PORT, host);
  const port = (server.address() as AddressInfo).port;
  allowed = allowedHosts(host, port, opts.allowedHosts ?? []);
  return runningServer(server, active, { url: `http://${urlHost(host)}:${port}/`, host, port });
}
