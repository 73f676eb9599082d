// A careful download for the chat adapters: every URL (the first and each redirect's) checked by the adapter's
// own rule before anything is sent to it, redirects followed by hand (a few at most), a timeout, and a size cap
// (the declared length, then the bytes as they arrive). What went wrong comes back as a DownloadFailure, which
// each adapter turns into its own sentence for the user.

/** `url` parsed, or undefined when it is not a URL or carries credentials (`user:password@`). */
export function plainUrl(url: string): URL | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  return u.username || u.password ? undefined : u;
}

export type DownloadFailureKind =
  /** a URL (the first, or a redirect's target) that the rule does not allow */
  | 'host'
  /** a redirect without a location, or more redirects than allowed */
  | 'redirects'
  /** an answer that is not 2xx (nor 3xx): `status` */
  | 'http'
  /** over `maxBytes`: `size` is the declared length, or (`declared` false) what had arrived when it was cut */
  | 'too_large'
  | 'timeout'
  /** the connection or the transfer failed */
  | 'network';

export class DownloadFailure extends Error {
  constructor(
    readonly kind: DownloadFailureKind,
    readonly detail: { status?: number; size?: number; declared?: boolean } = {},
    options?: { cause?: unknown },
  ) {
    super(`download failed: ${kind}`, options);
  }
}

export interface SafeDownloadOptions {
  /** whether a URL may be fetched (checked before every request, redirects included) */
  allowed(url: string): boolean;
  /** sent with every request (to allowed URLs only) */
  headers?: Record<string, string>;
  maxBytes: number;
  timeoutMs: number;
  /** redirects followed at most (default 3) */
  maxRedirects?: number;
  /** the caller's cancellation: its abort is passed on as it is, not as a DownloadFailure */
  signal?: AbortSignal;
  /** a 2xx answer the caller refuses before its body is read: the error to throw (the body is discarded) */
  refuse?(res: Response): Error | undefined;
}

/** Downloads `url` under the options; throws DownloadFailure, the `refuse` error, or the caller's abort. */
export async function safeDownload(url: string, opts: SafeDownloadOptions): Promise<Uint8Array> {
  const maxRedirects = opts.maxRedirects ?? 3;
  const timeout = AbortSignal.timeout(opts.timeoutMs);
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
  let refused: Error | undefined;
  let current = url;
  try {
    for (let hop = 0; ; hop++) {
      if (!opts.allowed(current)) throw new DownloadFailure('host');
      const res = await fetch(current, { headers: opts.headers, redirect: 'manual', signal });
      if (res.status >= 300 && res.status < 400) {
        await discard(res);
        const location = res.headers.get('location');
        if (!location || hop >= maxRedirects) throw new DownloadFailure('redirects');
        current = new URL(location, current).href;
        continue;
      }
      if (!res.ok) {
        await discard(res);
        throw new DownloadFailure('http', { status: res.status });
      }
      refused = opts.refuse?.(res);
      if (refused) {
        await discard(res);
        throw refused;
      }
      const declared = Number(res.headers.get('content-length'));
      if (Number.isFinite(declared) && declared > opts.maxBytes) {
        await discard(res);
        throw new DownloadFailure('too_large', { size: declared, declared: true });
      }
      return await readCapped(res, opts.maxBytes);
    }
  } catch (err) {
    if (err instanceof DownloadFailure || (refused && err === refused)) throw err;
    if (timeout.aborted) throw new DownloadFailure('timeout', {}, { cause: err });
    if (opts.signal?.aborted) throw err;
    throw new DownloadFailure('network', {}, { cause: err });
  }
}

async function discard(res: Response): Promise<void> {
  await res.body?.cancel().catch(() => {});
}

async function readCapped(res: Response, max: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (res.body) {
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > max) {
        await reader.cancel().catch(() => {});
        throw new DownloadFailure('too_large', { size: total, declared: false });
      }
      chunks.push(value);
    }
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.byteLength;
  }
  return out;
}
