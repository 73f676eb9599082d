// The Regenerate button on a Slack answer given in full: the real Bolt app on the fake Slack, the real
// ConversationManager and the demo model (its answer forced). The asker presses it on the conversation's last
// answer: a new answer to the same question is posted after it in the thread (with its own button) and replaces it
// in the stored conversation; the old one loses its button and says so. Anyone else, or an answer followed up
// since, is told why privately; a new answer that is not given leaves the old one its button. Also in a DM.
import { describe, expect, it, vi } from 'vitest';
import { dmKey, slackKey } from '../../adapters/slack/answer.js';
import type { FakeMessage } from './fake-slack.js';
import { squarePng, startSlack, textReplies, useSlackStack } from './helpers.js';

const FORCED = 'a green square on a grey background';
const REGENERATE = 'minigpt_regenerate';
const HEADER = '_Regenerated: this answer replaces the one above in the conversation._';
const s = useSlackStack(FORCED, { defaults: { temperature: 0 } });

const buttonsOf = (m: FakeMessage | undefined) =>
  (m?.blocks ?? []).flatMap((b) =>
    b.type === 'actions' ? (b.elements as { action_id: string; value: string; text: { text: string } }[]) : [],
  );

/** The bot's answer in a thread (or DM) whose text is `text` and that carries the Regenerate button. */
function answerWithButton(channel: string, thread: string | undefined, text: string): Promise<FakeMessage> {
  return s.fake.waitFor(
    () => textReplies(s.fake, channel, thread).find((m) => m.text === text && buttonsOf(m)[0]?.action_id === REGENERATE),
    20_000,
    `the answer "${text}" with its Regenerate button`,
  );
}

/** Presses the Regenerate button of `msg` as `user`; returns the private reply it got, if `told`. */
async function press(msg: FakeMessage, user: string, told = false): Promise<string | undefined> {
  const n = s.fake.ephemerals.length;
  expect((await s.fake.pressButton({ ...msg }, REGENERATE, user)).status).toBe(200);
  if (!told) return undefined;
  await s.fake.waitFor(() => s.fake.ephemerals.length > n || undefined, 10_000, 'the private reply');
  return s.fake.ephemerals.at(-1)!.text;
}

