// Retention (runtime.conversation_ttl_days): a conversation is forgotten its retention time after its last turn,
// its image at most twice that after the last turn of the last conversation using it; a conversation that goes on
// keeps its image however long it lasts; a SQLite file is swept of expired rows on disk (keyv would drop them only
// when read); no retention time keeps everything; a Redis store's conversations written before retention was set get
// an expiry from their last turn (or go, when older). The real tiny model, real keyv stores (memory, SQLite, a real
// redis-server on a free loopback port).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type Keyv from 'keyv';
import { ConversationManager, createStore } from '../../src/conversation/index.js';
import { ConversationStore, conversationId, UNLIMITED_SCAN_MARKER } from '../../src/conversation/store.js';
import sharp from 'sharp';
import { collect, errorOf, goldenImage, key, loadTinyModel, timingsOf, type TinyModel } from './helpers.js';
import { startRedis } from '../helpers/redis.js';

let tiny: TinyModel;
let image: Buffer;
let dir: string;

beforeAll(async () => {
  tiny = await loadTinyModel();
  image = await goldenImage();
  dir = await mkdtemp(join(tmpdir(), 'minigpt-retention-'));
});
afterAll(async () => {
  await tiny?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}
const manager = (store: Keyv | undefined, ttlMs: number | undefined, sweepIntervalMs?: number, log?: (line: string) => void) =>
  new ConversationManager({
    model: tiny.model,
    ...(log ? { log } : {}),
    ...(store ? { store } : {}),
    defaults: { maxNewTokens: 4, temperature: 0 },
    ...(ttlMs !== undefined ? { conversationTtlMs: ttlMs } : {}),
    ...(sweepIntervalMs ? { sweepIntervalMs } : {}),
  });

/** The raw rows of a SQLite store's table, as keyv's SQLite adapter keeps them (expired ones included). */
async function sqliteKeys(kv: Keyv): Promise<string[]> {
  const adapter = kv.store as { query(sql: string): Promise<{ key: string }[]> };
  return (await adapter.query('SELECT key FROM keyv')).map((r) => r.key);
}

describe('conversation retention', () => {
  it('forgets a conversation its retention time after its last turn, and its image twice that after', async () => {
    const ttl = 400;
    const m = manager(undefined, ttl);
    const repo = new ConversationStore(m.store);
    const k = key('short-lived');
    const started = Date.now();
    expect(errorOf(await collect(m.handle({ key: k, user: 'u', text: 'hi', image })))).toBeUndefined();
    const state = await m.history(k);
    expect(state?.turns).toHaveLength(1);
    const hash = state!.image.hash;
    // the conversation knows how long its image is held: twice the retention time from when it was stored
    expect(state!.image.until! - started).toBeGreaterThanOrEqual(2 * ttl);
    expect(state!.image.until! - Date.now()).toBeLessThanOrEqual(2 * ttl);
    await sleep(ttl + 100);
    expect(await m.history(k)).toBeNull();
    expect(await repo.getImage(hash)).toBeDefined();
    // a message in the forgotten thread is told why there is no image
    expect(errorOf(await collect(m.handle({ key: k, user: 'u', text: 'and now?' })))).toEqual({
      type: 'error',
      code: 'no_image',
      message:
        'There is no image in this conversation (none was sent yet, or it was forgotten: conversations are kept 0.4 seconds after their last message): attach an image to your message, then ask about it (follow-ups in the same thread keep it).',
    });
    await sleep(ttl);
    expect(await repo.getImage(hash)).toBeUndefined();
    await m.close();
  });

  it('a conversation that goes on keeps its image, well past twice the retention time', async () => {
    const ttl = 300;
    const m = manager(undefined, ttl);
    const repo = new ConversationStore(m.store);
    const k = key('long-lived');
    expect(errorOf(await collect(m.handle({ key: k, user: 'u', text: 'first', image })))).toBeUndefined();
    const first = (await m.history(k))!.image.until!;
    const hash = (await m.history(k))!.image.hash;
    const end = Date.now() + 5 * ttl;
    let turns = 1;
    let renewed = false;
    while (Date.now() < end) {
      await sleep(ttl / 2);
      expect(errorOf(await collect(m.handle({ key: k, user: 'u', text: `again ${turns}` })))).toBeUndefined();
      // the stored image (what a follow-up reads once its embeddings left the in-memory cache) is still there
      expect(await repo.getImage(hash)).toBeDefined();
      turns++;
      const state = (await m.history(k))!;
      renewed ||= state.image.until! > first;
      // the image is always held past the conversation's own end
      expect(state.image.until! - Date.now()).toBeGreaterThan(ttl);
    }
    expect(renewed).toBe(true);
    expect(turns).toBeGreaterThan(5);
    await m.close();
  });

  it('sweeps expired rows out of a SQLite file (they stay on disk until read otherwise)', async () => {
    const ttl = 200;
    const url = `sqlite://${join(dir, 'sweep.sqlite')}`;
    const store = await createStore(url);
    const m = manager(store, ttl, 150);
    const k = key('swept');
    await collect(m.handle({ key: k, user: 'u', text: 'hi', image }));
    const id = conversationId(k);
    const raw = await createStore(url);
    try {
      const keys = await sqliteKeys(raw);
      expect(keys.some((x) => x.endsWith(`conv:${id}`))).toBe(true);
      expect(keys.some((x) => /img:[0-9a-f]{64}$/.test(x))).toBe(true);
      // past twice the retention time and a sweep: the conversation, its image and the image's user list are gone
      // from the file, though nothing read them
      await sleep(2 * ttl + 400);
      expect(await sqliteKeys(raw)).toEqual([]);
    } finally {
      await raw.disconnect();
      await m.close();
    }
  });

  it('forgets conversations stored before a retention time was set (no expiry of their own) once older than it', async () => {
    const url = `sqlite://${join(dir, 'legacy.sqlite')}`;
    const before = manager(await createStore(url), 0);
    await collect(before.handle({ key: key('legacy'), user: 'u', text: 'hi', image }));
    await before.close();
    await sleep(300);
    // the bot restarted with a retention time of 250 ms: its first sweep deletes the old conversation and its image
    const after = manager(await createStore(url), 250, 100_000);
    const raw = await createStore(url);
    try {
      await until(async () => (await sqliteKeys(raw)).length === 0, 'the legacy rows swept');
      expect(await after.history(key('legacy'))).toBeNull();
    } finally {
      await raw.disconnect();
      await after.close();
    }
  });

  it('Redis: conversations stored before a retention time was set get an expiry from their last turn, or go', async () => {
    const redis = await startRedis();
    const DAY = 24 * 3600_000;
    const raw = await createStore(redis.url);
    const client = await (raw.store as { getClient(): Promise<{ sendCommand(a: string[]): Promise<unknown> }> }).getClient();
    const pttl = async (k: string) => Number(await client.sendCommand(['PTTL', `minigpt::${k}`]));
    try {
      // stored by a bot without retention: one conversation last used 3 days ago (its own image), one 2 hours ago
      const before = manager(await createStore(redis.url), 0);
      const other = await sharp({ create: { width: 40, height: 30, channels: 3, background: '#a03020' } })
        .png()
        .toBuffer();
      expect(errorOf(await collect(before.handle({ key: key('old'), user: 'u', text: 'hi', image: other })))).toBeUndefined();
      await collect(before.handle({ key: key('recent'), user: 'u', text: 'hi', image }));
      await before.close();
      const repo = new ConversationStore(raw);
      const aged = async (name: string, ms: number) => {
        const state = (await repo.getConversation(conversationId(key(name))))!;
        await raw.set(`conv:${conversationId(key(name))}`, { ...state, updatedAt: new Date(Date.now() - ms).toISOString() });
        return state.image.hash;
      };
      const oldImage = await aged('old', 3 * DAY);
      const recentImage = await aged('recent', 2 * 3600_000);
      await raw.set('conv:unrelated-with-its-own-expiry', { v: 0 }, 60_000);
      expect(await pttl(`conv:${conversationId(key('recent'))}`)).toBe(-1);
      expect(await pttl(`img:${recentImage}`)).toBe(-1);

      // restarted with a retention time of 1 day
      const logs: string[] = [];
      const after = manager(await createStore(redis.url), DAY, undefined, (l) => logs.push(l));
      await until(async () => logs.some((l) => l.includes('retention applied')), 'the expiry pass');
      expect(logs).toContain(
        'conversation store: retention applied to what was stored before it: 1 conversations older than it forgotten, 1 kept until their time, 1 images given an expiry',
      );
      expect(await after.history(key('old'))).toBeNull();
      expect(await raw.get(`img:${oldImage}`)).toBeUndefined();
      const left = await pttl(`conv:${conversationId(key('recent'))}`);
      expect(left).toBeGreaterThan(DAY - 2 * 3600_000 - 60_000);
      expect(left).toBeLessThanOrEqual(DAY - 2 * 3600_000);
      expect(await pttl(`img:${recentImage}`)).toBeGreaterThan(2 * DAY - 60_000);
      expect(await pttl(`imgref:${recentImage}`)).toBeGreaterThan(2 * DAY - 60_000);
      // a key that had its own expiry keeps it
      expect(await pttl('conv:unrelated-with-its-own-expiry')).toBeLessThanOrEqual(60_000);
      expect((await after.history(key('recent')))?.turns).toHaveLength(1);
      await after.close();

      // started again: nothing left without an expiry, nothing said
      const logs2: string[] = [];
      const again = manager(await createStore(redis.url), DAY, undefined, (l) => logs2.push(l));
      await sleep(300);
      await again.close();
      expect(logs2.filter((l) => l.includes('retention applied'))).toEqual([]);

      // the pass walks the whole store: done for this retention time, it is not done again for a day, however many
      // processes start (each worker of a cluster does); a retention time changed meanwhile, or a day later, it is
      expect(await client.sendCommand(['GET', UNLIMITED_SCAN_MARKER])).toBe(String(DAY));
      expect(Number(await client.sendCommand(['PTTL', UNLIMITED_SCAN_MARKER]))).toBeGreaterThan(DAY - 60_000);
      await aged('recent', 2 * 3600_000); // (written again without an expiry, as by a bot without retention)
      const quiet = manager(await createStore(redis.url), DAY);
      await sleep(300);
      await quiet.close();
      expect(await pttl(`conv:${conversationId(key('recent'))}`)).toBe(-1);
      const logs3: string[] = [];
      const changed = manager(await createStore(redis.url), 2 * DAY, undefined, (l) => logs3.push(l));
      await until(async () => logs3.some((l) => l.includes('retention applied')), 'the expiry pass for the new retention time');
      await changed.close();
      expect(await pttl(`conv:${conversationId(key('recent'))}`)).toBeGreaterThan(2 * DAY - 2 * 3600_000 - 60_000);
      expect(await client.sendCommand(['GET', UNLIMITED_SCAN_MARKER])).toBe(String(2 * DAY));
    } finally {
      await raw.disconnect();
      await redis.cleanup();
    }
  });

  it('drops what was derived from conversations past it: KV caches and image embeddings unused for the retention time', async () => {
    const ttl = 300;
    const logs: string[] = [];
    const m = manager(undefined, ttl, undefined, (l) => logs.push(l));
    await collect(m.handle({ key: key('derived-a'), user: 'u', text: 'what is this?', image }));
    // the embeddings are cached: another conversation about the same image skips the vision encoder
    const b = await collect(m.handle({ key: key('derived-b'), user: 'u', text: 'and this?', image }));
    expect(timingsOf(b).imageCached).toBe(1);
    // (kept just after each answer's stream ends)
    await until(async () => m.contextCacheStats.entries === 2, 'the KV caches kept');

    await until(async () => m.contextCacheStats.entries === 0, 'the KV caches dropped');
    expect(logs).toContain('conversation: dropped 2 KV caches and 1 image embeddings unused for the retention time');
    const c = await collect(m.handle({ key: key('derived-c'), user: 'u', text: 'again?', image }));
    expect(errorOf(c)).toBeUndefined();
    expect(timingsOf(c).imageCached).toBe(0);
    await m.close();
  });

  it('without a retention time keeps conversations and images', async () => {
    const m = manager(undefined, 0);
    const k = key('kept');
    await collect(m.handle({ key: k, user: 'u', text: 'hi', image }));
    const state = await m.history(k);
    expect(state?.image.until).toBeUndefined();
    await sleep(300);
    expect((await m.history(k))?.turns).toHaveLength(1);
    await m.close();
  });
});
