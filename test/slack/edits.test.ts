// Edited questions on Slack: the real Bolt app on the fake Slack (message_changed events as Slack sends them), the
// real ConversationManager and the demo model (its answer forced). The asker edits the message that asked the
// conversation's latest question: it is answered again in the thread (or the DM), the new turn replaces the old one in
// the stored conversation, and the old answer says so and loses its Regenerate button. An edit of an earlier
// question, or a change that leaves the text as it was (a link preview, a reply count), is left alone.
import { describe, expect, it } from 'vitest';
import { dmKey, slackKey } from '../../adapters/slack/answer.js';
import type { FakeMessage } from './fake-slack.js';
import { squarePng, textReplies, useSlackStack } from './helpers.js';
import { slowSteps } from '../helpers/slow-steps.js';

const FORCED = 'a green square on a grey background';
const HEADER = '_The question was edited: this answer replaces the one before it in the conversation._';
const s = useSlackStack(FORCED, { defaults: { temperature: 0 } });
const { logs } = s;

const buttonsOf = (m: FakeMessage | undefined) =>
  (m?.blocks ?? []).flatMap((b) => (b.type === 'actions' ? (b.elements as { action_id: string; value: string }[]) : []));

/** The bot's answer in a thread (or DM) whose text is `text`, given in full (it carries the Regenerate button). */
function answerOf(channel: string, thread: string | undefined, text: string, after = 0): Promise<FakeMessage> {
  return s.fake.waitFor(
    () =>
      textReplies(s.fake, channel, thread)
        .slice(after)
        .find((m) => m.text === text && buttonsOf(m).length === 1),
    20_000,
    `the answer "${text}"`,
  );
}

/**
 * The log line of the edit of message `ts` once handled (taken: "... by U0...: text only"; left alone: "... not
 * answered (...)"); taken off the log, so that the next edit of the same message is waited for anew.
 */
