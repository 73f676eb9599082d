// Retention (runtime.conversation_ttl_days): a conversation is forgotten its retention time after its last turn,
// its image at most twice that after the last turn of the last conversation using it; a conversation that goes on
// keeps its image however long it lasts; a SQLite file is swept of expired rows on disk (keyv would drop them only
// when read); no retention time keeps everything. The real tiny model, real keyv stores (memory, SQLite).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type Keyv from 'keyv';
import { ConversationManager, createStore } from '../../src/conversation/index.js';
import { ConversationStore, conversationId } from '../../src/conversation/store.js';
import { collect, errorOf, goldenImage, key, loadTinyModel, type TinyModel } from './helpers.js';

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
const manager = (store: Keyv | undefined, ttlMs: number | undefined, sweepIntervalMs?: number) =>
  new ConversationManager({
    model: tiny.model,
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
