// Per-user rate limits counted in a real redis-server, shared by every front end (two limiters with their own
// connections stand for two processes): the window slides, the warning is given once per window, and a Redis
// that is down lets requests through instead of refusing everyone.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisRateLimiter } from '../../src/cluster/rate-limit.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

let redis: TestRedis;
const client = () => redis.client();

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.cleanup();
});

describe('RedisRateLimiter', () => {
  it("counts a user's requests across front ends in a sliding window", async () => {
    const a = new RedisRateLimiter(client(), 'discord', 3, 400);
    const b = new RedisRateLimiter(client(), 'discord', 3, 400);
    expect(await a.take('u1')).toEqual({ ok: true });
    expect(await b.take('u1')).toEqual({ ok: true });
    expect(await a.take('u1')).toEqual({ ok: true });
    const over = await b.take('u1');
    expect(over.ok).toBe(false);
    expect(over.ok === false && over.retryAfterMs).toBeGreaterThan(0);
    expect(over.ok === false && over.retryAfterMs).toBeLessThanOrEqual(400);
    // another user, another scope: their own counts
    expect(await a.take('u2')).toEqual({ ok: true });
    expect(await new RedisRateLimiter(client(), 'slack', 3, 400).take('u1')).toEqual({ ok: true });
    // warned once per window, whichever front end asks
    expect(await a.shouldWarn('u1')).toBe(true);
    expect(await b.shouldWarn('u1')).toBe(false);
    // the window slides: the first requests age out
    await new Promise((r) => setTimeout(r, 450));
    expect(await b.take('u1')).toEqual({ ok: true });
    expect(await a.shouldWarn('u1')).toBe(true);
  });

  it('lets requests through while Redis is down, and counts again when it is back', async () => {
    const logs: string[] = [];
    const c = client();
    const a = new RedisRateLimiter(c, 'discord', 1, 60_000, (l) => logs.push(l));
    expect(await a.take('u3')).toEqual({ ok: true });
    expect((await a.take('u3')).ok).toBe(false);
    await redis.stop();
    expect(await a.take('u3')).toEqual({ ok: true });
    expect(logs.some((l) => l.includes('letting the request through'))).toBe(true);
    await redis.start();
    await new Promise((r) => setTimeout(r, 300));
    // the counts were in memory only (no AOF here): a fresh window
    let d = await a.take('u4');
    for (let i = 0; i < 20 && !d.ok; i++) d = await a.take('u4');
    expect(d.ok).toBe(true);
    expect((await a.take('u4')).ok).toBe(false);
  });
});
