// STORE_URL=redis://: conversations in a real redis-server (started by the test on a free loopback port), shared by
// managers that only share Redis (as processes on several machines would), kept across a Redis restart with the
// append-only file, and a clear "temporarily unavailable" answer while Redis is down, recovering by itself.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager, createStore, StoreUrlError, type AnswerEvent, type ConversationKey } from '../../src/conversation/index.js';
import { renderExamples } from '../../adapters/web/examples.js';
import { startRedis, freePort, type TestRedis } from '../helpers/redis.js';
import { Redis } from 'ioredis';
import { RedisImageCache } from '../../src/cluster/embedding-cache.js';

const DEMO = join(import.meta.dirname, '..', '..', 'models', 'demo');
let model: MiniGPT;
let redis: TestRedis;
let png: Buffer;
let prompt: string;

beforeAll(async () => {
  redis = await startRedis({ aof: true });
  model = await MiniGPT.load(DEMO, { provider: 'cpu' });
  const ex = await renderExamples({ count: 2 });
  png = ex.png(ex.list[0].id)!;
  prompt = ex.list[0].prompt;
}, 60_000);

afterAll(async () => {
  await model?.close();
  await redis?.cleanup();
});

async function ask(m: ConversationManager, key: ConversationKey, text: string, image?: Uint8Array): Promise<AnswerEvent[]> {
  const evs: AnswerEvent[] = [];
  for await (const ev of m.handle({ key, user: 'u', text, generation: { temperature: 0, maxNewTokens: 24 }, ...(image ? { image } : {}) }))
    evs.push(ev);
  return evs;
}
const finalText = (evs: AnswerEvent[]) => (evs.find((e) => e.type === 'final') as { text: string } | undefined)?.text;
const newManager = async () => new ConversationManager({ model, store: await createStore(redis.url), kvCacheBytes: 0 });

describe('STORE_URL=redis://', () => {
  it('keeps conversations where every process that names the same Redis finds them, image included', async () => {
    const key: ConversationKey = { platform: 'discord', workspace: 'g1', channel: 'c1', thread: `t${Date.now()}` };
    const a = await newManager();
    const b = await newManager();
    try {
      const first = await ask(a, key, prompt, png);
      expect(finalText(first)).toBeTruthy();
      // another "process": its own store client, its own (empty) image cache
      const seen = await b.history(key);
      expect(seen?.turns.map((t) => t.assistant)).toEqual([finalText(first)!.trim()]);
      const follow = await ask(b, key, 'what colour is it?');
      expect(follow.find((e) => e.type === 'error')).toBeUndefined();
      const timings = (follow.find((e) => e.type === 'timings') as { timings: Record<string, number> }).timings;
      expect(timings.historyTurns).toBe(1);
      expect(timings.imageCached).toBe(0); // b read the image from Redis and encoded it itself
      expect((await a.history(key))?.turns).toHaveLength(2);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('loses no conversation when Redis is killed and restarted (append-only file)', async () => {
    const key: ConversationKey = { platform: 'slack', workspace: 'T1', channel: 'C1', thread: `t${Date.now()}` };
    const a = await newManager();
    await ask(a, key, prompt, png);
    const before = await a.history(key);
    await a.close();
    await redis.kill();
    await redis.start();
    const b = await newManager();
    try {
      expect(await b.history(key)).toEqual(before);
      const follow = await ask(b, key, 'and the other one?');
      expect(finalText(follow)).toBeTruthy();
    } finally {
      await b.close();
    }
  });

  it('answers "temporarily unavailable" while Redis is down, and recovers by itself when it is back', async () => {
    const key: ConversationKey = { platform: 'web', workspace: 'local', channel: 'web', thread: `t${Date.now()}` };
    const logs: string[] = [];
    const m = new ConversationManager({ model, store: await createStore(redis.url), kvCacheBytes: 0, log: (l) => logs.push(l) });
    try {
      await ask(m, key, prompt, png);
      await redis.stop();
      const t0 = performance.now();
      const down = await ask(m, key, 'still there?');
      const err = down.find((e) => e.type === 'error') as { code: string; message: string } | undefined;
      expect(err?.code).toBe('unavailable');
      expect(err?.message).toMatch(/temporarily unavailable.*try again/);
      expect(performance.now() - t0).toBeLessThan(10_000); // an answer, not a wait for Redis
      expect(logs.some((l) => l.includes('the conversation store failed'))).toBe(true);
      await redis.start();
      // the client reconnects on its own (backoff up to 2 s)
      let back: AnswerEvent[] = [];
      for (let i = 0; i < 50; i++) {
        back = await ask(m, key, 'still there?');
        if (!back.some((e) => e.type === 'error')) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(finalText(back)).toBeTruthy();
      expect((await m.history(key))?.turns).toHaveLength(2); // the failed request stored nothing
    } finally {
      await m.close();
    }
  });

  it('shares image embeddings between managers (workers) through Redis: the second skips the encoder, same answer', async () => {
    const clients = [new Redis(redis.url), new Redis(redis.url)];
    // One package name for both: Date.now() read per manager could differ, and then nothing is shared.
    const pkg = `test-${Date.now()}`;
    const managers = clients.map(
      (c) => new ConversationManager({ model, store: undefined, kvCacheBytes: 0, sharedImages: new RedisImageCache(c, pkg) }),
    );
    try {
      const key = (t: string): ConversationKey => ({ platform: 'cli', workspace: 'w', channel: 'c', thread: t });
      const first = await ask(managers[0], key('a'), prompt, png);
      // The first manager stores the embeddings without holding up its answer: wait until they are in Redis.
      for (let i = 0; i < 100 && (await clients[1].keys(`*emb:${pkg}:*`)).length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      const second = await ask(managers[1], key('b'), prompt, png);
      const t1 = (first.find((e) => e.type === 'timings') as { timings: Record<string, number> }).timings;
      const t2 = (second.find((e) => e.type === 'timings') as { timings: Record<string, number> }).timings;
      expect(t1.imageCached).toBe(0);
      expect(t1.visionMs).toBeGreaterThan(0);
      expect(t2.imageCached).toBe(1);
      expect(t2.visionMs).toBe(0);
      expect(finalText(second)).toBe(finalText(first)); // the same embeddings, bit for bit
      // another package (another key) does not see them
      const other = new ConversationManager({ model, kvCacheBytes: 0, sharedImages: new RedisImageCache(clients[0], 'another-package') });
      const t3 = ((await ask(other, key('c'), prompt, png)).find((e) => e.type === 'timings') as { timings: Record<string, number> })
        .timings;
      expect(t3.imageCached).toBe(0);
      await other.close();
    } finally {
      for (const m of managers) await m.close();
      for (const c of clients) c.disconnect();
    }
  });

  it('refuses an unreachable Redis at start with the URL (password hidden)', async () => {
    const port = await freePort();
    const err = await createStore(`redis://:hunter2@127.0.0.1:${port}`).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err).toBeInstanceOf(StoreUrlError);
    expect(err!.message).toContain(`cannot reach the conversation store redis://:***@127.0.0.1:${port}`);
    expect(err!.message).not.toContain('hunter2');
  });
});
