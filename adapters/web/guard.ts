// What stands between the web demo and anyone who can reach its port: it has no authentication, so every
// request's Host must be one of the server's own names (DNS rebinding), every POST must carry the page's own
// Origin (CSRF) and the expected content type, and bodies are capped (413, the rest of the upload drained so
// that the browser shows the reason). Refusals are HttpErrors, sent as JSON by sendError.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { drainRefused } from '../shared/http-server.js';

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export const COMMON_HEADERS: Readonly<Record<string, string>> = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-store',
};

function formatHost(host: string): string {
  return isIP(host) === 6 ? `[${host}]` : host;
}

const mb = (n: number) => `${(n / (1024 * 1024)).toFixed(n < 1024 * 1024 ? 2 : 1)} MB`;

/** Host header values this server answers to. */
export function allowedHosts(host: string, port: number, extra: readonly string[]): Set<string> {
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

/** DNS rebinding: a page on evil.example resolving to 127.0.0.1 still sends Host: evil.example. */
export function checkHost(req: IncomingMessage, allowed: ReadonlySet<string>): void {
  const h = (req.headers.host ?? '').toLowerCase();
  if (!allowed.has(h)) throw new HttpError(421, 'bad_host', `this server does not answer for host "${h.slice(0, 100)}"`);
}

/** CSRF: browsers send Origin with every POST; it must be this server's own. */
export function checkOrigin(req: IncomingMessage): void {
  const origin = req.headers.origin;
  const site = req.headers['sec-fetch-site'];
  if (typeof site === 'string' && site !== 'same-origin' && site !== 'none') {
    throw new HttpError(403, 'cross_origin', 'cross-origin requests are refused');
  }
  if (typeof origin !== 'string' || origin !== `http://${(req.headers.host ?? '').toLowerCase()}`) {
    throw new HttpError(403, 'cross_origin', "cross-origin requests are refused (the Origin header must be this page's)");
  }
}

export function methodNotAllowed(allow: string): HttpError {
  return new HttpError(405, 'method_not_allowed', `method not allowed (use ${allow})`);
}

export function requireType(req: IncomingMessage, type: string): string {
  const ct = req.headers['content-type'] ?? '';
  if (ct.split(';')[0].trim().toLowerCase() !== type) {
    throw new HttpError(415, 'bad_content_type', `expected Content-Type ${type}`);
  }
  return ct;
}

export function tooLarge(size: number | undefined, limit: number): HttpError {
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
export function readBody(req: IncomingMessage, res: ServerResponse, limit: number, shownLimit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  return new Promise<Buffer>((resolveBody, reject) => {
    const refuse = (size: number | undefined) => {
      req.removeAllListeners('data');
      req.removeAllListeners('end');
      drainRefused(req, res);
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

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...COMMON_HEADERS,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(text)),
  });
  res.end(text);
}

export function sendError(res: ServerResponse, err: HttpError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (err.status === 405) res.setHeader('allow', err.message.includes('POST') ? 'POST' : 'GET, HEAD');
  sendJson(res, err.status, { error: { code: err.code, message: err.message } });
}
