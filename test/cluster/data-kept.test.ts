// A forget across Redis takes what the workers derived from the conversations with it: a front end's forgetWorkspace
// (the app removed, a channel deleted), a reset job and `minigpt forget` reach every worker (pub/sub), which drops
// the KV caches it keeps for follow-ups and the embeddings of the images that were deleted, in its memory and in the
// shared embedding cache. And what stays in Redis after a request (docs/data.md): the queue's history of jobs done
// with keeps no image and no words of the user (they would outlive a forget and the retention time), and a
// conversation's order counters expire. A real redis-server on a free loopback port, the real cluster
// worker and front end in this process, the demo model.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { type ConversationManager, createStore, type ConversationKey } from '../../src/conversation/index.js';
import { RemoteConversations } from '../../src/cluster/frontend.js';
import { RedisImageCache } from '../../src/cluster/embedding-cache.js';
import { keys, ORDER_TTL_MS, QUEUE_NAME, type JobData } from '../../src/cluster/protocol.js';
import { runForget } from '../../src/cli/forget.js';
import { startDemoWorker, type DemoWorker } from './helpers.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { squarePng } from '../slack/helpers.js';

const OLD_COUNTER = 'minigpt:seq:slack:T0OLD:C1:1';

let redis: TestRedis;
let client: Redis;
let cluster: DemoWorker;
let manager: ConversationManager;
let frontend: RemoteConversations;

beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url);
  // an order counter left by a front end of an earlier version, without an expiry
  await client.set(OLD_COUNTER, '4');
  cluster = await startDemoWorker(redis.url, {
    forcedAnswer: 'a square',
    manager: { sharedImages: new RedisImageCache(client, 'demo'), defaults: { maxNewTokens: 8, temperature: 0 } },
  });
  manager = cluster.manager;
  frontend = new RemoteConversations({ redisUrl: redis.url, store: await createStore(redis.url) });
}, 60_000);

afterAll(async () => {
  await frontend?.close();
  await cluster?.close();
  client?.disconnect();
  await redis?.cleanup();
});

const slack = (team: string, thread: string): ConversationKey => ({ platform: 'slack', workspace: team, channel: 'C1', thread });

/** Asks through the front end about `image` (a new conversation); the worker then holds its KV cache. */
async function asked(key: ConversationKey, image: Buffer): Promise<void> {
  for await (const ev of frontend.handle({ key, user: 'U1', text: 'what is this?', image }))
    if (ev.type === 'error') throw new Error(ev.message);
}

