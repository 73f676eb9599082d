// Deleted questions on Slack: the real Bolt app on the fake Slack (message_deleted, and the message_changed to a
// tombstone that Slack sends for a thread's first message with replies), the real ConversationManager and the demo
// model (its answer forced, with a box: each answer is a text message and the annotated image's file). A deleted
// message that asked a question has its turn forgotten and the bot's answers to it deleted (messages and files); the
// message that brought the image takes the whole conversation with it, and the thread is told.
import { describe, expect, it } from 'vitest';
import { dmKey, slackKey as keyOf } from '../../adapters/slack/answer.js';
import type { FakeMessage } from './fake-slack.js';
import { squarePng, textReplies, useSlackStack, waitForAnswers } from './helpers.js';

const FORCED = '<p>green square</p> {<20><20><70><70>} on a grey background';
const FORGOTTEN = '_The image was deleted, so I have forgotten this conversation. Send an image to start again._';
const s = useSlackStack(FORCED);
const { logs } = s;
const slackKey = (channel: string, thread: string) => keyOf(s.fake.teamId, channel, thread);
const askedIn = async (key: ReturnType<typeof slackKey>) => (await s.manager.history(key))?.turns.map((t) => t.user);
const botTs = (channel: string, thread?: string) => s.fake.botMessages(channel, thread).map((m) => m.ts);

/** The log line of the deletion of message `ts` once handled. */
function deletionHandled(channel: string, ts: string): Promise<string> {
  return s.fake.waitFor(
    () => logs.find((l) => l.startsWith(`slack: deleted message ${ts} in ${channel}: `)),
    20_000,
    `the deletion of ${ts}`,
  );
}

/**
 * Deletes `msg`, the first message of a thread whose conversation's image it brought (answered once): the conversation
 * goes, with the answer (text and image); the thread is told, and that is all the bot has left there.
 */
async function imageMessageDeleted(msg: FakeMessage): Promise<void> {
  const key = slackKey(msg.channel, msg.ts);
  await s.fake.userDeletes(msg);
  expect(await deletionHandled(msg.channel, msg.ts)).toMatch(/: conversation forgotten, 2 answer message\(s\) deleted$/);
  expect(await s.manager.history(key)).toBeNull();
  await s.fake.waitFor(() => textReplies(s.fake, msg.channel, msg.ts).find((m) => m.text === FORGOTTEN), 10_000, 'the thread told');
  expect(botTs(msg.channel, msg.ts)).toHaveLength(1);
}

