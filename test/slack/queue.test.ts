// A Slack request waiting behind others: the real Bolt app on the fake Slack, the real ConversationManager (one answer
// at a time) and the demo model (its answer forced, its decoding steps slowed). The reply says how many requests are
// ahead, counts down as the queue moves, says "Thinking…" when the model takes it, then gives the answer. A wait of a
// moment shows no place (one edit fewer on Slack's budget).
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { SlackConversationManager } from '../../adapters/slack/options.js';
import type { AnswerEvent } from '../../src/conversation/index.js';
import { slowSteps } from '../helpers/slow-steps.js';
import type { FakeMessage } from './fake-slack.js';
import { squarePng, startSlack, textReplies, useSlackAdapter, useSlackStack } from './helpers.js';

const FORCED = 'a green square on a grey background';
const s = useSlackStack(FORCED, {
  defaults: { temperature: 0 },
  // (every place in the queue shown at once, updates written 50 ms apart at most: each is seen)
  adapter: (fake, manager, log) => startSlack(fake, manager, { log, updateIntervalMs: 50, queueUpdateMs: 0, placeAfterMs: 0 }),
});

describe('slack: a request waiting in the queue', () => {
  it('is told its place, counted down as the requests ahead start, then "Thinking…", then answered', async () => {
    const slow = slowSteps(s.model, 40);
    try {
      const asks: FakeMessage[] = [];
      for (const channel of ['C1', 'C2', 'C3']) {
        const file = s.fake.addFile({ name: 'square.png', data: await squarePng(90, 60), mimetype: 'image/png' });
        asks.push((await s.fake.mention(channel, { text: `<@${s.fake.botUserId}> what is this?`, files: [file] })).msg);
      }
      const replyIn = (channel: string, thread: string) => textReplies(s.fake, channel, thread)[0];
      const last = await s.fake.waitFor(
        () => {
          const r = replyIn('C3', asks[2]!.ts);
          return r?.text === FORCED ? r : undefined;
        },
        30_000,
        'the third answer',
      );
      const statuses = last.versions.filter((v) => v.startsWith('_'));
      expect(statuses).toEqual([
        '_Looking at the image…_',
        '_Waiting: 2 requests ahead of this one…_',
        '_Waiting: 1 request ahead of this one…_',
        '_Thinking…_',
      ]);
      for (const [i, channel] of ['C1', 'C2'].entries()) {
        await s.fake.waitFor(() => (replyIn(channel, asks[i]!.ts)?.text === FORCED ? true : undefined), 30_000, `answer ${i + 1}`);
      }
    } finally {
      slow.restore();
    }
  }, 60_000);

  it('an edited question is told its place too; an edit of an earlier question is refused, without a word, before its turn', async () => {
    // two threads whose latest question is the follow-up
    const asked: FakeMessage[] = [];
    const follows: FakeMessage[] = [];
    for (const channel of ['C4', 'C5']) {
      const file = s.fake.addFile({ name: 'square.png', data: await squarePng(90, 60), mimetype: 'image/png' });
      const { msg } = await s.fake.mention(channel, { text: `<@${s.fake.botUserId}> what is this?`, files: [file] });
      await s.fake.waitFor(() => (textReplies(s.fake, channel, msg.ts)[0]?.text === FORCED ? true : undefined), 30_000, 'an answer');
      const { msg: follow } = await s.fake.reply(channel, msg.ts, { text: 'is it big?' });
      await s.fake.waitFor(() => (textReplies(s.fake, channel, msg.ts)[1]?.text === FORCED ? true : undefined), 30_000, 'a follow-up');
      asked.push(msg);
      follows.push(follow);
    }
    const slow = slowSteps(s.model, 100);
    try {
      // two requests ahead (one answered, one waiting)
      const ahead: FakeMessage[] = [];
      for (const channel of ['C6', 'C7']) {
        const file = s.fake.addFile({ name: 'square.png', data: await squarePng(90, 60), mimetype: 'image/png' });
        ahead.push((await s.fake.mention(channel, { text: `<@${s.fake.botUserId}> what is this?`, files: [file] })).msg);
      }
      const lastAhead = () => textReplies(s.fake, 'C7', ahead[1]!.ts)[0];
      await s.fake.waitFor(() => (lastAhead()?.versions.some((v) => v.includes('Waiting')) ? true : undefined), 30_000, 'C7 waiting');
      await s.fake.edit(follows[0]!, 'is it small?');
      await s.fake.edit(asked[1]!, `<@${s.fake.botUserId}> what shape is this?`);
      const edited = () => textReplies(s.fake, 'C4', asked[0]!.ts)[2];
      await s.fake.waitFor(
        () => (edited()?.versions.some((v) => v.includes('Waiting: 2 requests ahead')) ? true : undefined),
        30_000,
        'the place',
      );
      await s.fake.waitFor(
        () => s.logs.find((l) => l.includes(`edit of message ${asked[1]!.ts} in `) && l.includes('not answered (stale: ')),
        30_000,
        'the refusal',
      );
      // both before the answers ahead were given
      expect(lastAhead()!.text).not.toBe(FORCED);
      const answer = await s.fake.waitFor(() => (edited()?.text.endsWith(FORCED) ? edited() : undefined), 30_000, 'the edit answered');
      expect(answer.versions.filter((v) => v.includes('_Waiting') || v.includes('_Thinking'))).toEqual(
        expect.arrayContaining([
          expect.stringContaining('_Waiting: 1 request ahead of this one…_'),
          expect.stringContaining('_Thinking…_'),
        ]),
      );
      expect(textReplies(s.fake, 'C5', asked[1]!.ts)).toHaveLength(2);
    } finally {
      slow.restore();
    }
  }, 90_000);
});

