// A bot in more guilds than one gateway connection may carry (over 2500 on Discord): Discord requires shards,
// closes an IDENTIFY with too few (4011), and sends each shard the events of its own guilds. The adapter opens
// as many as `GET /gateway/bot` recommends and answers in guilds on every shard and in DMs (shard 0). The fake
// Discord on loopback, the real discord.js client, the demo model.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager } from '../../src/conversation/index.js';
import type { DiscordAdapter } from '../../adapters/discord/index.js';
import { RedisShardLeases } from '../../src/cluster/shard-lease.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { FakeDiscord } from './fake-discord.js';
import { answered, DEMO, sleep, startAdapter, startError, testPng, until } from './helpers.js';

const FINAL = 'A red square on a grey background.';
const SHARDS = 2;
let fake: FakeDiscord;
let model: MiniGPT;
let manager: ConversationManager;
let adapter: DiscordAdapter | undefined;
const logs: string[] = [];
/** a text channel in a guild of each shard */
const channelOn: string[] = [];

beforeAll(async () => {
  fake = await new FakeDiscord().start();
  fake.shards = SHARDS;
  // guild ids carry their creation time: (id >> 22) % 2 is the shard; make guilds until each shard has one
  for (let i = 0; channelOn.filter(Boolean).length < SHARDS && i < 50; i++) {
    const { guildId, channelIds } = fake.addGuild(`server ${i}`, ['general']);
    const shard = Number((BigInt(guildId) >> 22n) % BigInt(SHARDS));
    channelOn[shard] ??= channelIds[0];
    await sleep(3);
  }
  model = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1, forcedAnswer: FINAL });
  manager = new ConversationManager({ model, defaults: { maxNewTokens: 40, temperature: 0 } });
}, 60_000);

afterAll(async () => {
  await adapter?.close();
  await manager?.close();
  await model?.close();
  await fake?.close();
});

