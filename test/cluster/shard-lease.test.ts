// Discord shards held in a real redis-server by the front end connecting them (clients with their own connections
// stand for front ends in other processes): one holder per shard, one shard count per bot, holds that lapse when
// their holder dies and are waited for, released at once on a clean stop, taken back after a Redis outage, and
// lost (said, once) when another front end took a shard while this one could not renew.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { ShardsTakenError } from '../../adapters/shared/shard-lease.js';
import { listShardHolders, RedisShardLeases, shardRanges } from '../../src/cluster/shard-lease.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

let redis: TestRedis;
const client = () => redis.client();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let n = 0;
/** a bot of its own for each test */
const newBot = () => `bot${++n}`;

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.cleanup();
});

describe('shardRanges', () => {
  it('writes ids as ranges', () => {
    expect(shardRanges([0, 1, 2, 3, 6])).toBe('0-3,6');
    expect(shardRanges([5, 1, 2, 9, 8])).toBe('1-2,5,8-9');
    expect(shardRanges([0])).toBe('0');
  });
});

describe('RedisShardLeases', () => {
  it('gives each shard to one front end: others get theirs, a second claim on one is refused naming the holder', async () => {
    const bot = newBot();
    const a = new RedisShardLeases(client(), { ttlMs: 2000, waitMs: 300, retryMs: 100 });
    const b = new RedisShardLeases(client(), { ttlMs: 2000, waitMs: 300, retryMs: 100 });
    const held = await a.claim({ bot, ids: [0, 1], count: 4 });
    const other = await b.claim({ bot, ids: [2, 3], count: 4 });
    const started = Date.now();
    const err = await b.claim({ bot, ids: [1], count: 4 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ShardsTakenError);
    expect(String((err as Error).message)).toMatch(
      new RegExp(`^Discord shard 1 of 4 is connected by another front end \\(host .+, pid ${process.pid}, shards 0-1 of 4, since \\d{4}-`),
    );
    expect((err as Error).message).toMatch(/one front end only.*DISCORD_SHARDS/);
    // it waited (the holder renews, so the hold never lapsed), then gave up
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    // another bot's shards are its own
    await (await b.claim({ bot: newBot(), ids: [0, 1], count: 4 })).release();
    // who holds what
    const holders = (await listShardHolders(client())).filter((h) => h.bot === bot);
    expect(holders.map((h) => [h.shard, h.count, h.holder.shards])).toEqual([
      [0, 4, '0-1'],
      [1, 4, '0-1'],
      [2, 4, '2-3'],
      [3, 4, '2-3'],
    ]);
    // a clean stop gives its shards up at once
    await held.release();
    const again = await b.claim({ bot, ids: [0, 1], count: 4 });
    expect((await listShardHolders(client())).filter((h) => h.bot === bot).map((h) => h.shard)).toEqual([0, 1, 2, 3]);
    await again.release();
    await other.release();
    expect((await listShardHolders(client())).filter((h) => h.bot === bot)).toEqual([]);
  });

  it('refuses another shard count for the same bot while front ends hold shards of one', async () => {
    const bot = newBot();
    const a = new RedisShardLeases(client(), { ttlMs: 2000, waitMs: 200, retryMs: 100 });
    const held = await a.claim({ bot, ids: [0], count: 2 });
    // shard 2 of 4 and shard 0 of 2 have guilds in common: a split into another count overlaps
    const err = await new RedisShardLeases(client(), { waitMs: 200, retryMs: 100 })
      .claim({ bot, ids: [2], count: 4 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ShardsTakenError);
    expect((err as Error).message).toMatch(
      /^another front end splits this Discord bot into 2 shards \(.*shards 0 of 2.*\), this one into 4: .*same DISCORD_SHARD_COUNT/,
    );
    await held.release();
    await (await a.claim({ bot, ids: [2], count: 4 })).release();
  });

  it("waits for a dead front end's holds to lapse, then takes the shards", async () => {
    const bot = newBot();
    const dying = client();
    await new RedisShardLeases(dying, { ttlMs: 600 }).claim({ bot, ids: [0], count: 1 });
    dying.disconnect(); // SIGKILL: no release, no renewal
    const logs: string[] = [];
    const started = Date.now();
    const lease = await new RedisShardLeases(client(), { ttlMs: 600, waitMs: 3000, retryMs: 100, log: (l) => logs.push(l) }).claim({
      bot,
      ids: [0],
      count: 1,
    });
    const waited = Date.now() - started;
    expect(waited).toBeGreaterThanOrEqual(300);
    expect(waited).toBeLessThan(2000);
    expect(logs).toHaveLength(1);
    expect(logs[0]).toMatch(/^discord: shard 0 is held by another front end \(host .*\) for 1 s more unless it renews; waiting up to 3 s$/);
    await lease.release();
  });

  it('keeps its shards while it renews, well past the hold time', async () => {
    const bot = newBot();
    const lease = await new RedisShardLeases(client(), { ttlMs: 300 }).claim({ bot, ids: [0, 1], count: 2 });
    await sleep(1000);
    const err = await new RedisShardLeases(client(), { ttlMs: 300, waitMs: 500, retryMs: 100 })
      .claim({ bot, ids: [1], count: 2 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ShardsTakenError);
    await lease.release();
  });

  it('takes its shards back after Redis was down; loses them, said once, if another front end took one meanwhile', async () => {
    const bot = newBot();
    const logs: string[] = [];
    const conn = client();
    const lease = await new RedisShardLeases(conn, { ttlMs: 400, log: (l) => logs.push(l) }).claim({ bot, ids: [0, 1], count: 2 });
    let lostReason: string | undefined;
    void lease.lost.then((r) => (lostReason = r));
    // Redis restarted (no AOF here: every hold gone) and down for longer than a hold lasts
    await redis.stop();
    await sleep(700);
    await redis.start();
    await sleep(800);
    expect(logs.filter((l) => l.includes('could not renew'))).toHaveLength(1);
    expect(logs.some((l) => l.includes('renewed again'))).toBe(true);
    expect(lostReason).toBeUndefined();
    expect((await listShardHolders(client())).filter((h) => h.bot === bot).map((h) => h.shard)).toEqual([0, 1]);

    // now this front end alone is cut off from Redis for longer than its hold, and another takes shard 1
    conn.disconnect();
    const other = await new RedisShardLeases(client(), { ttlMs: 400, waitMs: 2000, retryMs: 100 }).claim({ bot, ids: [1], count: 2 });
    await conn.connect();
    await sleep(600);
    expect(lostReason).toMatch(
      /^another front end \(host .*, shards 1 of 2, .*\) took Discord shard 1 while this one could not renew its hold in Redis: disconnecting from Discord, or both would answer$/,
    );
    // a lost lease renews no more and its release leaves the other's hold alone
    await lease.release();
    await sleep(500);
    expect((await listShardHolders(client())).filter((h) => h.bot === bot).map((h) => [h.shard, h.holder.shards])).toEqual([[1, '1']]);
    await other.release();
  });

  it('says so when Redis cannot be reached at all', async () => {
    const dead = new Redis(`redis://127.0.0.1:${redis.port}`, { maxRetriesPerRequest: 0, lazyConnect: true, retryStrategy: () => null });
    dead.on('error', () => {});
    await redis.stop();
    try {
      const err = await new RedisShardLeases(dead).claim({ bot: newBot(), ids: [0], count: 1 }).catch((e: unknown) => e);
      expect(err).not.toBeInstanceOf(ShardsTakenError);
      expect((err as Error).message).toMatch(/^could not hold the Discord shards in Redis \(REDIS_URL\): /);
    } finally {
      dead.disconnect();
      await redis.start();
    }
  });

  it('refuses shard ids outside the count', async () => {
    const leases = new RedisShardLeases(client());
    await expect(leases.claim({ bot: newBot(), ids: [2], count: 2 })).rejects.toThrow(/no valid shards to claim: \[2\] of 2/);
    await expect(leases.claim({ bot: newBot(), ids: [], count: 2 })).rejects.toThrow(/no valid shards/);
  });
});
