// What the adapters keep in the conversation store that several front ends share (a real redis-server on a free
// loopback port; two connections stand for two front ends), and in one process's memory store.
// - The answers kept for each answered message (adapters/shared/deleted.ts, AnswerRecords): an entry is read and
//   written back alone, so answers kept at once for one message (two front ends; a Slack message and its edit) are
//   all kept and numbered apart, a drop leaves what was added after its entry was read, and a deleted image file is
//   taken by one deletion only.
// - Slack's seen-marks (adapters/slack/dedupe.ts): a message's two events (app_mention and message) reaching two front
//   ends at once are claimed by one.
// - The answers being regenerated (adapters/shared/regenerate.ts, InFlight): two presses of one button reaching two
//   front ends at once are taken by one; the other is told at once.
import { describe, expect, it } from 'vitest';
import Keyv from 'keyv';
import { AnswerRecords, type Posted } from '../../adapters/shared/deleted.js';
import { SeenSet } from '../../adapters/slack/dedupe.js';
import { InFlight } from '../../adapters/shared/regenerate.js';
import { createStore, STORE_NAMESPACE } from '../../src/conversation/store.js';
import type { ConversationKey } from '../../src/conversation/index.js';
import { useRedis } from '../helpers/redis.js';

const r = useRedis();

const key: ConversationKey = { platform: 'slack', workspace: 'T1', channel: 'C1', thread: '100.1' };
const posted = (i: number): Posted[] => [{ channel: 'C1', id: `200.${i}` }];
const noLog = () => {};

describe('AnswerRecords', () => {
  it('answers kept at once for one message in one process are all kept, each its own answer', async () => {
    const records = new AnswerRecords(new Keyv(), 'slack:answers:', noLog);
    await Promise.all(Array.from({ length: 12 }, (_, i) => records.add('slack-100.1', key, posted(i))));
    const entry = await records.get('slack-100.1');
    expect(entry?.posted.map((p) => p.id).sort()).toEqual(Array.from({ length: 12 }, (_, i) => `200.${i}`).sort());
    expect(new Set(entry?.posted.map((p) => p.answer)).size).toBe(12);
    for (let i = 0; i < 12; i++) expect(await records.questionOf(`200.${i}`)).toBe('slack-100.1');
  });

  it('two front ends on one Redis keeping answers for one message at once lose none; no lock is left', async () => {
    const kvs = [await createStore(r.redis.url), await createStore(r.redis.url)];
    const fronts = kvs.map((kv) => new AnswerRecords(kv, 'slack:answers:', noLog));
    try {
      await Promise.all(Array.from({ length: 16 }, (_, i) => fronts[i % 2].add('slack-100.2', key, posted(i))));
      const entry = await fronts[1].get('slack-100.2');
      expect(entry?.key).toEqual(key);
      expect(entry?.posted.map((p) => p.id).sort()).toEqual(Array.from({ length: 16 }, (_, i) => `200.${i}`).sort());
      expect(new Set(entry?.posted.map((p) => p.answer)).size).toBe(16);
      expect(await r.raw.keys(`${STORE_NAMESPACE}:lock:*`)).toEqual([]);
    } finally {
      for (const kv of kvs) await kv.disconnect();
    }
  }, 30_000);

  it('a drop forgets the messages it was given; an answer kept since its entry was read stays', async () => {
    const records = new AnswerRecords(new Keyv(), 'discord:answers:', noLog);
    await records.answered({ asked: 'discord-1', imageFrom: 'discord-0' }, key, posted(1));
    const read = await records.get('discord-1');
    // another front end answers the same message (an edit) between the read and the drop
    await records.add('discord-1', key, posted(2));
    await records.drop('discord-1', read?.posted ?? []);
    expect((await records.get('discord-1'))?.posted.map((p) => [p.id, p.answer])).toEqual([['200.2', 1]]);
    expect(await records.questionOf('200.1')).toBeUndefined();
    expect(await records.questionOf('200.2')).toBe('discord-1');
    // kept under the image's message too
    expect((await records.get('discord-0'))?.posted.map((p) => p.id)).toEqual(['200.1']);
    await records.drop('discord-1', [{ channel: 'C1', id: '200.2' }]);
    expect(await records.get('discord-1')).toBeUndefined();
  });

  it('an image file deleted is taken by one of two front ends at once', async () => {
    const kvs = [await createStore(r.redis.url), await createStore(r.redis.url)];
    const fronts = kvs.map((kv) => new AnswerRecords(kv, 'slack:answers:', noLog));
    try {
      await fronts[0].imageFile('F1', 'slack-100.3', key);
      const taken = await Promise.all(fronts.map((f) => f.takeImageFile('F1')));
      expect(taken.filter((t) => t !== undefined)).toEqual([{ asked: 'slack-100.3', key }]);
      expect(await fronts[1].imageFileOf('slack-100.3')).toBeUndefined();
    } finally {
      for (const kv of kvs) await kv.disconnect();
    }
  }, 30_000);
});

describe("Slack's seen-marks (SeenSet)", () => {
  it("a message's events reaching two front ends at once: one claims it", async () => {
    const kvs = [await createStore(r.redis.url), await createStore(r.redis.url)];
    const fronts = kvs.map((kv) => new SeenSet(kv, 'slack:message:', 60_000, noLog));
    try {
      for (let m = 0; m < 10; m++) {
        const id = `T1:C1:1700000000.00010${m}`;
        const claims = await Promise.all([fronts[0].claim(id), fronts[1].claim(id), fronts[1].claim(id)]);
        expect(claims.filter(Boolean)).toHaveLength(1);
        expect(await fronts[m % 2].has(id)).toBe(true);
      }
      expect(await r.raw.keys(`${STORE_NAMESPACE}:lock:*`)).toEqual([]);
    } finally {
      for (const kv of kvs) await kv.disconnect();
    }
  }, 30_000);
});

describe('InFlight (answers being regenerated)', () => {
  it('one claim of an id at a time, in one process and across front ends on one Redis; given back, it can be claimed again', async () => {
    const local = new InFlight(new Keyv(), 'slack:regenerating:', noLog);
    const done = await local.claim('r1');
    expect(done).toBeTypeOf('function');
    expect(await local.claim('r1')).toBeUndefined();
    expect(await local.claim('r2')).toBeTypeOf('function');
    done!();
    expect(await local.claim('r1')).toBeTypeOf('function');

    const kvs = [await createStore(r.redis.url), await createStore(r.redis.url)];
    const fronts = kvs.map((kv) => new InFlight(kv, 'slack:regenerating:', noLog));
    try {
      const claims = await Promise.all(Array.from({ length: 8 }, (_, i) => fronts[i % 2].claim('r3')));
      const taken = claims.filter((c) => c !== undefined);
      expect(taken).toHaveLength(1);
      expect(await r.raw.keys(`${STORE_NAMESPACE}:lock:slack:regenerating:*`)).toEqual([`${STORE_NAMESPACE}:lock:slack:regenerating:r3`]);
      // (expires by itself if its front end dies holding it)
      expect(await r.raw.pttl(`${STORE_NAMESPACE}:lock:slack:regenerating:r3`)).toBeGreaterThan(60_000);
      taken[0]!();
      await expect.poll(() => r.raw.keys(`${STORE_NAMESPACE}:lock:slack:regenerating:*`)).toEqual([]);
      const again = await fronts[1].claim('r3');
      expect(again).toBeTypeOf('function');
      again!();
    } finally {
      for (const kv of kvs) await kv.disconnect();
    }
  }, 30_000);
});
