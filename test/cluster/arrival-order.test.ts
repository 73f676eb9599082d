// The order of a conversation's events between front ends (src/cluster/arrival-order.ts) on a real redis-server: a
// turn waits for other front ends' turns at earlier places until they are released, not for later ones nor for its
// own front end's (its ArrivalOrder orders those), and not past the waited-for turn's deadline (a front end that
// died); ArrivalOrder combines it with the local order.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { RedisArrivalOrder } from '../../src/cluster/arrival-order.js';
import { ArrivalOrder } from '../../adapters/shared/arrival-order.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

let redis: TestRedis;
let client: Redis;
const logs: string[] = [];

beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url);
});

afterAll(async () => {
  client?.disconnect();
  await redis?.cleanup();
});

const frontEnd = (owner: string) => new RedisArrivalOrder(client, { owner, log: (l) => logs.push(l) });
/** Whether `p` settles within `ms`. */
const settles = (p: Promise<unknown>, ms: number) =>
  Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

describe('the order of a conversation between front ends', () => {
  it("waits for another front end's earlier events until they are released; not for its own front end's", async () => {
    const one = frontEnd('one');
    const two = frontEnd('two');
    const key = 'slack:T:C:1';
    const mine = one.take(key, '1700000010.000050', 30_000);
    const image = one.take(key, '1700000010.000100', 30_000);
    const followUp = two.take(key, '1700000010.000200', 30_000);
    const later = one.take(key, '1700000010.000300', 30_000);
    // an earlier turn of its own front end is not waited for here (its ArrivalOrder orders those)
    expect(await settles(image.ready(), 300)).toBe(true);
    expect(await settles(followUp.ready(), 300)).toBe(false);
    // another conversation is not held up
    expect(await settles(two.take('slack:T:C:2', '1700000010.000250', 30_000).ready(), 300)).toBe(true);
    mine.release();
    expect(await settles(followUp.ready(), 300)).toBe(false);
    image.release();
    expect(await settles(followUp.ready(), 1000)).toBe(true);
    // the first front end's later event waits for the other's follow-up before it
    expect(await settles(later.ready(), 300)).toBe(false);
    followUp.release();
    expect(await settles(later.ready(), 1000)).toBe(true);
    later.release();
    await new Promise((r) => setTimeout(r, 50));
    expect(await client.zcard(`minigpt:arrivals:${key}`)).toBe(0);
  });

  it("waits for a front end that died with a turn only until that turn's deadline", async () => {
    const gone = frontEnd('gone');
    gone.take('slack:T:C:3', '1700000020.000001', 400); // never released
    const live = frontEnd('live');
    const started = Date.now();
    await live.take('slack:T:C:3', '1700000020.000002', 30_000).ready();
    const waited = Date.now() - started;
    expect(waited).toBeGreaterThanOrEqual(300);
    expect(waited).toBeLessThan(2000);
  });

  it('ArrivalOrder: a turn waits for its own process, then for the other front ends', async () => {
    const a = new ArrivalOrder(30_000, () => {}, frontEnd('a'));
    const b = new ArrivalOrder(30_000, () => {}, frontEnd('b'));
    const first = a.take('slack:T:C:4', '1700000030.000001');
    const second = b.take('slack:T:C:4', '1700000030.000002');
    const third = a.take('slack:T:C:4', '1700000030.000003');
    await first.ready();
    const order: string[] = [];
    void second.ready().then(() => order.push('second'));
    void third.ready().then(() => order.push('third'));
    await new Promise((r) => setTimeout(r, 200));
    expect(order).toEqual([]);
    first.release();
    await new Promise((r) => setTimeout(r, 200));
    // the third waits for the second (earlier on the platform, on the other front end) before going on
    expect(order).toEqual(['second']);
    second.release();
    await third.ready();
    expect(order).toEqual(['second', 'third']);
    third.release();
  });
});
