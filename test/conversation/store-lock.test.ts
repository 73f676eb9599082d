// Images' user lists on a Redis store shared by several processes (src/conversation/store-lock.ts): two
// ConversationStores, each on its own Redis connection as two front ends would be, attach and detach one image
// at once and lose no user; the image goes with its last user. A lock held elsewhere for too long gives the
// store's "unavailable" error and writes nothing; a lock that expired under a slow holder is not released by it
// over the next holder. A real redis-server on a free loopback port.
import { describe, expect, it } from 'vitest';
import {
  ConversationStore,
  createStore,
  STORE_NAMESPACE,
  sha256Hex,
  StoreUnavailableError,
  type StoredImage,
} from '../../src/conversation/store.js';
import { DEFAULT_LOCK_TTL_MS, RedisStoreLock, storeLockFor } from '../../src/conversation/store-lock.js';
import { useRedis } from '../helpers/redis.js';

const r = useRedis();

function image(seed: number): StoredImage {
  const data = Uint8Array.from({ length: 64 }, (_, i) => (i * 31 + seed) & 255);
  return { hash: sha256Hex(data), width: 8, height: 8, bytes: data.byteLength, data };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("an image's users on a Redis store shared by two processes", () => {
  it('concurrent attaches and detaches from two stores lose no user; the image goes with the last one', async () => {
    const kvs = [await createStore(r.redis.url), await createStore(r.redis.url)];
    const stores = kvs.map((kv) => new ConversationStore(kv));
    const img = image(1);
    const users = async () => ((await kvs[0].get(`imgref:${img.hash}`)) as string[] | undefined) ?? [];
    try {
      const conv = (i: number) => `discord:g:c${i}:t`;
      // 24 conversations start with the same image at once, half through each front end
      await Promise.all(Array.from({ length: 24 }, (_, i) => stores[i % 2].attachImage(img, conv(i))));
      expect((await users()).sort()).toEqual(Array.from({ length: 24 }, (_, i) => conv(i)).sort());
      // 20 of them end while 8 more start, interleaved over both
      await Promise.all([
        ...Array.from({ length: 20 }, (_, i) => stores[(i + 1) % 2].detachImage(img.hash, conv(i))),
        ...Array.from({ length: 8 }, (_, i) => stores[i % 2].attachImage(img, conv(24 + i))),
      ]);
      expect((await users()).sort()).toEqual(Array.from({ length: 12 }, (_, i) => conv(20 + i)).sort());
      expect((await stores[1].getImage(img.hash))?.data).toEqual(img.data);
      // the rest end at once: the list and the image are gone, and no lock is left behind
      await Promise.all(Array.from({ length: 12 }, (_, i) => stores[i % 2].detachImage(img.hash, conv(20 + i))));
      expect(await kvs[1].get(`imgref:${img.hash}`)).toBeUndefined();
      expect(await stores[0].getImage(img.hash)).toBeUndefined();
      expect(await r.raw.keys(`${STORE_NAMESPACE}:lock:*`)).toEqual([]);
    } finally {
      for (const kv of kvs) await kv.disconnect();
    }
  }, 30_000);

  it('a lock held elsewhere past the wait: "unavailable", nothing written; free again, the attach goes through', async () => {
    const kv = await createStore(r.redis.url);
    const store = new ConversationStore(kv, { lock: { waitMs: 300 } });
    const img = image(2);
    const lockKey = `${STORE_NAMESPACE}:lock:imgref:${img.hash}`;
    try {
      await r.raw.set(lockKey, 'another-process', 'PX', 60_000);
      const t0 = Date.now();
      await expect(store.attachImage(img, 'slack:T:C:1')).rejects.toThrow(StoreUnavailableError);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
      expect(await kv.get(`imgref:${img.hash}`)).toBeUndefined();
      expect(await store.getImage(img.hash)).toBeUndefined();
      await r.raw.del(lockKey);
      await store.attachImage(img, 'slack:T:C:1');
      expect(await kv.get(`imgref:${img.hash}`)).toEqual(['slack:T:C:1']);
    } finally {
      await kv.disconnect();
    }
  });

  it('a lock left by a process that died holding it: the next writer waits for it to expire, then goes through', async () => {
    const kv = await createStore(r.redis.url);
    const store = new ConversationStore(kv);
    const img = image(3);
    try {
      // as a worker killed while storing an answer leaves it: taken, never released, expiring on its own
      await r.raw.set(`${STORE_NAMESPACE}:lock:imgref:${img.hash}`, 'dead-process', 'PX', DEFAULT_LOCK_TTL_MS);
      const t0 = Date.now();
      await store.attachImage(img, 'web:w:c:t');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(DEFAULT_LOCK_TTL_MS - 200);
      expect(await kv.get(`imgref:${img.hash}`)).toEqual(['web:w:c:t']);
      expect((await store.getImage(img.hash))?.data).toEqual(img.data);
    } finally {
      await kv.disconnect();
    }
  }, 20_000);

  it('a holder whose lock expired does not release the next holder’s', async () => {
    const kv = await createStore(r.redis.url);
    // the slow holder's lock lives 100 ms; the next holder's 10 s
    const lock = storeLockFor(kv, { ttlMs: 100 })!;
    const nextLock = storeLockFor(kv, { ttlMs: 10_000 })!;
    expect(lock).toBeInstanceOf(RedisStoreLock);
    const key = `${STORE_NAMESPACE}:lock:test-expiry`;
    try {
      const order: string[] = [];
      const slow = lock.run(key, async () => {
        order.push('slow in');
        await sleep(400); // past its 100 ms
        order.push('slow out');
      });
      await sleep(200);
      const next = nextLock.run(key, async () => {
        order.push('next in');
        await sleep(400);
        // the slow holder has finished and released by now: the lock must still be this holder's
        expect(await r.raw.exists(key)).toBe(1);
        order.push('next out');
      });
      await Promise.all([slow, next]);
      expect(order).toEqual(['slow in', 'next in', 'slow out', 'next out']);
      expect(await r.raw.exists(key)).toBe(0);
    } finally {
      await kv.disconnect();
    }
  });

  it("the lock lives its own TTL whatever the retention time (a dead holder's lock is not kept for days; 0 works)", async () => {
    // (the retention time once reached the lock as its TTL: 30 days kept a dead holder's lock that long, 0 was refused)
    const monitor = await r.raw.monitor();
    const sets: string[][] = [];
    monitor.on('monitor', (_time: string, args: string[]) => {
      if (args[0]?.toLowerCase() === 'set' && String(args[1]).includes(':lock:')) sets.push(args);
    });
    const kv = await createStore(r.redis.url);
    try {
      for (const [i, ttlMs] of [0, 30 * 24 * 3600_000].entries()) {
        const store = new ConversationStore(kv, { ttlMs });
        await store.attachImage(image(10 + i), `slack:T:C:${i}`);
      }
      await sleep(100);
      expect(sets).toHaveLength(2);
      for (const args of sets) expect(args.slice(3).map((a) => String(a).toUpperCase())).toEqual(['NX', 'PX', String(DEFAULT_LOCK_TTL_MS)]);
    } finally {
      monitor.disconnect();
      await kv.disconnect();
    }
  });

  it('stores used by one process (memory, SQLite) take no Redis lock', async () => {
    const kv = await createStore(undefined);
    expect(storeLockFor(kv)).toBeUndefined();
  });
});