describe('Discord with several shards', () => {
  it('the fake closes an IDENTIFY with too few shards with 4011 (sharding required)', async () => {
    const ws = new WebSocket(fake.gatewayUrl);
    const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    await new Promise<void>((resolve) => ws.once('message', () => resolve())); // HELLO
    ws.send(JSON.stringify({ op: 2, d: { token: fake.token, intents: 0, properties: {}, shard: [0, 1] } }));
    expect(await closed).toBe(4011);
  });

  it('opens the shards Discord recommends and answers in guilds on each of them and in DMs', async () => {
    adapter = await startAdapter(fake, manager, logs);
    expect(fake.connectedShards).toEqual([0, 1]);
    const identified = fake.gatewayIn.filter((p) => p.op === 2 && p.d.token === fake.token && p.d.shard?.[1] === SHARDS);
    expect(identified.map((p) => p.d.shard[0]).sort()).toEqual([0, 1]);
    const png = await testPng(200, 150);
    const alice = fake.user('alice');
    const asked: string[] = [];
    for (const [shard, channel] of channelOn.entries()) {
      const msg = fake.postMessage(channel, alice, `what is this? (shard ${shard})`, {
        attachments: [fake.addAttachment(`s${shard}.png`, png, 'image/png', { width: 200, height: 150 })],
        mentionBot: true,
      });
      expect(await answered(logs, msg.id), `shard ${shard}`).toMatch(/answered/);
      asked.push(msg.id); // (the answer's thread has the message's id)
    }
    const dm = fake.addDm(alice);
    const first = fake.postMessage(dm, alice, 'hello', { attachments: [fake.addAttachment('dm.png', png, 'image/png')] });
    expect(await answered(logs, first.id)).toMatch(/answered/);
    asked.push(dm);
    // each answer was posted once, in its thread or DM
    for (const where of asked) {
      const posts = fake.calls.filter((c) => c.method === 'POST' && c.path === `/channels/${where}/messages`);
      expect(posts, where).toHaveLength(1);
    }
  }, 60_000);

  it('shards spread over front ends (DISCORD_SHARDS of DISCORD_SHARD_COUNT): each answers its own guilds, shard 0 the DMs', async () => {
    // (the adapter holding every shard would answer too)
    await adapter?.close();
    adapter = undefined;
    const logsOf: string[][] = [[], []];
    const fronts: DiscordAdapter[] = [];
    try {
      // a conversation of a server on shard 1 that the bot left while offline: forgotten by shard 1's front end only
      const left = { platform: 'discord' as const, workspace: String(1234567n << 22n), channel: '1', thread: '1' };
      for await (const _ of manager.handle({ key: left, user: 'u', text: 'hi', image: await testPng(64, 48) }));
      fronts.push(await startAdapter(fake, manager, logsOf[0]!, { shards: { ids: [0], count: SHARDS } }));
      await fronts[0]!.swept;
      expect(await manager.history(left)).not.toBeNull();
      fronts.push(await startAdapter(fake, manager, logsOf[1]!, { shards: { ids: [1], count: SHARDS } }));
      await fronts[1]!.swept;
      expect(await manager.history(left)).toBeNull();
      expect(logsOf[1]).toContain('discord: removed from servers while offline: 1 conversation forgotten');
      expect(logsOf[0]!.filter((l) => l.includes('while offline'))).toEqual([]);
      expect(fake.connectedShards).toEqual([0, 1]);
      expect(logsOf[1]!.join('\n')).toMatch(/connected as .*, shards 1 of 2\)/);
      expect(logsOf[1]!.join('\n')).toMatch(/direct messages come to shard 0 only/);
      expect(logsOf[0]!.join('\n')).not.toMatch(/direct messages come to shard 0 only/);
      const png = await testPng(200, 150);
      const bob = fake.user('bob');
      const asked: string[] = [];
      for (const [shard, channel] of channelOn.entries()) {
        const msg = fake.postMessage(channel, bob, `and this? (front end ${shard})`, {
          attachments: [fake.addAttachment(`f${shard}.png`, png, 'image/png', { width: 200, height: 150 })],
          mentionBot: true,
        });
        expect(await answered(logsOf[shard]!, msg.id), `shard ${shard}`).toMatch(/answered/);
        expect(logsOf[1 - shard]!.join('\n'), `shard ${shard}`).not.toContain(msg.id);
        asked.push(msg.id);
      }
      const dm = fake.addDm(bob);
      const first = fake.postMessage(dm, bob, 'hello', { attachments: [fake.addAttachment('dm2.png', png, 'image/png')] });
      expect(await answered(logsOf[0]!, first.id)).toMatch(/answered/);
      expect(logsOf[1]!.join('\n')).not.toContain(first.id);
      asked.push(dm);
      for (const where of asked) {
        // (a count: the calls carry the image bytes, too big for a failure's diff)
        const posts = fake.calls.filter((c) => c.method === 'POST' && c.path === `/channels/${where}/messages`).length;
        expect(posts, where).toBe(1);
      }
    } finally {
      await Promise.all(fronts.map((f) => f.close()));
    }
  }, 60_000);

  it('a shard count below the one Discord requires is refused at start, in one sentence', async () => {
    expect(await startError(startAdapter(fake, manager, [], { shards: { ids: [0], count: 1 }, readyTimeoutMs: 10_000 }))).toMatch(
      /^Discord closed the bot's gateway connection for good \((close 4011|Sharding is required)/,
    );
  });
});

