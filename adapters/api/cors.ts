// Cross-origin access to the API (API_CORS_ORIGINS) for chat front ends that run in a browser, as local model servers
// offer (Ollama's OLLAMA_ORIGINS, llama.cpp's server). Off unless origins are listed: without keys the API relies on a
// cross-site page being unable to send it JSON (a preflight it never grants), so each origin let in is the
// operator's choice. `*` (any origin) only with keys: a page then needs a key to get anything.

/** Headers a browser may send beyond the CORS-safelisted ones: the SDKs' own, all lowercase tokens. */
const HEADER_TOKEN = /^[a-z0-9!#$%&'*+.^_`|~-]+$/;
/** Headers a page may read from a response: the waits of a 429 / 503. */
const EXPOSED = 'retry-after, retry-after-ms';

export class CorsPolicy {
  private readonly origins: ReadonlySet<string>;
  private readonly any: boolean;

  /** `origins`: `scheme://host[:port]` each, or `*`; `keyed`: the API needs a key (else `*` is refused) */
  constructor(origins: readonly string[], keyed: boolean) {
    const list = origins.map((o) => o.trim()).filter(Boolean);
    this.any = list.includes('*');
    if (this.any && !keyed)
      throw new Error(
        'API_CORS_ORIGINS=* without MINIGPT_API_KEYS would let any web page use the model: list the origins of your front end (e.g. http://localhost:3000), or set keys',
      );
    this.origins = new Set(list.filter((o) => o !== '*').map(normalOrigin));
  }

  get enabled(): boolean {
    return this.any || this.origins.size > 0;
  }

  /** whether a request from `origin` (its Origin header) may be read by the page */
  allows(origin: string | undefined): origin is string {
    if (!origin || origin === 'null') return false;
    return this.any || this.origins.has(origin);
  }

  /** The headers of a response to a request from an allowed `origin`. */
  responseHeaders(origin: string): Record<string, string> {
    return { 'access-control-allow-origin': origin, 'access-control-expose-headers': EXPOSED, vary: 'Origin' };
  }

  /**
   * The headers of a preflight's answer: the methods, and the headers the browser asked for when each is a plain
   * header name (the SDKs send their own, e.g. `x-stainless-*`); null when the request is not one to let through.
   */
  preflightHeaders(origin: string, method: string | undefined, requested: string | undefined): Record<string, string> | null {
    if (method !== 'GET' && method !== 'POST') return null;
    const headers = (requested ?? '')
      .split(',')
      .map((h) => h.trim().toLowerCase())
      .filter(Boolean);
    if (headers.some((h) => !HEADER_TOKEN.test(h) || h.length > 100) || headers.length > 50) return null;
    return {
      ...this.responseHeaders(origin),
      'access-control-allow-methods': 'GET, POST',
      'access-control-allow-headers': ['authorization', 'content-type', ...headers].filter((h, i, all) => all.indexOf(h) === i).join(', '),
      'access-control-max-age': '600',
      vary: 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers',
    };
  }
}

/** `scheme://host[:port]` as browsers send it in Origin (lowercase, no default port, no path); throws on anything else. */
function normalOrigin(origin: string): string {
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    throw new Error(`API_CORS_ORIGINS: "${origin}" is not an origin (scheme://host[:port], e.g. http://localhost:3000)`);
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.pathname !== '/' || url.search || url.hash || url.username)
    throw new Error(`API_CORS_ORIGINS: "${origin}" is not an origin (scheme://host[:port], e.g. http://localhost:3000)`);
  return url.origin;
}
