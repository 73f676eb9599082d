// A bot in more guilds than one gateway connection may carry (over 2500 on Discord): Discord requires shards,
// closes an IDENTIFY with too few (4011), and sends each shard the events of its own guilds. The adapter opens
// as many as `GET /gateway/bot` recommends and answers in guilds on every shard and in DMs (shard 0). The fake
// Discord on loopback, the real discord.js client, the demo model.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager } from '../../src/conversation/index.js';
import type { DiscordAdapter } from '../../adapters/discord/index.js';
import { FakeDiscord } from './fake-discord.js';
import { answered, DEMO, sleep, startAdapter, testPng } from './helpers.js';

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
      for (const id of [0, 1]) fronts.push(await startAdapter(fake, manager, logsOf[id]!, { shards: { ids: [id], count: SHARDS } }));
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
    await expect(startAdapter(fake, manager, [], { shards: { ids: [0], count: 1 }, readyTimeoutMs: 10_000 })).rejects.toThrow(
      /^Discord closed the bot's gateway connection for good \((close 4011|Sharding is required)/,
    );
  });
});