async function until(cond: () => Promise<boolean> | boolean, what: string): Promise<void> {
  for (const end = Date.now() + 10_000; !(await cond()); ) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const embeddingKeys = () => client.keys('minigpt:emb:*');

describe('what a cluster keeps in Redis, and what a forget takes', () => {
  it("a front end's forgetWorkspace: the worker drops the KV caches and the deleted images' embeddings", async () => {
    await asked(slack('T1', '1'), await squarePng(50, 40));
    await asked(slack('T1', '2'), await squarePng(52, 40));
    expect(manager.contextCacheStats.entries).toBe(2);
    expect(await embeddingKeys()).toHaveLength(2);
    expect(await frontend.forgetWorkspace('slack', 'T1')).toBe(2);
    await until(() => manager.contextCacheStats.entries === 0, 'the KV caches dropped');
    await until(async () => (await embeddingKeys()).length === 0, 'the embeddings deleted');
  });

  it('a reset job and `minigpt forget` too (the worker that ran the reset does not drop its caches twice)', async () => {
    const key = slack('T2', '1');
    await asked(key, await squarePng(54, 40));
    const drops = vi.spyOn(manager, 'dropCaches');
    expect(await frontend.reset(key, { by: 'U1' })).toBe('forgotten');
    expect(manager.contextCacheStats.entries).toBe(0);
    expect(await embeddingKeys()).toHaveLength(0);

    await asked(slack('T3', '1'), await squarePng(56, 40));
    expect(manager.contextCacheStats.entries).toBe(1);
    const out: string[] = [];
    expect(await runForget({ workspace: 'slack:T3', store: redis.url }, {}, (l) => out.push(l))).toBe(1);
    await until(() => manager.contextCacheStats.entries === 0, 'the KV cache dropped');
    await until(async () => (await embeddingKeys()).length === 0, 'the embeddings deleted');
    // the reset's own drop and the CLI's message (pub/sub keeps their order): not the worker's own message of its reset
    expect(drops.mock.calls.map((c) => c[0].conversations)).toEqual([['slack:T2:C1:1'], ['slack:T3:C1:1']]);
    drops.mockRestore();
  });

  it("the queue's list of finished jobs keeps no image and no words of the user", async () => {
    const png = await squarePng(58, 40);
    await asked(slack('T4', '1'), png);
    const queue = new Queue<JobData>(QUEUE_NAME, { connection: { url: redis.url } as never });
    try {
      const done = (await queue.getCompleted()).filter((j) => j.data.kind === 'answer' && j.data.request.key.workspace === 'T4');
      expect(done).toHaveLength(1);
      const data = done[0]!.data as Extract<JobData, { kind: 'answer' }>;
      expect(data.request).toEqual({ key: slack('T4', '1'), user: 'U1', text: '', requestId: expect.any(String) });
      // nor anywhere else in Redis but the conversation store's image
      const holders: string[] = [];
      const b64 = png.toString('base64').slice(0, 64);
      for (const k of await client.keys('*')) {
        const type = await client.type(k);
        const text = type === 'string' ? await client.get(k) : type === 'hash' ? JSON.stringify(await client.hgetall(k)) : '';
        if (text?.includes(b64)) holders.push(k);
      }
      expect(holders).toEqual([expect.stringMatching(/img:/)]);
    } finally {
      await queue.close();
    }
  });

  it("a conversation's order counters expire after its last request; a count started again starts the done count again", async () => {
    const key = slack('T5', '1');
    const [seq, done] = ['minigpt:seq:slack:T5:C1:1', 'minigpt:done:slack:T5:C1:1'];
    await asked(key, await squarePng(60, 40));
    for (const k of [seq, done]) {
      const ttl = await client.pttl(k);
      expect(ttl).toBeGreaterThan(ORDER_TTL_MS - 60_000);
      expect(ttl).toBeLessThanOrEqual(ORDER_TTL_MS);
    }
    // the number expired (a week without a request) while an old count of done requests stayed
    await client.del(seq);
    await client.set(done, '5');
    for await (const ev of frontend.handle({ key, user: 'U1', text: 'and now?' })) if (ev.type === 'error') throw new Error(ev.message);
    expect([await client.get(seq), await client.get(done)]).toEqual(['1', '1']);
    // a counter without an expiry (an earlier version's) got one when the worker started
    const ttl = await client.pttl(OLD_COUNTER);
    expect(ttl).toBeGreaterThan(ORDER_TTL_MS - 60_000);
    expect(await client.get(OLD_COUNTER)).toBe('4');
    // that walk of the keyspace is done once a day at most, however many workers start
    expect(await client.pttl(keys.orderScan)).toBeGreaterThan(24 * 3600_000 - 60_000);
    const later = 'minigpt:seq:slack:T0OLD:C1:2';
    await client.set(later, '2');
    const second = await startDemoWorker(redis.url, { manager: { defaults: { maxNewTokens: 8 } } });
    await new Promise((r) => setTimeout(r, 500));
    await second.close();
    expect(await client.pttl(later)).toBe(-1);
    await client.del(keys.orderScan);
    const third = await startDemoWorker(redis.url, { manager: { defaults: { maxNewTokens: 8 } } });
    await vi.waitFor(async () => expect(await client.pttl(later)).toBeGreaterThan(0), { timeout: 5000 });
    await third.close();
  }, 30_000);
});
