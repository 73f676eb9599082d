// What the HTTP adapters (the web demo, the OpenAI-compatible API) share about their node:http server: the
// address they show, and closing with answers in flight.
import { isIP } from 'node:net';
import type { Server } from 'node:http';

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
