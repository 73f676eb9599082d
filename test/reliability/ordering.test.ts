// One request at a time per conversation, in arrival order (issue 3), through the adapters: a follow-up whose
// image is slow to download must not be overtaken by the text-only follow-ups sent right after it in the same
// thread. Real discord.js / Bolt against the fake platforms, the real manager and the demo package (forced answer).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager } from '../../src/conversation/index.js';
import type { SlackAdapter } from '../../adapters/slack/index.js';
import { ArrivalOrder } from '../../adapters/shared/arrival-order.js';
import type { ApiMessage, FakeDiscord } from '../discord/fake-discord.js';
import { answered, closeStack, startStack, testPng, type Stack, type World } from '../discord/helpers.js';
import { FakeSlack } from '../slack/fake-slack.js';
import { squarePng, startSlack, textReplies, waitForAnswers } from '../slack/helpers.js';
import { FORCED, FORCED_DISCORD, sleep, until } from './helpers.js';

const ROOT = join(import.meta.dirname, '..', '..');
const SLOW_MS = 1200;
const DOWNLOAD_TIMEOUT_MS = 4000;

describe("ArrivalOrder (the adapters' per-conversation turns)", () => {
  it('hands on in the order taken, also past a turn released early, and forgets a conversation once done', async () => {
    const order = new ArrivalOrder(10_000);
    const seen: string[] = [];
    const [a, b, c] = [order.take('t1'), order.take('t1'), order.take('t1')];
    const other = order.take('t2');
    const run = async (name: string, turn: typeof a, ms: number) => {
      await sleep(ms); // its own preparation (a download, a lookup)
      await turn.ready();
      seen.push(name);
      turn.release();
    };
    // b is not a request after all: released at once, without waiting; c must still wait for a.
    b.release();
    await Promise.all([run('a', a, 150), run('c', c, 0), run('other', other, 0)]);
    expect(seen).toEqual(['other', 'a', 'c']);
    await sleep(0);
    expect(order.size).toBe(0);
    // A conversation without a key takes no turn.
    const free = order.take(undefined);
    await free.ready();
    free.release();
    expect(order.size).toBe(0);
  });

  it('a turn whose predecessor never releases waits only maxWaitMs, and says so', async () => {
    const late: string[] = [];
    const order = new ArrivalOrder(200, (k) => late.push(k));
    order.take('t'); // stuck forever
    const next = order.take('t');
    const t0 = Date.now();
    await next.ready();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
    expect(late).toEqual(['t']);
    next.release();
    // The one after it waits for it (released), not for the stuck one.
    const third = order.take('t');
    const t1 = Date.now();
    await third.ready();
    expect(Date.now() - t1).toBeLessThan(150);
    third.release();
  });
});

describe('discord: follow-ups in one thread reach the manager in the order they were sent', () => {
  let stack: Stack;
  let w: World;
  let fake: FakeDiscord;
  let manager: ConversationManager;
  const logs: string[] = [];

  beforeAll(async () => {
    stack = await startStack(FORCED, logs, {
      adapter: { editIntervalMs: 50, downloadTimeoutMs: DOWNLOAD_TIMEOUT_MS },
      defaults: { maxNewTokens: 40 },
    });
    ({ w, fake, manager } = stack);
  });
  afterAll(() => closeStack(stack));

  const key = (threadId: string) => ({ platform: 'discord' as const, workspace: w.guildId, channel: w.general, thread: threadId });
  const botMessagesIn = (channelId: string): ApiMessage[] => fake.messagesIn(channelId).filter((m) => m.author.id === fake.bot.id);
  /** the index of request `id`'s outcome line in the adapter's log (the order the answers were finished) */
  const doneAt = (id: string) => logs.findIndex((l) => l.includes(` ${id} (`) && /: (answered|error) /.test(l));

  async function thread(text: string): Promise<string> {
    const png = await testPng(64, 48);
    const m = fake.postMessage(w.general, w.alice, text, {
      attachments: [fake.addAttachment('p.png', png, 'image/png')],
      mentionBot: true,
    });
    expect(await answered(logs, m.id)).toMatch(/answered/);
    return m.id;
  }

  it('a slow image download first, two text-only follow-ups right after it: answered and stored in send order', async () => {
    const t = await thread('start here');
    const slow = fake.addAttachment('slow.png', await testPng(80, 60, '#777777'), 'image/png');
    fake.delayFile(slow, SLOW_MS);
    const a = fake.postMessage(t, w.alice, 'first, with a new image', { attachments: [slow] });
    const b = fake.postMessage(t, w.bob, 'second, text only');
    const c = fake.postMessage(t, w.alice, 'third, text only');
    for (const m of [a, b, c]) expect(await answered(logs, m.id)).toMatch(/answered/);
    const order = [doneAt(a.id), doneAt(b.id), doneAt(c.id)];
    expect(order).toEqual([...order].sort((x, y) => x - y));
    // The new image reset the conversation, then the two text turns followed it.
    expect((await manager.history(key(t)))?.turns.map((x) => x.user)).toEqual([
      'first, with a new image',
      'second, text only',
      'third, text only',
    ]);
    expect(botMessagesIn(t).map((m) => m.content)).toEqual([FORCED_DISCORD, FORCED_DISCORD, FORCED_DISCORD, FORCED_DISCORD]);
  });

  it('a download that never finishes holds the thread only until its timeout; the next follow-up is then answered', async () => {
    const t = await thread('another thread');
    const stuck = fake.addAttachment('stuck.png', await testPng(), 'image/png');
    fake.delayFile(stuck, 60_000);
    const a = fake.postMessage(t, w.alice, 'this image never arrives', { attachments: [stuck] });
    const b = fake.postMessage(t, w.alice, 'and this is text');
    expect(await answered(logs, b.id, 20_000)).toMatch(/answered/);
    expect(doneAt(a.id)).toBe(-1); // refused before the manager: a reply, not an answer
    expect(botMessagesIn(t).map((m) => m.content)).toEqual([
      FORCED_DISCORD,
      '⚠️ Downloading the image took too long; please try again.',
      FORCED_DISCORD,
    ]);
    expect((await manager.history(key(t)))?.turns.map((x) => x.user)).toEqual(['another thread', 'and this is text']);
  });
});

