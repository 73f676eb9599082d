// Per-user rate limits as adapters use them (Discord, Slack): counted in the adapter's own process
// (UserRateLimiter), or, for front ends on Redis, in Redis (src/cluster/rate-limit.ts), so that a user cannot get
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

/** A limit of `max` requests per user in any `windowMs` (none: false). */
export type RateLimitSetting = { max: number; windowMs: number } | false;

/** The limit when an adapter's setting is not given: 6 requests a minute per user. */
export const DEFAULT_RATE_LIMIT: RateLimitSetting = { max: 6, windowMs: 60_000 };

/**
 * `N/SECONDS` (`N` alone: per 60 s; `0`: no limit) from the environment variable `name`; undefined when unset. A
 * bad value throws `fail`'s error (the adapter's configuration error), naming the variable.
 */
export function rateLimitFromEnv(name: string, value: string | undefined, fail: (message: string) => Error): RateLimitSetting | undefined {
  const v = value?.trim();
  if (!v) return undefined;
  const m = /^(\d+)(?:\s*\/\s*(\d+))?$/.exec(v);
  if (!m || Number(m[2] ?? 60) <= 0) throw fail(`${name}=${v}: expected N/SECONDS, e.g. 6/60 (0: no limit)`);
  const max = Number(m[1]);
  return max === 0 ? false : { max, windowMs: Number(m[2] ?? 60) * 1000 };
}

/**
 * An adapter's limiter for `setting` (undefined: DEFAULT_RATE_LIMIT; false: none), counted where `factory` says
 * (front ends on Redis: in Redis), else in this process.
 */
export function userLimiter(scope: string, setting: RateLimitSetting | undefined, factory?: RateLimiterFactory): RateLimiter | null {
  const rl = setting === undefined ? DEFAULT_RATE_LIMIT : setting;
  return rl ? (factory?.(scope, rl.max, rl.windowMs) ?? new UserRateLimiter(rl.max, rl.windowMs)) : null;
}

/**
 * Counts a request of `who` against `limiter` (null: no limit); over it, tells them (once per window so that the
 * bot does not spam a channel; every time when `privately`: a command's or button's private reply, which the user
 * waits for) and returns false.
 */
export async function admit(
  limiter: RateLimiter | null,
  who: string,
  tell: (text: string) => Promise<unknown>,
  privately: boolean,
): Promise<boolean> {
  if (!limiter) return true;
  const r = await limiter.take(who);
  if (r.ok) return true;
  if (privately || (await limiter.shouldWarn(who))) await tell(rateLimitMessage(r.retryAfterMs)).catch(() => {});
  return false;
}

/** What a user over the limit is told. */
export function rateLimitMessage(ms: number): string {
  const s = Math.max(1, Math.ceil(ms / 1000));
  return `You're sending requests a bit fast: please wait ${s} second${s === 1 ? '' : 's'} before asking again.`;
}

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
