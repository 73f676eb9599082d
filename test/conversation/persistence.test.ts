// Conversations in a SQLite file (STORE_URL=sqlite://...) survive a manager restart.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Keyv from 'keyv';
import sharp from 'sharp';
import { ConversationManager, createStore, neutralizeMarkers, StoreUrlError } from '../../src/conversation/index.js';
import type { MiniGPT } from '../../src/inference/model.js';
import { collect, errorOf, finalOf, goldenImage, key, loadTinyModel, storeKeys, timingsOf, type TinyModel } from './helpers.js';

let tiny: TinyModel;
let model: MiniGPT;
let image: Buffer;
let dir: string;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

beforeAll(async () => {
  tiny = await loadTinyModel();
  model = tiny.model;
  image = await goldenImage();
  dir = await mkdtemp(join(tmpdir(), 'minigpt-store-'));
});

afterAll(async () => {
  await tiny?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

afterEach(() => {
  vi.restoreAllMocks();
});

describe('conversation store on SQLite', () => {
  it('keeps a conversation across a manager restart: the follow-up uses the old image and history', async () => {
    const url = `sqlite://${join(dir, 'nested', 'conversations.sqlite')}`;
    const k = { platform: 'discord' as const, workspace: 'guild 1', channel: 'chan/2', thread: 'thread:3' };

    const m1 = new ConversationManager({ model, store: await createStore(url), defaults: { maxNewTokens: 6 } });
    const e1 = await collect(m1.handle({ key: k, user: 'alice', text: 'what is this?', image }));
    const e2 = await collect(m1.handle({ key: k, user: 'bob', text: 'and then?' }));
    expect(errorOf(e1)).toBeUndefined();
    expect(errorOf(e2)).toBeUndefined();
    await m1.close();
    expect((await stat(join(dir, 'nested', 'conversations.sqlite'))).size).toBeGreaterThan(0);

    const store2 = await createStore(url);
    const m2 = new ConversationManager({ model, store: store2, defaults: { maxNewTokens: 6 } });
    const spy = vi.spyOn(model, 'answer');
    const encode = vi.spyOn(model, 'encodeImage');
    const e3 = await collect(m2.handle({ key: k, user: 'alice', text: 'one more thing' }));
    expect(errorOf(e3)).toBeUndefined();
    const a1 = neutralizeMarkers(finalOf(e1).text);
    const a2 = neutralizeMarkers(finalOf(e2).text);
    expect(spy.mock.calls[0][0]).toBe(
      `<s>[INST] <Img><ImageHere></Img> what is this? [/INST]${a1}<s>[INST] and then? [/INST]${a2}<s>[INST] one more thing [/INST]`,
    );
    // the new process has no cached embeddings: the stored image was encoded again
    expect(encode).toHaveBeenCalledTimes(1);
    expect(timingsOf(e3).imageCached).toBe(0);
    const h = (await m2.history(k))!;
    expect(h.key).toEqual(k);
    expect(h.image.hash).toBe(sha(image));
    expect(h.turns.map((t) => [t.by, t.user])).toEqual([
      ['alice', 'what is this?'],
      ['bob', 'and then?'],
      ['alice', 'one more thing'],
    ]);
    expect(await storeKeys(store2)).toEqual([`conv:discord:guild%201:chan%2F2:thread%3A3`, `img:${sha(image)}`, `imgref:${sha(image)}`]);
    await m2.close();
  });

  it('stores an image shared by several conversations once', async () => {
    const url = `sqlite://${join(dir, 'shared.sqlite')}`;
    const store = await createStore(url);
    const m = new ConversationManager({ model, store, defaults: { maxNewTokens: 4 } });
    for (const t of ['t1', 't2', 't3']) {
      expect(errorOf(await collect(m.handle({ key: key(t), user: 'u', text: 'hi', image })))).toBeUndefined();
      expect(errorOf(await collect(m.handle({ key: key(t), user: 'u', text: 'more' })))).toBeUndefined();
    }
    const keys = await storeKeys(store);
    expect(keys.filter((x) => x.startsWith('img:'))).toHaveLength(1);
    expect(keys.filter((x) => x.startsWith('conv:'))).toHaveLength(3);
    await m.reset(key('t1'));
    await m.close();

    // reopened: what was stored is there, and the last reset removes the image
    const store2 = await createStore(url);
    const m2 = new ConversationManager({ model, store: store2 });
    expect(await m2.history(key('t1'))).toBeNull();
    expect((await m2.history(key('t2')))!.turns).toHaveLength(2);
    await m2.reset(key('t2'));
    await m2.reset(key('t3'));
    expect(await storeKeys(store2)).toEqual([]);
    await m2.close();
  });

  it('createStore: unset is memory; unsupported URLs and unusable paths fail at startup with a clear error', async () => {
    const mem = await createStore(undefined);
    await mem.set('x', 1);
    expect(await mem.get('x')).toBe(1);
    expect((await createStore('')).store).toBeInstanceOf(Map);
    await expect(createStore('redis://localhost')).rejects.toBeInstanceOf(StoreUrlError);
    await expect(createStore('sqlite://')).rejects.toThrow(/file path/);
    const file = join(dir, 'a-file');
    await writeFile(file, 'x');
    await expect(createStore(`sqlite://${file}/sub/db.sqlite`)).rejects.toThrow();
    // a folder where the file should be: SQLite cannot open it
    await expect(createStore(`sqlite://${dir}`)).rejects.toThrow(/cannot open the conversation store/);
    const mem2 = await createStore('sqlite://:memory:');
    await mem2.set('k', { a: [1] });
    expect(await mem2.get('k')).toEqual({ a: [1] });
    await mem2.disconnect();
  });

  it('a store failing mid-turn: no image stored means no turn stored (an error, and the thread goes on after); a replaced image it cannot release costs storage, not the answer', async () => {
    // a Keyv store whose writes of chosen keys fail while `failing` matches them
    let failing: RegExp | null = null;
    class FlakyMap<K, V> extends Map<K, V> {
      override set(k: K, v: V): this {
        if (failing?.test(String(k))) throw new Error('disk full');
        return super.set(k, v);
      }
      override delete(k: K): boolean {
        if (failing?.test(String(k))) throw new Error('disk full');
        return super.delete(k);
      }
    }
    const logs: string[] = [];
    const m = new ConversationManager({
      model,
      store: new Keyv({ store: new FlakyMap(), throwOnErrors: true }),
      defaults: { maxNewTokens: 6 },
      log: (l) => logs.push(l),
    });
    const k = { platform: 'discord' as const, workspace: 'g', channel: 'c', thread: 'flaky' };
    try {
      failing = /img:/;
      const e1 = await collect(m.handle({ key: k, user: 'alice', text: 'what is this?', image }));
      expect(errorOf(e1)).toBeDefined();
      expect(e1.some((e) => e.type === 'final')).toBe(false);
      expect(await m.history(k)).toBeNull();

      failing = null;
      const e2 = await collect(m.handle({ key: k, user: 'alice', text: 'what is this?', image }));
      expect(errorOf(e2)).toBeUndefined();
      expect((await m.history(k))?.turns).toHaveLength(1);

      // a new image replaces the first: releasing the first fails, the answer and the turn stand
      const other = await sharp(image).flip().png().toBuffer();
      failing = new RegExp(`img(ref)?:${sha(image)}`);
      const e3 = await collect(m.handle({ key: k, user: 'alice', text: 'and this one?', image: other }));
      expect(errorOf(e3)).toBeUndefined();
      expect(finalOf(e3).text.length).toBeGreaterThan(0);
      const h = (await m.history(k))!;
      expect(h.turns).toHaveLength(1);
      expect(h.image.hash).toBe(sha(other));
      expect(logs.some((l) => l.includes('could not release the replaced image') && l.includes('disk full'))).toBe(true);
    } finally {
      await m.close();
    }
  });
});