describe('slack: a deleted question', () => {
  it("is forgotten with the bot's answer to it (text and image); the message with the image takes the conversation", async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.mention('C1', { text: 'what is this?', files: [file] });
    await waitForAnswers(s.fake, 'C1', ask.ts, 1);
    const { msg: q2 } = await s.fake.reply('C1', ask.ts, { user: 'U0BOB', text: 'is it a secret?' });
    await waitForAnswers(s.fake, 'C1', ask.ts, 2);
    const { msg: q3 } = await s.fake.reply('C1', ask.ts, { text: 'and its colour?' });
    await waitForAnswers(s.fake, 'C1', ask.ts, 3);
    const key = slackKey('C1', ask.ts);
    expect(await askedIn(key)).toEqual(['what is this?', 'is it a secret?', 'and its colour?']);
    const all = botTs('C1', ask.ts);
    expect(all).toHaveLength(6);

    // a follow-up deleted: its turn and its answer (text and file) go
    await s.fake.userDeletes(q2);
    expect(await deletionHandled('C1', q2.ts)).toMatch(/: question forgotten, 2 answer message\(s\) deleted$/);
    expect(await askedIn(key)).toEqual(['what is this?', 'and its colour?']);
    expect(botTs('C1', ask.ts)).toEqual([...all.slice(0, 2), ...all.slice(4)]);
    expect(s.fake.callsOf('files.delete')).toHaveLength(1);

    // the thread's first message (it has replies: Slack leaves a tombstone): the conversation goes, the thread is told
    await s.fake.userDeletes(ask);
    expect(ask.subtype).toBe('tombstone');
    expect(await deletionHandled('C1', ask.ts)).toMatch(/: conversation forgotten, 2 answer message\(s\) deleted$/);
    expect(await s.manager.history(key)).toBeNull();
    await s.fake.waitFor(() => textReplies(s.fake, 'C1', ask.ts).find((m) => m.text === FORGOTTEN), 10_000, 'the thread told');
    expect(botTs('C1', ask.ts)).toEqual([...all.slice(4), expect.any(String)]);

    // a message the bot never answered: nothing done, nothing logged (checked once the next deletion is handled)
    const { msg: chat } = await s.fake.say('C1', { text: 'hello all', user: 'U0BOB' });
    await s.fake.userDeletes(chat);
    // a later question of the forgotten conversation: nothing left to forget, its answer still goes
    await s.fake.userDeletes(q3);
    expect(await deletionHandled('C1', q3.ts)).toMatch(/: not asked, 2 answer message\(s\) deleted$/);
    expect(textReplies(s.fake, 'C1', ask.ts).map((m) => m.text)).toEqual([FORGOTTEN]);
    expect(logs.filter((l) => l.includes(chat.ts))).toEqual([]);
  }, 60_000);

  it('in a DM: the conversation is the whole DM, told in the DM', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.say('D1', { text: 'what is this?', files: [file] });
    await waitForAnswers(s.fake, 'D1', undefined, 1);
    const key = dmKey(s.fake.teamId, 'D1');
    expect(await askedIn(key)).toEqual(['what is this?']);
    const before = botTs('D1');
    await s.fake.userDeletes(ask);
    expect(await deletionHandled('D1', ask.ts)).toMatch(/: conversation forgotten, 2 answer message\(s\) deleted$/);
    expect(await s.manager.history(key)).toBeNull();
    await s.fake.waitFor(() => textReplies(s.fake, 'D1').find((m) => m.text === FORGOTTEN), 10_000, 'the DM told');
    expect(botTs('D1').filter((ts) => before.includes(ts))).toEqual([]);
  }, 60_000);

  it('the image posted before the mention that asked about it: deleting it forgets the conversation', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const root = s.fake.addMessage('C3', { user: 'U0BOB', text: 'my picture', files: [file] });
    await s.fake.sendEvent(s.fake.messageEvent(root));
    const { msg } = await s.fake.mention('C3', { text: 'what is this?', thread_ts: root.ts });
    await waitForAnswers(s.fake, 'C3', root.ts, 1);
    const key = slackKey('C3', root.ts);
    expect((await s.manager.history(key))!.image.askedIn).toBe(`slack:C3:${root.ts}`);
    expect(msg.thread_ts).toBe(root.ts);

    await imageMessageDeleted(root);
  }, 60_000);

  it('the message "Describe image" was used on: deleting it forgets the conversation and deletes the answer', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const pic = s.fake.addMessage('C4', { user: 'U0BOB', text: 'look at this', files: [file] });
    expect((await s.fake.sendShortcut(pic, { user: 'U0CAROL' })).status).toBe(200);
    await waitForAnswers(s.fake, 'C4', pic.ts, 1);
    const key = slackKey('C4', pic.ts);
    expect((await s.manager.history(key))!.image.askedIn).toBe(`slack:C4:${pic.ts}`);

    await imageMessageDeleted(pic);
  }, 60_000);

  it("one of the bot's answers deleted by an admin: its exchange leaves the conversation, with the answer's image", async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.mention('C5', { text: 'what is this?', files: [file] });
    await waitForAnswers(s.fake, 'C5', ask.ts, 1);
    const { msg: q2 } = await s.fake.reply('C5', ask.ts, { text: 'say something rude' });
    await waitForAnswers(s.fake, 'C5', ask.ts, 2);
    const key = slackKey('C5', ask.ts);
    const [, a2] = textReplies(s.fake, 'C5', ask.ts);
    const before = botTs('C5', ask.ts);

    await s.fake.userDeletes(a2!);
    const line = await s.fake.waitFor(
      () => logs.find((l) => l.startsWith(`slack: deleted answer ${a2!.ts} in C5: `)),
      20_000,
      'the deletion handled',
    );
    expect(line).toMatch(/: question forgotten, 1 other answer message\(s\) deleted$/);
    expect(await askedIn(key)).toEqual(['what is this?']);
    expect(s.fake.messages.includes(q2)).toBe(true);
    // the answer's annotated image went with it; the first answer stays
    expect(botTs('C5', ask.ts)).toEqual(before.slice(0, 2));
  }, 60_000);

  it('a file deleted from its message (the message stays): the image read from it is forgotten as with its message', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await s.fake.mention('C6', { text: 'what is this?', files: [file] });
    await waitForAnswers(s.fake, 'C6', ask.ts, 1);
    const key = slackKey('C6', ask.ts);
    expect(await askedIn(key)).toEqual(['what is this?']);

    await s.fake.userDeletesFile(file.id);
    const line = await s.fake.waitFor(
      () => logs.find((l) => l.startsWith(`slack: deleted file ${file.id}: `)),
      20_000,
      'the deletion handled',
    );
    expect(line).toMatch(/: conversation forgotten, 2 answer message\(s\) deleted$/);
    expect(await s.manager.history(key)).toBeNull();
    await s.fake.waitFor(() => textReplies(s.fake, 'C6', ask.ts).find((m) => m.text === FORGOTTEN), 10_000, 'the thread told');
    expect(s.fake.messages.includes(ask)).toBe(true);
  }, 60_000);
});
