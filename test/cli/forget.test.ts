// `minigpt forget` (the compiled binary): an operator deletes every conversation of a user (each they took part
// in) or of a workspace from the store a bot uses, with the images nobody else uses; --dry-run counts; a SQLite
// file and a real redis-server; clear refusals without a selector or a store.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type Keyv from 'keyv';
import { ConversationManager, createStore, type ConversationKey } from '../../src/conversation/index.js';
import { collect, errorOf, goldenImage, loadTinyModel, solidPng, type TinyModel } from '../conversation/helpers.js';
import { minigpt } from '../helpers/cli.js';
import { startRedis } from '../helpers/redis.js';

let tiny: TinyModel;
let dir: string;
let red: Buffer;
let blue: Buffer;
let green: Buffer;
let yellow: Buffer;

beforeAll(async () => {
  tiny = await loadTinyModel();
  dir = await mkdtemp(join(tmpdir(), 'minigpt-forget-'));
  red = await goldenImage();
  blue = await solidPng(40, 30, [20, 40, 200]);
  green = await solidPng(30, 40, [20, 200, 40]);
  yellow = await solidPng(32, 32, [220, 220, 30]);
}, 60_000);

afterAll(async () => {
  await tiny?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const slack = (team: string, channel: string, thread: string): ConversationKey => ({ platform: 'slack', workspace: team, channel, thread });
const discord = (guild: string, channel: string): ConversationKey => ({ platform: 'discord', workspace: guild, channel, thread: channel });

/**
 * Turns stored through the real manager (`stopped`: a request stopped before its answer, its image kept without a
 * turn), then the store closed (flushed) for the CLI to open.
 */
async function stored(store: Keyv, turns: { key: ConversationKey; user: string; image?: Buffer; stopped?: true }[]): Promise<void> {
  const m = new ConversationManager({ model: tiny.model, store, defaults: { maxNewTokens: 3, temperature: 0 } });
  for (const t of turns) {
    const req = { key: t.key, user: t.user, text: 'hi', ...(t.image ? { image: t.image } : {}) };
    if (t.stopped) await m.keepImage(req);
    else expect(errorOf(await collect(m.handle(req)))).toBeUndefined();
  }
  await m.close();
}

async function stillThere(url: string, keys: ConversationKey[]): Promise<boolean[]> {
  const store = await createStore(url);
  const m = new ConversationManager({ model: tiny.model, store });
  try {
    return await Promise.all(keys.map(async (k) => (await m.history(k)) !== null));
  } finally {
    await m.close();
  }
}

describe('minigpt forget', () => {
  it("deletes a user's conversations (each they took part in), or a workspace's, with the images no other uses", async () => {
    const url = `sqlite://${join(dir, 'threads.sqlite')}`;
    const A = slack('T1', 'C1', 'a');
    const B = slack('T1', 'C1', 'b');
    const C = slack('T1', 'C2', 'c');
    const D = slack('T2', 'C1', 'd');
    const E = discord('111', '222');
    const F = discord('@me', '333');
    const G = slack('T1', 'C3', 'g');
    await stored(await createStore(url), [
      { key: A, user: 'U0ALICE', image: red },
      { key: B, user: 'U0BOB', image: blue },
      { key: B, user: 'U0ALICE' }, // alice took part in bob's thread
      { key: C, user: 'U0BOB', image: red }, // the same image as alice's thread
      { key: D, user: 'U0ALICE', image: green }, // another workspace
      { key: E, user: '999', image: blue },
      { key: F, user: '999', image: green },
      { key: G, user: 'U0ALICE', image: yellow, stopped: true }, // her image, kept without an answer
    ]);
    const all = [A, B, C, D, E, F, G];

    const dry = await minigpt(['forget', '--user', 'slack:T1:U0ALICE', '--store', url, '--dry-run']);
    expect(dry.code).toBe(0);
    expect(dry.stdout.trim()).toBe(`would forget 3 conversations of user slack:T1:U0ALICE in ${url} (--dry-run: nothing deleted)`);
    expect(await stillThere(url, all)).toEqual([true, true, true, true, true, true, true]);

    const run = await minigpt(['forget', '--user', 'slack:T1:U0ALICE', '--store', url]);
    expect(run.code).toBe(0);
    expect(run.stdout.trim()).toBe(`forgot 3 conversations of user slack:T1:U0ALICE in ${url}, with the images no other conversation uses`);
    expect(await stillThere(url, all)).toEqual([false, false, true, true, true, true, false]);
    const raw = await createStore(url);
    const imageKeys = async () => {
      const out: string[] = [];
      for await (const [k] of (raw as Keyv & { iterator(ns?: string): AsyncGenerator<[string, unknown]> }).iterator(raw.namespace))
        if (k.startsWith('img:')) out.push(k);
      return out.length;
    };
    // red stays (bob's other thread uses it), blue stays (the Discord one), green twice: none of the three went;
    // yellow, hers alone, did
    expect(await imageKeys()).toBe(3);

    // a Discord user's conversations in every server and their DMs (STORE_URL from the environment)
    const everywhere = await minigpt(['forget', '--user', 'discord:*:999'], { STORE_URL: url });
    expect(everywhere.stdout).toMatch(/^forgot 2 conversations of user discord:\*:999 in /);
    const workspace = await minigpt(['forget', '--workspace', 'slack:T2', '--store', url]);
    expect(workspace.stdout).toMatch(/^forgot 1 conversation of workspace slack:T2 in /);
    expect(await stillThere(url, all)).toEqual([false, false, true, false, false, false, false]);
    // only red is left, for bob's thread C
    expect(await imageKeys()).toBe(1);
    await raw.disconnect();
  }, 60_000);

  it('walks a Redis store (REDIS_URL) too', async () => {
    const redis = await startRedis();
    try {
      const K = slack('T9', 'C1', 'r');
      await stored(await createStore(redis.url), [{ key: K, user: 'U0CAROL', image: red }]);
      const run = await minigpt(['forget', '--workspace', 'slack:T9'], { REDIS_URL: redis.url, STORE_URL: '' });
      expect(run.stderr).toBe('');
      expect(run.stdout.trim()).toBe(
        `forgot 1 conversation of workspace slack:T9 in ${redis.url}, with the images no other conversation uses`,
      );
      expect(await stillThere(redis.url, [K])).toEqual([false]);
    } finally {
      await redis.cleanup();
    }
  }, 60_000);

  it('says what is missing: a selector, its form, the store', async () => {
    const none = await minigpt(['forget', '--store', 'sqlite://x.sqlite']);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('give one of --user or --workspace');
    const bad = await minigpt(['forget', '--user', 'alice', '--store', 'sqlite://x.sqlite']);
    expect(bad.stderr).toContain('--user alice: expected platform:workspace:user');
    const memory = await minigpt(['forget', '--workspace', 'slack:T1'], { STORE_URL: '', REDIS_URL: '' });
    expect(memory.code).toBe(1);
    expect(memory.stderr).toContain('A bot without STORE_URL keeps its conversations in its memory');
  });
});
