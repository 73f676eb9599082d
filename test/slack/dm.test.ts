// Direct messages with the bot (the app's Messages tab; `message.im` events, which Slack sends without an
// app_mention): every message is a request, all of one conversation, answered in the DM itself (or in the thread
// a message was sent in); /describe and the shortcuts there use the same conversation. The real Bolt app on the
// fake Slack, the real ConversationManager and the demo model.
import { describe, expect, it } from 'vitest';
import { dmKey } from '../../adapters/slack/answer.js';
import { fileReplies, squarePng, textReplies, useSlackStack } from './helpers.js';

const FORCED = '<p>green square</p> {<20><20><70><70>} on a grey background';
const ANSWER = '*green square* on a grey background';

const s = useSlackStack(FORCED);

/** Waits until the bot has posted `n` annotated images in the DM (each full answer ends with one). */
function answers(channel: string, n: number) {
  return s.fake.waitFor(
    () => (fileReplies(s.fake, channel).length >= n ? fileReplies(s.fake, channel) : undefined),
    20_000,
    `${n} answers`,
  );
}

describe('slack: direct messages', () => {
  it('answers in the DM itself; every later message there (top-level or in a thread) continues one conversation', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(), mimetype: 'image/png' });
    const { status } = await s.fake.say('D1', { text: 'what is this?', files: [file] });
    expect(status).toBe(200);
    const [image] = await answers('D1', 1);
    const [reply] = textReplies(s.fake, 'D1');
    expect(reply!.text).toBe(ANSWER);
    // in the DM itself: neither the answer nor its annotated image starts a thread
    expect(reply!.thread_ts).toBeUndefined();
    expect(image!.thread_ts).toBeUndefined();
    const key = dmKey(s.fake.teamId, 'D1');
    expect((await s.manager.history(key))?.turns.map((t) => [t.user, t.by])).toEqual([['what is this?', 'U0ALICE']]);

    // a plain message, no mention: a follow-up about the same image
    await s.fake.say('D1', { text: 'and the background?' });
    await answers('D1', 2);
    // a message in a thread of the DM: answered in that thread, same conversation
    await s.fake.reply('D1', reply!.ts, { text: 'tell me more' });
    await answers('D1', 3);
    expect(textReplies(s.fake, 'D1').at(-1)!.thread_ts).toBe(reply!.ts);
    expect((await s.manager.history(key))?.turns.map((t) => t.user)).toEqual(['what is this?', 'and the background?', 'tell me more']);
    // the bot's own messages there (echoed back as events) are not requests
    expect(textReplies(s.fake, 'D1')).toHaveLength(3);
  });

  it("messages sent one right after the other are taken in order: the second asks about the first one's image", async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(), mimetype: 'image/png' });
    await Promise.all([s.fake.say('D4', { text: 'look', files: [file] }), s.fake.say('D4', { text: 'and now?' })]);
    await answers('D4', 2);
    expect(textReplies(s.fake, 'D4').map((m) => m.text)).toEqual([ANSWER, ANSWER]);
    expect((await s.manager.history(dmKey(s.fake.teamId, 'D4')))?.turns.map((t) => t.user)).toEqual(['look', 'and now?']);
  });

  it('a file that is not an image is answered in the DM; a message without an image first says how to send one', async () => {
    await s.fake.say('D2', { text: 'hello' });
    // (the reply is posted with a status line first, then says what is wrong)
    const first = await s.fake.waitFor(() => textReplies(s.fake, 'D2').find((m) => !m.text.startsWith('_')), 20_000, 'the reply');
    expect(first.text).toMatch(/There is no image in this conversation/);
    expect(first.thread_ts).toBeUndefined();
    const doc = s.fake.addFile({ name: 'notes.txt', data: Buffer.from('hi'), mimetype: 'text/plain', filetype: 'text' });
    await s.fake.say('D2', { text: 'and this?', files: [doc] });
    const second = await s.fake.waitFor(() => textReplies(s.fake, 'D2').filter((m) => !m.text.startsWith('_'))[1], 20_000, 'the reply');
    expect(second.text).toContain('is not an image');
    expect(second.thread_ts).toBeUndefined();
  });

  it('/describe and "Forget this conversation" in a DM act on its one conversation', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(), mimetype: 'image/png' });
    s.fake.addMessage('D3', { text: 'here', files: [file] });
    await s.fake.sendCommand({ text: 'what is it?', channel: 'D3' });
    await answers('D3', 1);
    const [reply] = textReplies(s.fake, 'D3');
    expect(reply!.text).toBe(`<@U0ALICE> asked: what is it?\n${ANSWER}`);
    expect(reply!.thread_ts).toBeUndefined();
    await s.fake.say('D3', { text: 'and the colour?' });
    await answers('D3', 2);
    const key = dmKey(s.fake.teamId, 'D3');
    expect((await s.manager.history(key))?.turns).toHaveLength(2);

    const n = s.fake.ephemerals.length;
    await s.fake.sendShortcut(reply!, { callbackId: 'forget_conversation' });
    const told = await s.fake.waitFor(() => s.fake.ephemerals[n], 20_000, 'the reply to forget');
    expect(told.text).toBe("Forgotten: this conversation's image and history are deleted. Send an image to start again.");
    expect(await s.manager.history(key)).toBeNull();
  });
});
