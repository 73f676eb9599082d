// API_MAX_CONCURRENT across front ends: each request in progress holds a place in a sorted set per key in Redis,
// scored by when its hold lapses. The front end renews the holds of its requests while they run, so that the places
// of a front end that died come free within one hold (HOLD_MS) without anyone cleaning up. Checked and taken in one
// script, on Redis's clock (front ends' clocks may differ). Redis unreachable: the request is let through, as the
// rate limit does (the limit protects the model; failing closed would refuse everyone).
import type { Redis } from 'ioredis';
import type { ConcurrencyLimiter, Release } from '../../adapters/api/concurrency.js';
import { PREFIX } from './protocol.js';

/** How long a place stays held without renewal; renewed every third of it. */
export const HOLD_MS = 30_000;

const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

// KEYS[1]: the key's places; ARGV: max, hold ms, member. 1: taken; 0: all held.
const ACQUIRE = `${NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`;

// KEYS[1]: the key's places; ARGV: hold ms, members (still running here).
const RENEW = `${NOW}
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1`;

export class RedisConcurrency implements ConcurrencyLimiter {
  /** the places this front end holds: Redis key -> members */
  private readonly holds = new Map<string, Set<string>>();
  private readonly timer: NodeJS.Timeout;
  private seq = 0;

  constructor(
    private readonly redis: Redis,
    private readonly log: (line: string) => void = () => {},
    private readonly holdMs = HOLD_MS,
  ) {
    this.timer = setInterval(() => void this.renew(), Math.max(1, Math.floor(holdMs / 3)));
    this.timer.unref();
  }

  async acquire(key: string, max: number): Promise<Release | null> {
    const zkey = `${PREFIX}api-inflight:${key}`;
    const member = `${process.pid}-${++this.seq}-${Math.random().toString(36).slice(2, 8)}`;
    try {
      if (Number(await this.redis.eval(ACQUIRE, 1, zkey, max, this.holdMs, member)) !== 1) return null;
    } catch (err) {
      this.log(`api: concurrency limit: Redis failed, letting the request through: ${(err as Error).message}`);
      return () => {};
    }
    const mine = this.holds.get(zkey) ?? new Set<string>();
    mine.add(member);
    this.holds.set(zkey, mine);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      mine.delete(member);
      if (mine.size === 0) this.holds.delete(zkey);
      // Not given back (Redis out of reach): the hold lapses by itself.
      this.redis.zrem(zkey, member).catch(() => {});
    };
  }

  /** Stops renewing: the places still held lapse within one hold (the front end is closing). */
  close(): void {
    clearInterval(this.timer);
  }

  private async renew(): Promise<void> {
    for (const [zkey, members] of this.holds) {
      await this.redis.eval(RENEW, 1, zkey, this.holdMs, ...members).catch((err: unknown) => {
        this.log(`api: concurrency limit: could not renew the places held: ${(err as Error).message}`);
      });
    }
  }
}
