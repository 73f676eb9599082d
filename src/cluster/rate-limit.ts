// Per-user rate limits counted in Redis, shared by every front end: a sliding window per user (a sorted set of
// request times), checked and counted atomically in one script. Redis unreachable: the request is let through
// (the limit protects the model; failing closed would refuse everyone).
import type { Redis } from 'ioredis';
import type { RateDecision, RateLimiter } from '../../adapters/shared/rate-limit.js';
import { PREFIX } from './protocol.js';

const TAKE = `local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + window - now
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return -1`;

export class RedisRateLimiter implements RateLimiter {
  private seq = 0;

  constructor(
    private readonly redis: Redis,
    private readonly scope: string,
    readonly max: number,
    readonly windowMs: number,
    private readonly log: (line: string) => void = () => {},
  ) {}

  async take(user: string): Promise<RateDecision> {
    if (this.max <= 0) return { ok: true };
    const now = Date.now();
    try {
      const member = `${now}-${process.pid}-${++this.seq}-${Math.random().toString(36).slice(2, 8)}`;
      const wait = Number(await this.redis.eval(TAKE, 1, `${PREFIX}rate:${this.scope}:${user}`, now, this.windowMs, this.max, member));
      return wait < 0 ? { ok: true } : { ok: false, retryAfterMs: Math.max(0, wait) };
    } catch (err) {
      this.log(`rate limit (${this.scope}): Redis failed, letting the request through: ${(err as Error).message}`);
      return { ok: true };
    }
  }

  async shouldWarn(user: string): Promise<boolean> {
    try {
      return (await this.redis.set(`${PREFIX}rate-warned:${this.scope}:${user}`, '1', 'PX', this.windowMs, 'NX')) === 'OK';
    } catch {
      return true;
    }
  }
}