describe('slack: the Regenerate button', () => {
  it('gives the asker a new answer after the old one, which it replaces; others, and an older answer, are told why', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.mention('C1', { text: `<@${s.fake.botUserId}> what is this?`, files: [file] });
    const first = await answerWithButton('C1', ask.ts, FORCED);
    expect(buttonsOf(first)).toEqual([
      expect.objectContaining({
        type: 'button',
        action_id: REGENERATE,
        value: `slack:C1:${ask.ts}`,
        text: { type: 'plain_text', text: 'Regenerate' },
      }),
    ]);
    const key = slackKey(s.fake.teamId, 'C1', ask.ts);

    // bob did not ask: a private no, the answer keeps its button
    expect(await press(first, 'U0BOB', true)).toBe('Only the person who asked can regenerate this answer.');
    expect(buttonsOf(first)).toHaveLength(1);

    // alice: a new answer in the thread, the old one replaced
    await press(first, 'U0ALICE');
    const second = await answerWithButton('C1', ask.ts, `${HEADER}\n${FORCED}`);
    expect(second.ts).not.toBe(first.ts);
    const value = buttonsOf(second)[0]!.value;
    expect(value).toMatch(/^slack:C1:rg\d+/);
    await s.fake.waitFor(
      () => (first.text.endsWith('_Replaced by a regenerated answer below._') ? true : undefined),
      10_000,
      'the old answer marked',
    );
    expect(first.text).toBe(`${FORCED}\n_Replaced by a regenerated answer below._`);
    expect(first.blocks).toEqual([]);
    expect((await s.manager.history(key))!.turns.map((t) => [t.user, t.by, t.requestId])).toEqual([['what is this?', 'U0ALICE', value]]);

    // a follow-up: its answer carries the button now, the regenerated answer's is taken off
    const shown = { ...second }; // (as a client that has not refreshed still shows it)
    await s.fake.reply('C1', ask.ts, { text: 'and the background?' });
    const third = await answerWithButton('C1', ask.ts, FORCED);
    expect(buttonsOf(third)[0]!.value).toMatch(/^slack:C1:\d/);
    await s.fake.waitFor(() => ((second.blocks ?? []).length === 0 ? true : undefined), 10_000, 'the button taken off');
    expect(second.text).toBe(`${HEADER}\n${FORCED}`);
    // pressed all the same: no longer the last answer, told why privately
    expect(await press(shown, 'U0ALICE', true)).toBe('Only the latest answer in a conversation can be regenerated.');
    expect((await s.manager.history(key))!.turns.map((t) => t.requestId)).toEqual([value, expect.stringMatching(/^slack:C1:/)]);
  }, 60_000);

  it("after a restart, a follow-up's answer still takes the button off the answer before it (its text read back)", async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.mention('C4', { text: `<@${s.fake.botUserId}> before the restart?`, files: [file] });
    const first = await answerWithButton('C4', ask.ts, FORCED);
    await s.adapter.close();
    s.adapter = await startSlack(s.fake, s.manager, { log: (l) => s.logs.push(l) });
    await s.fake.reply('C4', ask.ts, { text: 'and after it?' });
    await s.fake.waitFor(
      () => textReplies(s.fake, 'C4', ask.ts).find((m) => m.ts !== first.ts && m.text === FORCED && buttonsOf(m).length === 1),
      20_000,
      'the follow-up answer with its button',
    );
    await s.fake.waitFor(() => ((first.blocks ?? []).length === 0 ? true : undefined), 10_000, 'the button taken off');
    expect(first.text).toBe(FORCED);
  }, 60_000);

  it('pressed twice at once: one new answer; the second press is told privately', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.mention('C3', { text: `<@${s.fake.botUserId}> twice?`, files: [file] });
    const first = await answerWithButton('C3', ask.ts, FORCED);
    const n = s.fake.ephemerals.length;
    await Promise.all([press(first, 'U0ALICE'), press(first, 'U0ALICE')]);
    await s.fake.waitFor(() => s.fake.ephemerals.length > n || undefined, 10_000, 'the private reply');
    expect(s.fake.ephemerals.at(-1)!.text).toBe('This answer is being regenerated already.');
    await answerWithButton('C3', ask.ts, `${HEADER}\n${FORCED}`);
    await s.fake.waitFor(() => (first.text.endsWith('below._') ? true : undefined), 10_000, 'the old answer marked');
    expect(textReplies(s.fake, 'C3', ask.ts).filter((m) => m.text.startsWith(HEADER))).toHaveLength(1);
    expect((await s.manager.history(slackKey(s.fake.teamId, 'C3', ask.ts)))!.turns).toHaveLength(1);
  }, 60_000);

  it('in a direct message: the new answer follows in the DM', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    await s.fake.say('D7', { text: 'what is this?', files: [file] });
    const first = await answerWithButton('D7', undefined, FORCED);
    await press(first, 'U0ALICE');
    const second = await answerWithButton('D7', undefined, `${HEADER}\n${FORCED}`);
    expect(second.thread_ts).toBeUndefined();
    const turns = (await s.manager.history(dmKey(s.fake.teamId, 'D7')))!.turns;
    expect(turns.map((t) => t.requestId)).toEqual([buttonsOf(second)[0]!.value]);
  }, 60_000);

  it('a new answer not given (here: the model fails once): the old answer keeps its place and gets its button back', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.mention('C2', { text: `<@${s.fake.botUserId}> and this?`, files: [file] });
    const first = await answerWithButton('C2', ask.ts, FORCED);
    const fails = vi.spyOn(s.model, 'answer').mockImplementationOnce(
      // biome-ignore lint/correctness/useYield: a run that fails before its first token
      async function* () {
        throw new Error('the device was lost');
      },
    );
    await press(first, 'U0ALICE');
    await s.fake.waitFor(
      () => textReplies(s.fake, 'C2', ask.ts).find((m) => /^_Regenerated: .*\n:warning: /.test(m.text)),
      20_000,
      'the error',
    );
    await s.fake.waitFor(() => (buttonsOf(first).length === 1 ? true : undefined), 10_000, 'the button given back');
    fails.mockRestore();
    expect(first.text).toBe(FORCED);
    expect(buttonsOf(first)[0]!.value).toBe(`slack:C2:${ask.ts}`);
    expect((await s.manager.history(slackKey(s.fake.teamId, 'C2', ask.ts)))!.turns.map((t) => t.requestId)).toEqual([`slack:C2:${ask.ts}`]);
  }, 60_000);
});
