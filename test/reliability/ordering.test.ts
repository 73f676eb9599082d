// One request at a time per conversation, in arrival order (issue 3), through the adapters: a follow-up whose
// image is slow to download must not be overtaken by the text-only follow-ups sent right after it in the same
// thread. Real discord.js / Bolt against the fake platforms, the real manager and the demo package (forced answer).
import { describe, expect, it } from 'vitest';
import { ArrivalOrder, releasedAtFirst } from '../../adapters/shared/arrival-order.js';
import type { ApiMessage } from '../discord/fake-discord.js';
import { answered, testPng, useStack } from '../discord/helpers.js';
import { squarePng, startSlack, textReplies, useSlackStack, waitForAnswers } from '../slack/helpers.js';
import { FORCED, FORCED_DISCORD, sleep, until } from './helpers.js';

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

  it("releasedAtFirst: the next turn goes on at the request's first event (a front end has numbered it then), or its end", async () => {
    const order = new ArrivalOrder(10_000);
    const mine = order.take('t');
    const next = order.take('t');
    await mine.ready();
    let goOn = false;
    void next.ready().then(() => (goOn = true));
    async function* numberedLate() {
      await sleep(150); // a front end checking workers and taking the request's number
      yield 'queued';
      yield 'started';
    }
    const events = releasedAtFirst(numberedLate(), mine)[Symbol.asyncIterator]();
    const first = events.next();
    await sleep(100);
    expect(goOn).toBe(false);
    expect((await first).value).toBe('queued');
    await sleep(0);
    expect(goOn).toBe(true);
    next.release();
    // a stream that ends without an event releases too
    const last = order.take('u');
    const after = order.take('u');
    await last.ready();
    for await (const _ of releasedAtFirst((async function* () {})(), last));
    await after.ready();
    after.release();
  });
});

describe('discord: follow-ups in one thread reach the manager in the order they were sent', () => {
  const s = useStack(FORCED, {
    adapter: { editIntervalMs: 50, downloadTimeoutMs: DOWNLOAD_TIMEOUT_MS },
    defaults: { maxNewTokens: 40 },
  });
  const { logs } = s;

  const key = (threadId: string) => ({ platform: 'discord' as const, workspace: s.w.guildId, channel: s.w.general, thread: threadId });
  const botMessagesIn = (channelId: string): ApiMessage[] => s.fake.messagesIn(channelId).filter((m) => m.author.id === s.fake.bot.id);
  /** the index of request `id`'s outcome line in the adapter's log (the order the answers were finished) */
  const doneAt = (id: string) => logs.findIndex((l) => l.includes(` ${id} (`) && /: (answered|error) /.test(l));

  async function thread(text: string): Promise<string> {
    const png = await testPng(64, 48);
    const m = s.fake.postMessage(s.w.general, s.w.alice, text, {
      attachments: [s.fake.addAttachment('p.png', png, 'image/png')],
      mentionBot: true,
    });
    expect(await answered(logs, m.id)).toMatch(/answered/);
    return m.id;
  }

  it('a slow image download first, two text-only follow-ups right after it: answered and stored in send order', async () => {
    const t = await thread('start here');
    const slow = s.fake.addAttachment('slow.png', await testPng(80, 60, '#777777'), 'image/png');
    s.fake.delayFile(slow, SLOW_MS);
    const a = s.fake.postMessage(t, s.w.alice, 'first, with a new image', { attachments: [slow] });
    const b = s.fake.postMessage(t, s.w.bob, 'second, text only');
    const c = s.fake.postMessage(t, s.w.alice, 'third, text only');
    for (const m of [a, b, c]) expect(await answered(logs, m.id)).toMatch(/answered/);
    const order = [doneAt(a.id), doneAt(b.id), doneAt(c.id)];
    expect(order).toEqual([...order].sort((x, y) => x - y));
    // The new image reset the conversation, then the two text turns followed it.
    expect((await s.manager.history(key(t)))?.turns.map((x) => x.user)).toEqual([
      'first, with a new image',
      'second, text only',
      'third, text only',
    ]);
    expect(botMessagesIn(t).map((m) => m.content)).toEqual([FORCED_DISCORD, FORCED_DISCORD, FORCED_DISCORD, FORCED_DISCORD]);
  });

  it('a download that never finishes holds the thread only until its timeout; the next follow-up is then answered', async () => {
    const t = await thread('another thread');
    const stuck = s.fake.addAttachment('stuck.png', await testPng(), 'image/png');
    s.fake.delayFile(stuck, 60_000);
    const a = s.fake.postMessage(t, s.w.alice, 'this image never arrives', { attachments: [stuck] });
    const b = s.fake.postMessage(t, s.w.alice, 'and this is text');
    expect(await answered(logs, b.id, 20_000)).toMatch(/answered/);
    expect(doneAt(a.id)).toBe(-1); // refused before the manager: a reply, not an answer
    expect(botMessagesIn(t).map((m) => m.content)).toEqual([
      FORCED_DISCORD,
      '⚠️ Downloading the image took too long; please try again.',
      FORCED_DISCORD,
    ]);
    expect((await s.manager.history(key(t)))?.turns.map((x) => x.user)).toEqual(['another thread', 'and this is text']);
  });
});

