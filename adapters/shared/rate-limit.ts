// Per-user rate limits as adapters use them: counted in the adapter's own process (the Discord adapter's
// UserRateLimiter), or, for front ends on Redis, in Redis (src/cluster/rate-limit.ts), so that a user cannot get
// around a limit by reaching another front end.

export type RateDecision = { ok: true } | { ok: false; retryAfterMs: number };

export interface RateLimiter {
  /** Counts a request; `ok: false` (not counted) with the wait when the user is over the limit. */
  take(user: string): RateDecision | Promise<RateDecision>;
  /** Whether to tell the user about the limit now (once per window), so that the bot does not spam replies. */
  shouldWarn(user: string): boolean | Promise<boolean>;
}

/** Makes a limiter of `max` requests per user in any `windowMs`, for one adapter (`scope`). */
export type RateLimiterFactory = (scope: string, max: number, windowMs: number) => RateLimiter;