describe('front ends on Redis hold their shards: a shard connected twice is refused', () => {
  let redis: TestRedis;
  const connection = () => redis.client();
  const identifies = () => fake.gatewayIn.filter((p) => p.op === 2).length;

  beforeAll(async () => {
    await adapter?.close();
    adapter = undefined;
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.cleanup();
  });

  it('a second front end with every shard (DISCORD_SHARDS unset) does not connect; the first answers each message once', async () => {
    const logsA: string[] = [];
    const logsB: string[] = [];
    const a = await startAdapter(fake, manager, logsA, { shardLeases: new RedisShardLeases(connection(), { ttlMs: 1000 }) });
    try {
      expect(fake.connectedShards).toEqual([0, 1]);
      expect(logsA.join('\n')).toMatch(/connected as .*, shards 0,1 of 2, held in Redis\)/);
      const before = identifies();
      const err = await startError(
        startAdapter(fake, manager, logsB, { shardLeases: new RedisShardLeases(connection(), { ttlMs: 1000, retryMs: 100 }) }),
      );
      expect(err).toMatch(
        /^Discord shard [01] of 2 is connected by another front end \(host .*, shards 0-1 of 2, since .*\): each shard must be connected by one front end only, or both answer every message; DISCORD_SHARDS is unset, so this front end connects all 2 of the bot's shards: run Discord on one front end, or split the bot's shards between front ends with DISCORD_SHARDS and DISCORD_SHARD_COUNT$/,
      );
      expect(err).not.toContain(fake.token);
      // it never identified: Discord never sent it an event
      expect(identifies()).toBe(before);
      expect(fake.connectedShards).toEqual([0, 1]);
      const carol = fake.user('carol');
      const msg = fake.postMessage(channelOn[1]!, carol, 'held?', {
        attachments: [fake.addAttachment('h.png', await testPng(200, 150), 'image/png', { width: 200, height: 150 })],
        mentionBot: true,
      });
      expect(await answered(logsA, msg.id)).toMatch(/answered/);
      expect(fake.calls.filter((c) => c.method === 'POST' && c.path === `/channels/${msg.id}/messages`).length).toBe(1);
    } finally {
      await a.close();
    }
    // closed: its shards are given up at once, and another front end connects them without waiting
    const started = Date.now();
    const b = await startAdapter(fake, manager, logsB, { shardLeases: new RedisShardLeases(connection(), { ttlMs: 60_000 }) });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(logsB.join('\n')).not.toMatch(/waiting up to/);
    await b.close();
  }, 60_000);

  it('front ends with their own shards of one count both connect; a third with an overlapping one is refused', async () => {
    const fronts: DiscordAdapter[] = [];
    try {
      for (const id of [0, 1])
        fronts.push(
          await startAdapter(fake, manager, [], {
            shards: { ids: [id], count: SHARDS },
            shardLeases: new RedisShardLeases(connection(), { ttlMs: 1000 }),
          }),
        );
      expect(fake.connectedShards).toEqual([0, 1]);
      expect(
        await startError(
          startAdapter(fake, manager, [], {
            shards: { ids: [1], count: SHARDS },
            shardLeases: new RedisShardLeases(connection(), { ttlMs: 1000, retryMs: 100 }),
          }),
        ),
      ).toMatch(
        /^Discord shard 1 of 2 is connected by another front end \(host .*, shards 1 of 2,.*give this one other shards \(DISCORD_SHARDS\)$/,
      );
      expect(fake.connectedShards).toEqual([0, 1]);
    } finally {
      await Promise.all(fronts.map((f) => f.close()));
    }
  }, 60_000);

  it('a front end whose shard another took while it could not reach Redis disconnects and says why (fatal)', async () => {
    const logsA: string[] = [];
    const conn = connection();
    const a = await startAdapter(fake, manager, logsA, {
      shards: { ids: [1], count: SHARDS },
      shardLeases: new RedisShardLeases(conn, { ttlMs: 500 }),
    });
    let b: DiscordAdapter | undefined;
    try {
      conn.disconnect(); // A cannot renew; its hold lapses
      b = await startAdapter(fake, manager, [], {
        shards: { ids: [1], count: SHARDS },
        shardLeases: new RedisShardLeases(connection(), { ttlMs: 500, waitMs: 3000, retryMs: 100 }),
      });
      await conn.connect();
      const reason = await Promise.race([a.fatal, sleep(5000).then(() => undefined)]);
      expect(reason?.message).toMatch(
        /^another front end \(host .*, shards 1 of 2, .*\) took Discord shard 1 while this one could not renew its hold in Redis: disconnecting from Discord, or both would answer$/,
      );
      expect(logsA.join('\n')).toContain('took Discord shard 1');
      // A disconnected on its own: one connection of shard 1 remains, B's
      await until(() => fake.connectedShards.filter((s) => s === 1).length === 1, 'A disconnected', 10_000);
      const msg = fake.postMessage(channelOn[1]!, fake.user('dave'), 'who answers?', {
        attachments: [fake.addAttachment('w.png', await testPng(200, 150), 'image/png', { width: 200, height: 150 })],
        mentionBot: true,
      });
      await until(() => fake.calls.some((c) => c.method === 'POST' && c.path === `/channels/${msg.id}/messages`), 'an answer', 30_000);
      await sleep(500);
      expect(fake.calls.filter((c) => c.method === 'POST' && c.path === `/channels/${msg.id}/messages`).length).toBe(1);
      expect(logsA.join('\n')).not.toContain(msg.id);
    } finally {
      await a.close();
      await b?.close();
    }
  }, 60_000);
});