describe('slack: follow-ups in one thread reach the manager in the order they were sent', () => {
  let model: MiniGPT;
  let manager: ConversationManager;
  let fake: FakeSlack;
  let adapter: SlackAdapter;
  const logs: string[] = [];

  beforeAll(async () => {
    model = await MiniGPT.load(join(ROOT, 'models', 'demo'), { provider: 'cpu', threads: 1, forcedAnswer: FORCED });
    manager = new ConversationManager({ model, defaults: { maxNewTokens: 40, temperature: 0 } });
    fake = await FakeSlack.start();
    adapter = await startSlack(fake, manager, { log: (l) => logs.push(l), updateIntervalMs: 30, downloadTimeoutMs: DOWNLOAD_TIMEOUT_MS });
  });
  afterAll(async () => {
    await adapter?.close();
    await fake?.close();
    await manager?.close();
    await model?.close();
  });

  const key = (channel: string, thread: string) => ({ platform: 'slack' as const, workspace: fake.teamId, channel, thread });

  it('a slow image download first, two text-only follow-ups right after it: answered and stored in send order', async () => {
    const png = await squarePng(96, 72);
    const { msg } = await fake.mention('CORDER', {
      text: `<@${fake.botUserId}> start here`,
      files: [fake.addFile({ name: 'a.png', data: png, mimetype: 'image/png' })],
    });
    await waitForAnswers(fake, 'CORDER', msg.ts, 1);
    const slow = fake.addFile({ name: 'slow.png', data: await squarePng(80, 60), mimetype: 'image/png' });
    fake.fileDelays.set(slow.id, SLOW_MS);
    // Each event is delivered (acknowledged) before the next is sent, as one user typing fast would.
    await fake.reply('CORDER', msg.ts, { user: 'U0ALICE', text: 'first, with a new image', files: [slow] });
    await fake.reply('CORDER', msg.ts, { user: 'U0BOB', text: 'second, text only' });
    await fake.reply('CORDER', msg.ts, { user: 'U0ALICE', text: 'third, text only' });
    await waitForAnswers(fake, 'CORDER', msg.ts, 4);
    await until(() => textReplies(fake, 'CORDER', msg.ts).every((m) => /^\*red square\*/.test(m.text)), 'the answers to settle');
    expect((await manager.history(key('CORDER', msg.ts)))?.turns.map((x) => x.user)).toEqual([
      'first, with a new image',
      'second, text only',
      'third, text only',
    ]);
    // The replies stand in the thread in the order of the messages they answer (the slow one's says it looks at its image).
    const replies = textReplies(fake, 'CORDER', msg.ts);
    expect(replies.map((m) => m.versions[0])).toEqual(['_Looking at the image…_', '_Looking at the image…_', '_Thinking…_', '_Thinking…_']);
    await sleep(100);
    expect(textReplies(fake, 'CORDER', msg.ts)).toHaveLength(4);
  });

  it('a download that never finishes holds the thread only until its timeout; the next follow-up is then answered', async () => {
    const png = await squarePng(96, 72);
    const { msg } = await fake.mention('CSTUCK', {
      text: `<@${fake.botUserId}> another thread`,
      files: [fake.addFile({ name: 'a.png', data: png, mimetype: 'image/png' })],
    });
    await waitForAnswers(fake, 'CSTUCK', msg.ts, 1);
    const stuck = fake.addFile({ name: 'stuck.png', data: png, mimetype: 'image/png' });
    fake.fileDelays.set(stuck.id, 60_000);
    await fake.reply('CSTUCK', msg.ts, { user: 'U0ALICE', text: 'this image never arrives', files: [stuck] });
    await fake.reply('CSTUCK', msg.ts, { user: 'U0ALICE', text: 'and this is text' });
    await waitForAnswers(fake, 'CSTUCK', msg.ts, 2);
    await until(
      () => textReplies(fake, 'CSTUCK', msg.ts).filter((m) => /^\*red square\*/.test(m.text)).length === 2,
      'the second answer to settle',
    );
    const replies = textReplies(fake, 'CSTUCK', msg.ts).map((m) => m.text);
    expect(replies).toHaveLength(3);
    expect(replies[1]).toMatch(/^:warning: Downloading .* took too long/);
    expect((await manager.history(key('CSTUCK', msg.ts)))?.turns.map((x) => x.user)).toEqual(['another thread', 'and this is text']);
  });
});