async function editHandled(ts: string): Promise<string> {
  const line = () => logs.find((l) => l.includes(`edit of message ${ts} in `) && /(: text only$|: not answered \()/.test(l));
  const found = await s.fake.waitFor(line, 20_000, `the edit of ${ts}`);
  logs.splice(logs.indexOf(found), 1);
  return found;
}

const turnsOf = async (key: ReturnType<typeof slackKey>) =>
  (await s.manager.history(key))!.turns.map((t) => [t.user, t.requestId, t.askedAs]);

describe('slack: an edited question', () => {
  it('is answered again in its thread; the old answer says so; only the latest question counts', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.mention('C1', { text: `<@${s.fake.botUserId}> what is this?`, files: [file] });
    const first = await answerOf('C1', ask.ts, FORCED);
    const key = slackKey(s.fake.teamId, 'C1', ask.ts);

    await s.fake.edit(ask, `<@${s.fake.botUserId}> what colour is this?`);
    const second = await answerOf('C1', ask.ts, `${HEADER}\n${FORCED}`);
    expect(await editHandled(ask.ts)).toMatch(/text only$/);
    const value = buttonsOf(second)[0]!.value;
    expect(value).toMatch(new RegExp(`^slack:C1:${ask.ts}:e\\d`));
    await s.fake.waitFor(() => (first.text.endsWith('below._') ? true : undefined), 10_000, 'the old answer marked');
    expect(first.text).toBe(`${FORCED}\n_The question was edited: answered again below._`);
    expect(first.blocks).toEqual([]);
    expect(await turnsOf(key)).toEqual([['what colour is this?', value, `slack:C1:${ask.ts}`]]);

    // a follow-up, then its edit
    const { msg: follow } = await s.fake.reply('C1', ask.ts, { text: 'is it big?' });
    const n = textReplies(s.fake, 'C1', ask.ts).length;
    await answerOf('C1', ask.ts, FORCED, n - 1);
    await s.fake.edit(follow, 'is it small?');
    await answerOf('C1', ask.ts, `${HEADER}\n${FORCED}`, n);
    expect(await editHandled(follow.ts)).toMatch(/text only$/);
    expect((await turnsOf(key)).map((t) => [t[0], t[2]])).toEqual([
      ['what colour is this?', `slack:C1:${ask.ts}`],
      ['is it small?', `slack:C1:${follow.ts}`],
    ]);
    const count = textReplies(s.fake, 'C1', ask.ts).length;

    // the first question edited again: no longer the latest, left alone without a word
    await s.fake.edit(ask, `<@${s.fake.botUserId}> what shape is this?`);
    expect(await editHandled(ask.ts)).toMatch(
      /not answered \(stale: Only the latest question in a conversation is answered again when edited\.\)/,
    );
    // the same text (Slack sends message_changed for a link preview too): not an edit at all
    await s.fake.edit(follow, 'is it small?');
    await s.fake.edit(follow, 'is it tiny?');
    await answerOf('C1', ask.ts, `${HEADER}\n${FORCED}`, count);
    expect(await editHandled(follow.ts)).toMatch(/text only$/);
    expect(logs.filter((l) => l.includes(`edit of message ${follow.ts} in `) && l.includes('not answered'))).toEqual([]);
    expect(textReplies(s.fake, 'C1', ask.ts)).toHaveLength(count + 1);
    expect((await turnsOf(key)).map((t) => t[0])).toEqual(['what colour is this?', 'is it tiny?']);
    expect(s.fake.ephemerals.filter((e) => e.channel === 'C1')).toEqual([]);
  }, 60_000);

  it('whose answer cannot be posted (the channel refuses it): not answered where nobody sees it; the question stays as it was', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.mention('C5', { text: `<@${s.fake.botUserId}> what is this?`, files: [file] });
    await answerOf('C5', ask.ts, FORCED);
    const key = slackKey(s.fake.teamId, 'C5', ask.ts);
    const count = textReplies(s.fake, 'C5', ask.ts).length;
    // (slowed, so that the edited question is still being answered when its reply fails)
    const slow = slowSteps(s.model, 100);
    s.fake.brokenChannels.add('C5');
    try {
      await s.fake.edit(ask, `<@${s.fake.botUserId}> what colour is this?`);
      await s.fake.waitFor(
        () => logs.find((l) => l.includes(`edit of message ${ask.ts} in `) && l.includes('could not post the reply')),
        10_000,
        'the failed reply',
      );
      const stepsAtFailure = slow.steps();
      await new Promise((r) => setTimeout(r, 500));
      // the manager's answer was cancelled, not written on for nobody: no more steps, nothing stored
      expect(slow.steps()).toBe(stepsAtFailure);
      expect(await turnsOf(key)).toEqual([['what is this?', `slack:C5:${ask.ts}`, undefined]]);
    } finally {
      s.fake.brokenChannels.delete('C5');
      slow.restore();
    }
    expect(textReplies(s.fake, 'C5', ask.ts)).toHaveLength(count);
    // edited again, where the reply can be posted: answered as usual
    await s.fake.edit(ask, `<@${s.fake.botUserId}> what shape is this?`);
    await answerOf('C5', ask.ts, `${HEADER}\n${FORCED}`);
    expect((await turnsOf(key)).map((t) => t[0])).toEqual(['what shape is this?']);
  }, 60_000);

  it('in a direct message: answered again in the DM', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.say('D7', { text: 'what is this?', files: [file] });
    await answerOf('D7', undefined, FORCED);
    await s.fake.edit(ask, '[grounding] what is this?');
    const again = await answerOf('D7', undefined, `${HEADER}\n${FORCED}`);
    expect(again.thread_ts).toBeUndefined();
    expect((await turnsOf(dmKey(s.fake.teamId, 'D7'))).map((t) => t[0])).toEqual(['[grounding] what is this?']);
  }, 60_000);
});
