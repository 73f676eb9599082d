// Per-user rate limit and log redaction for the Discord adapter.
import { hideSecrets } from '../shared/errors.js';
import type { RateDecision, RateLimiter } from '../shared/rate-limit.js';

export type { RateDecision, RateLimiter, RateLimiterFactory } from '../shared/rate-limit.js';

/** A sliding-window limit: at most `max` requests per user in any `windowMs`. */
export class UserRateLimiter implements RateLimiter {
  private readonly hits = new Map<string, number[]>();
  private readonly warned = new Map<string, number>();

  constructor(
    readonly max: number,
    readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Counts a request; `ok: false` (not counted) with the wait when the user is over the limit. */
  take(user: string): RateDecision {
    if (this.max <= 0) return { ok: true };
    const t = this.now();
    const list = (this.hits.get(user) ?? []).filter((x) => x > t - this.windowMs);
    if (list.length >= this.max) {
      this.hits.set(user, list);
      return { ok: false, retryAfterMs: list[0] + this.windowMs - t };
    }
    list.push(t);
    this.hits.set(user, list);
    if (this.hits.size > 10_000) this.prune(t);
    return { ok: true };
  }

  /** Whether to tell the user about the limit now (once per window), so the bot does not spam replies. */
  shouldWarn(user: string): boolean {
    const t = this.now();
    const last = this.warned.get(user);
    if (last !== undefined && t - last < this.windowMs) return false;
    this.warned.set(user, t);
    return true;
  }

  private prune(t: number): void {
    for (const [u, list] of this.hits) if (!list.some((x) => x > t - this.windowMs)) this.hits.delete(u);
    for (const [u, w] of this.warned) if (t - w >= this.windowMs) this.warned.delete(u);
  }
}

/**
 * A log line without secrets: the bot token, interaction/webhook tokens in API paths, and URL queries
 * (Discord CDN links carry signatures in `ex`/`is`/`hm`).
 */
export function redact(line: string, secrets: readonly string[] = []): string {
  return hideSecrets(line, secrets, 8)
    .replace(/(\/(?:webhooks|interactions)\/\d+\/)[^/\s?#"']+/g, '$1[token]')
    .replace(/(\bhttps?:\/\/[^\s?#"'<>]+)\?[^\s"'<>)]*/gi, '$1')
    .replace(/\b(Bot|Bearer)\s+[A-Za-z0-9._-]{20,}/g, '$1 [redacted]');
}