describe('slack: a short wait in line', () => {
  // The manager's events scripted: each request waits in line (3 ahead, then 1) for as long as its text says.
  const waits: Record<string, number> = { short: 300, long: 2000 };
  async function* answer(text: string): AsyncGenerator<AnswerEvent> {
    const wait = waits[text.replace(/<@\w+>\s*/, '')]!;
    yield { type: 'queued', position: 3 };
    await sleep(wait / 5);
    yield { type: 'queued', position: 1 };
    await sleep((wait * 4) / 5);
    yield { type: 'started' };
    yield { type: 'text', text: 'the answer' };
    yield { type: 'final', text: 'the answer', entities: [], finishReason: 'stop' };
  }
  const scripted = (): SlackConversationManager => ({
    handle: (req) => answer(req.text),
    history: (key) => s.manager.history(key),
    reset: (key, opts) => s.manager.reset(key, opts),
    forgetQuestion: (key, asked, opts) => s.manager.forgetQuestion(key, asked, opts),
    forgetWorkspace: (platform, workspace, channel) => s.manager.forgetWorkspace(platform, workspace, channel),
  });
  // (the default wait before a place is shown: a second)
  const slack = useSlackAdapter(scripted, { updateIntervalMs: 50, queueUpdateMs: 0 });

  it('shows no place when the answer starts within a second; a longer wait shows the place it has then', async () => {
    const { fake } = slack;
    const statuses = async (text: string) => {
      const { msg } = await fake.mention('CWAIT', { text: `<@${fake.botUserId}> ${text}` });
      const reply = await fake.waitFor(() => textReplies(fake, 'CWAIT', msg.ts).find((r) => r.text === 'the answer'), 20_000, text);
      return reply.versions.filter((v) => v.startsWith('_'));
    };
    expect(await statuses('short')).toEqual(['_Thinking…_']);
    // ("Thinking…" again not written: the text followed at once)
    expect(await statuses('long')).toEqual(['_Thinking…_', '_Waiting: 1 request ahead of this one…_']);
  });
});
