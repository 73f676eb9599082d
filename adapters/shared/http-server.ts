// What the HTTP adapters (the web demo, the OpenAI-compatible API) share about their node:http server: the
// address they show, listening, refusing uploads politely, keeping event streams open, and closing with
// answers in flight.
import { isIP } from 'node:net';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';

/** `host` as it goes in a URL (IPv6 in brackets); a wildcard bind is shown as 127.0.0.1. */
export function urlHost(host: string): string {
  const h = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  return isIP(h) === 6 ? `[${h}]` : h;
}

/**
 * Stops listening, aborts the answers in flight (`active`), gives their streams up to 2 s to end on the abort,
 * then drops every connection (idle keep-alive ones included).
 */
export async function closeServer(server: Server, active: ReadonlySet<AbortController>): Promise<void> {
  const closed = new Promise<void>((done) => server.close(() => done()));
  for (const c of active) c.abort();
  const deadline = performance.now() + 2000;
  while (active.size > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  server.closeAllConnections();
  await closed;
}

/** Whether `host` names this machine's loopback (a bind there is out of other machines' reach). */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** Listens on `port` and `host`; rejects when the address cannot be had (in use, not this machine's). */
export function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Discard at most this much of a refused upload before dropping the connection. */
export const MAX_DRAIN_BYTES = 256 * 1024 * 1024;

/**
 * A request refused before (or while) its body was read: the rest is read and dropped, up to MAX_DRAIN_BYTES,
 * so that the client gets to see the answer instead of a reset connection; the connection then closes.
 */
export function drainRefused(req: IncomingMessage, res: ServerResponse): void {
  res.setHeader('connection', 'close');
  let drained = 0;
  req.on('data', (chunk: Buffer) => {
    drained += chunk.length;
    if (drained > MAX_DRAIN_BYTES) req.destroy();
  });
  req.on('error', () => {});
}

/** Server-sent events' comment line every `ms`, so that proxies keep a slow answer's stream open; returns the stop. */
export function sseHeartbeat(res: ServerResponse, ms: number): () => void {
  const timer = setInterval(() => {
    if (!res.writableEnded && !res.destroyed) res.write(': keep-alive\n\n');
  }, ms);
  return () => clearInterval(timer);
}

/** A started HTTP adapter as its owner sees it. */
export interface RunningHttpServer {
  /** where clients reach it (the web demo's page, the API's base URL) */
  url: string;
  host: string;
  port: number;
  /** stops it (closeServer); the same promise however often it is called */
  close(): Promise<void>;
}

/** The listening `server` as a RunningHttpServer whose close aborts the answers in `active`. */
export function runningServer(
  server: Server,
  active: ReadonlySet<AbortController>,
  where: { url: string; host: string; port: number },
): RunningHttpServer {
  let closing: Promise<void> | null = null;
  return {
    ...where,
    close() {
      closing ??= closeServer(server, active);
      return closing;
    },
  };
}
