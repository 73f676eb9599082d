// "Forget this conversation", the message shortcut on any message of a bot thread: the real Bolt app on the fake
// Slack, the real ConversationManager and the demo model. Someone who took part (or a workspace admin, per
// users.info) deletes the thread's image and history; anyone else is told no, privately, in the thread; it waits
// for the requests sent in the thread before it; without the users:read scope admins are refused and the log says
// which scope is missing. And app_uninstalled: the workspace's conversations all go; channel_deleted and
// group_deleted: the channel's.
import { describe, expect, it } from 'vitest';
import { slackKey as keyOf } from '../../adapters/slack/answer.js';
import type { FakeMessage } from './fake-slack.js';
import { squarePng, textReplies, useSlackStack, waitForAnswers, waitForText } from './helpers.js';

const FORCED = '<p>green square</p> {<20><20><70><70>} on a grey background';
const FORGET = 'forget_conversation';
const FORGOTTEN = "Forgotten: this conversation's image and history are deleted. Send an image to start again.";
const NOT_YOURS = 'Only someone who took part in this conversation, or a workspace admin, can make me forget it.';

const s = useSlackStack(FORCED);
const slackKey = (channel: string, thread: string) => keyOf(s.fake.teamId, channel, thread);

/** `user` forgets the thread of `msg`; the private reply they get. */
async function forget(msg: FakeMessage, user: string): Promise<{ text: string; thread?: string; user: string }> {
  const n = s.fake.ephemerals.length;
  expect((await s.fake.sendShortcut(msg, { user, callbackId: FORGET })).status).toBe(200);
  return s.fake.waitFor(() => s.fake.ephemerals.slice(n).find((e) => e.user === user), 20_000, `the reply to ${user}'s forget`);
}

/** Alice asks about an image in `channel`; resolves once it is answered. */
async function asked(channel: string): Promise<FakeMessage> {
  const file = s.fake.addFile({ name: 'square.png', data: await squarePng(), mimetype: 'image/png' });
  const { msg } = await s.fake.mention(channel, { text: 'what is this?', files: [file] });
  await waitForAnswers(s.fake, channel, msg.ts, 1);
  return msg;
}