describe('slack: follow-ups in one thread reach the manager in the order they were sent', () => {
  const s = useSlackStack(FORCED, {
    threads: 1,
    defaults: { maxNewTokens: 40, temperature: 0 },
    adapter: (fake, manager, log) => startSlack(fake, manager, { log, updateIntervalMs: 30, downloadTimeoutMs: DOWNLOAD_TIMEOUT_MS }),
  });

  const key = (channel: string, thread: string) => ({ platform: 'slack' as const, workspace: s.fake.teamId, channel, thread });

  /** A thread begun in `channel` by a mention with `png`, once its answer is in; its root's ts. */
  async function thread(channel: string, text: string, png: Buffer): Promise<string> {
    const file = s.fake.addFile({ name: 'a.png', data: png, mimetype: 'image/png' });
    const { msg } = await s.fake.mention(channel, { text: `<@${s.fake.botUserId}> ${text}`, files: [file] });
    await waitForAnswers(s.fake, channel, msg.ts, 1);
    return msg.ts;
  }

  it('a slow image download first, two text-only follow-ups right after it: answered and stored in send order', async () => {
    const png = await squarePng(96, 72);
    const ts = await thread('CORDER', 'start here', png);
    const slow = s.fake.addFile({ name: 'slow.png', data: await squarePng(80, 60), mimetype: 'image/png' });
    s.fake.fileDelays.set(slow.id, SLOW_MS);
    // Each event is delivered (acknowledged) before the next is sent, as one user typing fast would.
    await s.fake.reply('CORDER', ts, { user: 'U0ALICE', text: 'first, with a new image', files: [slow] });
    await s.fake.reply('CORDER', ts, { user: 'U0BOB', text: 'second, text only' });
    await s.fake.reply('CORDER', ts, { user: 'U0ALICE', text: 'third, text only' });
    await waitForAnswers(s.fake, 'CORDER', ts, 4);
    await until(() => textReplies(s.fake, 'CORDER', ts).every((m) => /^\*red square\*/.test(m.text)), 'the answers to settle');
    expect((await s.manager.history(key('CORDER', ts)))?.turns.map((x) => x.user)).toEqual([
      'first, with a new image',
      'second, text only',
      'third, text only',
    ]);
    // The replies stand in the thread in the order of the messages they answer (the slow one's says it looks at its image).
    const replies = textReplies(s.fake, 'CORDER', ts);
    expect(replies.map((m) => m.versions[0])).toEqual(['_Looking at the image…_', '_Looking at the image…_', '_Thinking…_', '_Thinking…_']);
    await sleep(100);
    expect(textReplies(s.fake, 'CORDER', ts)).toHaveLength(4);
  });

  it('a download that never finishes holds the thread only until its timeout; the next follow-up is then answered', async () => {
    const png = await squarePng(96, 72);
    const ts = await thread('CSTUCK', 'another thread', png);
    const stuck = s.fake.addFile({ name: 'stuck.png', data: png, mimetype: 'image/png' });
    s.fake.fileDelays.set(stuck.id, 60_000);
    await s.fake.reply('CSTUCK', ts, { user: 'U0ALICE', text: 'this image never arrives', files: [stuck] });
    await s.fake.reply('CSTUCK', ts, { user: 'U0ALICE', text: 'and this is text' });
    await waitForAnswers(s.fake, 'CSTUCK', ts, 2);
    await until(
      () => textReplies(s.fake, 'CSTUCK', ts).filter((m) => /^\*red square\*/.test(m.text)).length === 2,
      'the second answer to settle',
    );
    const replies = textReplies(s.fake, 'CSTUCK', ts).map((m) => m.text);
    expect(replies).toHaveLength(3);
    expect(replies[1]).toMatch(/^:warning: Downloading .* took too long/);
    expect((await s.manager.history(key('CSTUCK', ts)))?.turns.map((x) => x.user)).toEqual(['another thread', 'and this is text']);
  });
});