describe('slack: "Forget this conversation"', () => {
  it('is refused to someone else; the asker forgets the thread from any of its messages; a follow-up then has no image', async () => {
    const ask = await asked('F1');
    const bob = await forget(ask, 'U0BOB');
    expect(bob).toEqual({ channel: 'F1', user: 'U0BOB', text: NOT_YOURS, thread: ask.ts });
    expect((await s.manager.history(slackKey('F1', ask.ts)))?.turns).toHaveLength(1);
    expect(s.fake.callsOf('users.info').map((c) => c.args.user)).toEqual(['U0BOB']);

    // from the bot's answer in the thread (a message whose thread_ts is the thread)
    const [reply] = textReplies(s.fake, 'F1', ask.ts);
    expect(reply!.thread_ts).toBe(ask.ts);
    expect((await forget(reply!, 'U0ALICE')).text).toBe(FORGOTTEN);
    expect(await s.manager.history(slackKey('F1', ask.ts))).toBeNull();
    expect(s.logs).toContain(`slack: conversation F1/${ask.ts} forgotten at the request of user U0ALICE`);
    expect(s.fake.callsOf('users.info')).toHaveLength(1); // a participant needs no lookup

    await s.fake.reply('F1', ask.ts, { text: 'and the colour?' });
    await waitForText(s.fake, 'F1', ask.ts, /There is no image in this conversation/);
    // the forget itself posted nothing in the thread but the private reply
    expect(textReplies(s.fake, 'F1', ask.ts)).toHaveLength(2);
  });

  it("a workspace admin may forget anyone's thread; a thread with nothing stored says so", async () => {
    const ask = await asked('F2');
    s.fake.admins.add('U0ADMIN');
    expect((await forget(ask, 'U0ADMIN')).text).toBe(FORGOTTEN);
    expect(await s.manager.history(slackKey('F2', ask.ts))).toBeNull();
    expect((await forget(ask, 'U0ADMIN')).text).toBe('I have nothing stored for this conversation.');
    const lonely = s.fake.addMessage('F2', { text: 'a message the bot never answered' });
    expect((await forget(lonely, 'U0BOB')).text).toBe('I have nothing stored for this conversation.');
  });

  it("is done after the thread's earlier requests: a forget sent right after a question finds its answer stored", async () => {
    const file = s.fake.addFile({ name: 'square.png', data: await squarePng(), mimetype: 'image/png' });
    const { msg } = await s.fake.mention('F3', { text: 'what is this?', files: [file] });
    // sent before the answer (the image is still being downloaded and encoded)
    expect((await forget(msg, 'U0ALICE')).text).toBe(FORGOTTEN);
    await waitForAnswers(s.fake, 'F3', msg.ts, 1);
    expect(await s.manager.history(slackKey('F3', msg.ts))).toBeNull();
  });

  it("app_uninstalled: the workspace's conversations are forgotten at once, another workspace's stay", async () => {
    // (the earlier tests' threads here are forgotten already)
    const ask = await asked('F5');
    const ask2 = await asked('F5');
    const other = keyOf('T0OTHER', 'C1', '1');
    const events = s.manager.handle({ key: other, user: 'U0X', text: 'hi', image: await squarePng() });
    for await (const _ of events);
    expect(await s.manager.history(other)).not.toBeNull();
    expect((await s.fake.sendEvent({ type: 'app_uninstalled' })).status).toBe(200);
    await s.fake.waitFor(() => s.logs.find((l) => l.startsWith('slack: the app was uninstalled')), 10_000, 'the log line');
    const line = s.logs.find((l) => l.startsWith('slack: the app was uninstalled'))!;
    expect(line).toBe('slack: the app was uninstalled from workspace T0FAKE: 2 conversations forgotten');
    expect(await s.manager.history(slackKey('F5', ask.ts))).toBeNull();
    expect(await s.manager.history(slackKey('F5', ask2.ts))).toBeNull();
    expect(await s.manager.history(other)).not.toBeNull();
  });

  it("tokens_revoked of the bot's token: the workspace's conversations are forgotten; of a user's token alone, nothing", async () => {
    const ask = await asked('F6');
    expect((await s.fake.sendEvent({ type: 'tokens_revoked', tokens: { oauth: ['U0ALICE'] } })).status).toBe(200);
    expect((await s.fake.sendEvent({ type: 'tokens_revoked', tokens: { bot: ['U0SOMEOTHERBOT'] } })).status).toBe(200);
    expect(await s.manager.history(slackKey('F6', ask.ts))).not.toBeNull();
    expect((await s.fake.sendEvent({ type: 'tokens_revoked', tokens: { oauth: [], bot: [s.fake.botUserId] } })).status).toBe(200);
    await s.fake.waitFor(() => s.logs.find((l) => l.startsWith("slack: the bot's token was revoked")), 10_000, 'the log line');
    expect(s.logs.filter((l) => l.startsWith("slack: the bot's token was revoked"))).toEqual([
      "slack: the bot's token was revoked in workspace T0FAKE: 1 conversation forgotten",
    ]);
    expect(await s.manager.history(slackKey('F6', ask.ts))).toBeNull();
  });

  it('without the users:read scope an admin is refused and the log says what to add, once', async () => {
    const ask = await asked('F4');
    s.fake.admins.add('U0ADMIN2');
    s.fake.scopes.delete('users:read');
    try {
      expect((await forget(ask, 'U0ADMIN2')).text).toBe(NOT_YOURS);
      expect((await forget(ask, 'U0ADMIN2')).text).toBe(NOT_YOURS);
    } finally {
      s.fake.scopes.add('users:read');
    }
    expect((await s.manager.history(slackKey('F4', ask.ts)))?.turns).toHaveLength(1);
    expect(s.logs.filter((l) => l.includes('users:read'))).toEqual([
      "slack: the app lacks the users:read scope, so workspace admins cannot stop or forget others' answers (add the scope and reinstall the app)",
    ]);
  });

  it("channel_deleted, group_deleted: the deleted channel's conversations are forgotten, other channels' stay", async () => {
    const [a, b] = [await asked('C61'), await asked('C61')];
    const kept = await asked('C62');
    const secret = await asked('G63');
    expect((await s.fake.sendEvent({ type: 'channel_deleted', channel: 'C61' })).status).toBe(200);
    await s.fake.waitFor(() => s.logs.includes('slack: channel C61 was deleted: 2 conversations forgotten'), 10_000, 'the log line');
    expect(await s.manager.history(slackKey('C61', a.ts))).toBeNull();
    expect(await s.manager.history(slackKey('C61', b.ts))).toBeNull();
    expect(await s.manager.history(slackKey('C62', kept.ts))).not.toBeNull();
    expect((await s.fake.sendEvent({ type: 'group_deleted', channel: 'G63' })).status).toBe(200);
    await s.fake.waitFor(() => s.logs.includes('slack: channel G63 was deleted: 1 conversation forgotten'), 10_000, 'the log line');
    expect(await s.manager.history(slackKey('G63', secret.ts))).toBeNull();
    expect(await s.manager.history(slackKey('C62', kept.ts))).not.toBeNull();
  });
});
