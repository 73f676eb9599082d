// Deleted questions on Discord: the real discord.js client on the fake Discord (MESSAGE_DELETE and MESSAGE_DELETE_BULK
// as Discord sends them: ids only), the real ConversationManager and the demo model (its answer forced). A deleted
// message that asked a question has its turn forgotten and the bot's answers to it deleted; the message that brought
// the image takes the whole conversation with it (and the bot says so where it was). Also after a restart, in a DM
// the new client has no channel for, and in a channel where the bot cannot open threads.
import { describe, expect, it } from 'vitest';
import type { ConversationKey } from '../../src/conversation/index.js';
import type { ApiMessage } from './fake-discord.js';
import {
  answered,
  describeImageCommand,
  discordKey,
  firstButton,
  publicBotMessages,
  startAdapter,
  testPng,
  until,
  useStack,
} from './helpers.js';

const FORCED = 'a red square on a grey background';
const FORGOTTEN = '-# The image was deleted, so I have forgotten this conversation. Send an image to start again.';
const s = useStack(FORCED);
const { logs } = s;

const botMessagesIn = (channelId: string): ApiMessage[] => publicBotMessages(s.fake, channelId);
const key = (channel: string, thread: string, workspace = s.w.guildId): ConversationKey => discordKey(workspace, channel, thread);
const askedIn = async (k: ConversationKey) => (await s.manager.history(k))?.turns.map((t) => t.user);
const imageKeys = async () => {
  const out: string[] = [];
  for await (const [k] of s.manager.store.iterator!(undefined)) if (String(k).startsWith('img:')) out.push(String(k));
  return out;
};

async function image(name: string) {
  return s.fake.addAttachment(name, await testPng(80, 60), 'image/png', { width: 80, height: 60 });
}

/** The log line of the deletion of message `id` once handled. */
async function deletionHandled(id: string): Promise<string> {
  const line = () => logs.find((l) => l.startsWith(`discord: deleted message ${id} (`));
  await until(() => line() !== undefined, `the deletion of ${id}; log:\n${logs.join('\n')}`);
  return line()!;
}

describe('a deleted question', () => {
  it("is forgotten with the bot's answer to it; the message with the image takes the conversation with it", async () => {
    const before = await imageKeys();
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'what is this?', { attachments: [await image('a.png')], mentionBot: true });
    const thread = ask.id;
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const q2 = s.fake.postMessage(thread, s.w.bob, 'is it a secret?');
    expect(await answered(logs, q2.id)).toMatch(/: answered/);
    const q3 = s.fake.postMessage(thread, s.w.alice, 'what colour is it?');
    expect(await answered(logs, q3.id)).toMatch(/: answered/);
    const [a1, a2, a3] = botMessagesIn(thread);
    const conv = key(s.w.general, thread);
    expect(await askedIn(conv)).toEqual(['what is this?', 'is it a secret?', 'what colour is it?']);

    // a message that asked nothing: nothing done, nothing logged (checked below, once later deletions are handled)
    const chat = s.fake.postMessage(s.w.general, s.w.bob, 'just chatting');
    s.fake.userDeletes(s.w.general, chat.id);
    // a follow-up deleted (by a moderator, say): its turn and its answer go, the rest stays
    s.fake.userDeletes(thread, q2.id);
    expect(await deletionHandled(q2.id)).toMatch(/: question forgotten, 1 answer message\(s\) deleted$/);
    expect(await askedIn(conv)).toEqual(['what is this?', 'what colour is it?']);
    expect(botMessagesIn(thread).map((m) => m.id)).toEqual([a1.id, a3.id]);
    expect(s.fake.message(thread, a2.id)).toBeUndefined();

    // the message that brought the image: the conversation and the image go, its answer too; the thread is told
    s.fake.userDeletes(s.w.general, ask.id);
    expect(await deletionHandled(ask.id)).toMatch(/: conversation forgotten, 1 answer message\(s\) deleted$/);
    expect(await s.manager.history(conv)).toBeNull();
    expect(await imageKeys()).toEqual(before);
    const left = botMessagesIn(thread);
    expect(left.map((m) => m.id)).toEqual([a3.id, left.at(-1)!.id]);
    expect(left.at(-1)!.content).toBe(FORGOTTEN);
    expect(logs.filter((l) => l.includes(chat.id))).toEqual([]);
  }, 60_000);

  it('in a DM after a restart, and a moderator purge in a channel where the bot cannot open threads', async () => {
    const dm = s.fake.addDm(s.w.alice);
    const ask = s.fake.postMessage(dm, s.w.alice, 'what is this?', { attachments: [await image('d.png')] });
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const answer = botMessagesIn(dm).at(-1)!;
    // a new client, with no channel for the DM (discord.js would drop the deletion): the kept answers say where
    await s.adapter.close();
    s.adapter = await startAdapter(s.fake, s.manager, logs);
    s.fake.userDeletes(dm, ask.id);
    expect(await deletionHandled(ask.id)).toMatch(/: conversation forgotten, 1 answer message\(s\) deleted$/);
    expect(s.fake.message(dm, answer.id)).toBeUndefined();
    expect(botMessagesIn(dm).at(-1)!.content).toBe(FORGOTTEN);
    expect(await s.manager.history(key(dm, dm, '@me'))).toBeNull();

    s.fake.denyThreads.add(s.w.other);
    try {
      const q = s.fake.postMessage(s.w.other, s.w.alice, 'what is it?', { attachments: [await image('o.png')], mentionBot: true });
      expect(await answered(logs, q.id)).toMatch(/: answered/);
      const first = botMessagesIn(s.w.other).at(-1)!;
      // a follow-up in the channel: a reply to the bot's answer
      const f = s.fake.postMessage(s.w.other, s.w.bob, 'and its size?', { mentionBot: true, replyTo: first.id });
      expect(await answered(logs, f.id)).toMatch(/: answered/);
      const second = botMessagesIn(s.w.other).at(-1)!;
      expect(second.message_reference?.message_id).toBe(f.id);
      const conv = key(s.w.other, `message:${q.id}`);
      expect(await askedIn(conv)).toEqual(['what is it?', 'and its size?']);
      const chat = s.fake.postMessage(s.w.other, s.w.bob, 'unrelated');

      // one purge: the follow-up and a message that asked nothing
      s.fake.userDeletes(s.w.other, f.id, chat.id);
      expect(await deletionHandled(f.id)).toMatch(/: question forgotten, 1 answer message\(s\) deleted$/);
      expect(await askedIn(conv)).toEqual(['what is it?']);
      expect(s.fake.message(s.w.other, second.id)).toBeUndefined();
      expect(s.fake.message(s.w.other, first.id)).toBeDefined();
      // the first question: its conversation goes, nothing is said in the channel (its answer went)
      const posts = botMessagesIn(s.w.other).length;
      s.fake.userDeletes(s.w.other, q.id);
      expect(await deletionHandled(q.id)).toMatch(/: conversation forgotten, 1 answer message\(s\) deleted$/);
      expect(await s.manager.history(conv)).toBeNull();
      expect(botMessagesIn(s.w.other).length).toBe(posts - 1);
    } finally {
      s.fake.denyThreads.delete(s.w.other);
    }
  }, 60_000);

  it('answered before the answers were kept (an earlier version): still forgotten, found by where it was asked', async () => {
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'what is this?', { attachments: [await image('e.png')], mentionBot: true });
    const thread = ask.id;
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const q2 = s.fake.postMessage(thread, s.w.alice, 'and now?');
    expect(await answered(logs, q2.id)).toMatch(/: answered/);
    for (const id of [ask.id, q2.id]) expect(await s.manager.store.delete(`discord:answers:discord-${id}`)).toBe(true);
    const conv = key(s.w.general, thread);
    const posts = botMessagesIn(thread).length;

    s.fake.userDeletes(thread, q2.id);
    expect(await deletionHandled(q2.id)).toMatch(/: question forgotten$/);
    expect(await askedIn(conv)).toEqual(['what is this?']);
    s.fake.userDeletes(s.w.general, ask.id);
    expect(await deletionHandled(ask.id)).toMatch(/: conversation forgotten$/);
    expect(await s.manager.history(conv)).toBeNull();
    // (its answers were not known: they stay; the thread is told)
    expect(botMessagesIn(thread).length).toBe(posts + 1);
  }, 60_000);

  it('the image of the message a question replied to: deleting that message forgets the conversation', async () => {
    const pic = s.fake.postMessage(s.w.general, s.w.bob, 'my picture', { attachments: [await image('b.png')] });
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'what is this?', { mentionBot: true, replyTo: pic.id });
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const conv = key(s.w.general, ask.id);
    expect((await s.manager.history(conv))!.image.askedIn).toBe(`discord-${pic.id}`);
    const answer = botMessagesIn(ask.id).at(-1)!;

    s.fake.userDeletes(s.w.general, pic.id);
    expect(await deletionHandled(pic.id)).toMatch(/: conversation forgotten, 1 answer message\(s\) deleted$/);
    expect(await s.manager.history(conv)).toBeNull();
    expect(s.fake.message(ask.id, answer.id)).toBeUndefined();
    expect(botMessagesIn(ask.id).at(-1)!.content).toBe(FORGOTTEN);
  }, 60_000);

  it('the image attachment removed from its message (the text kept): forgotten as if the message were deleted', async () => {
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'what is this?', { attachments: [await image('r.png')], mentionBot: true });
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const conv = key(s.w.general, ask.id);
    const answer = botMessagesIn(ask.id).at(-1)!;
    // an edit that keeps the image changes nothing here
    s.fake.userEdits(s.w.general, ask.id, 'what is this?', { mentionBot: true });

    s.fake.userEdits(s.w.general, ask.id, 'what is this?', { mentionBot: true, removeAttachments: true });
    const line = () => logs.find((l) => l.startsWith(`discord: image removed from message ${ask.id} (`));
    await until(() => line() !== undefined, 'the removal handled');
    expect(line()).toMatch(/: conversation forgotten, 1 answer message\(s\) deleted$/);
    expect(await s.manager.history(conv)).toBeNull();
    expect(s.fake.message(ask.id, answer.id)).toBeUndefined();
    expect(botMessagesIn(ask.id).at(-1)!.content).toBe(FORGOTTEN);
    expect(logs.filter((l) => l.startsWith(`discord: image removed from message ${ask.id} (`))).toHaveLength(1);
  }, 60_000);

  it('the message "Describe image" was used on: deleting it forgets the conversation and deletes the answer', async () => {
    const target = s.fake.postMessage(s.w.general, s.w.bob, 'look at my picture', { attachments: [await image('t.png')] });
    const { id, token } = s.fake.interact(s.w.general, s.w.alice, describeImageCommand(target));
    expect(await answered(logs, id)).toMatch(/: answered/);
    const original = s.fake.original(token)!;
    await until(() => s.fake.channel(original.id)?.type === 11, 'the thread on the answer');
    const conv = key(s.w.general, original.id);
    expect((await s.manager.history(conv))!.image.askedIn).toBe(`discord-${target.id}`);

    s.fake.userDeletes(s.w.general, target.id);
    expect(await deletionHandled(target.id)).toMatch(/: conversation forgotten, 1 answer message\(s\) deleted$/);
    expect(await s.manager.history(conv)).toBeNull();
    expect(s.fake.message(s.w.general, original.id)).toBeUndefined();
    // (said in the thread opened on the answer)
    expect(botMessagesIn(original.id).at(-1)!.content).toBe(FORGOTTEN);

    // the same from an edit that removes the image attachment from the message described (its text kept)
    const pic = s.fake.postMessage(s.w.general, s.w.bob, 'another picture', { attachments: [await image('u.png')] });
    const again = s.fake.interact(s.w.general, s.w.alice, describeImageCommand(pic));
    expect(await answered(logs, again.id)).toMatch(/: answered/);
    const reply = s.fake.original(again.token)!;
    await until(() => s.fake.channel(reply.id)?.type === 11, 'the second thread');
    s.fake.userEdits(s.w.general, pic.id, 'another picture', { removeAttachments: true });
    const line = () => logs.find((l) => l.startsWith(`discord: image removed from message ${pic.id} (`));
    await until(() => line() !== undefined, 'the removal handled');
    expect(line()).toMatch(/: conversation forgotten, 1 answer message\(s\) deleted$/);
    expect(await s.manager.history(key(s.w.general, reply.id))).toBeNull();
  }, 60_000);

  it("one of the bot's answers deleted by a moderator: its exchange leaves the conversation, the question stays", async () => {
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'what is this?', { attachments: [await image('m.png')], mentionBot: true });
    const thread = ask.id;
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const q2 = s.fake.postMessage(thread, s.w.alice, 'say something rude');
    expect(await answered(logs, q2.id)).toMatch(/: answered/);
    const [a1, a2] = botMessagesIn(thread);
    const conv = key(s.w.general, thread);

    s.fake.userDeletes(thread, a2.id);
    const line = () => logs.find((l) => l.startsWith(`discord: deleted answer ${a2.id} (`));
    await until(() => line() !== undefined, 'the deletion handled');
    expect(line()).toMatch(/: question forgotten, 0 other answer message\(s\) deleted$/);
    expect(await askedIn(conv)).toEqual(['what is this?']);
    expect(s.fake.message(thread, q2.id)).toBeDefined();

    // an answer replaced by a Regenerate, deleted: it is no longer in the conversation, nothing else changes
    const q3 = s.fake.postMessage(thread, s.w.alice, 'what colour is it?');
    expect(await answered(logs, q3.id)).toMatch(/: answered/);
    const a3 = botMessagesIn(thread).at(-1)!;
    const press = s.fake.press(thread, a3.id, firstButton(a3).custom_id, s.w.alice, '0');
    await until(() => botMessagesIn(thread).length === 3 && s.fake.message(thread, a3.id)!.content.includes('Replaced'), 'regenerated');
    expect(press).toBeDefined();
    s.fake.userDeletes(thread, a3.id);
    const old = () => logs.find((l) => l.startsWith(`discord: deleted answer ${a3.id} (`));
    await until(() => old() !== undefined, 'the old answer handled');
    expect(old()).toMatch(/: an earlier answer, replaced since: nothing forgotten$/);
    expect(await askedIn(conv)).toEqual(['what is this?', 'what colour is it?']);
    // the regenerated one, deleted: that exchange goes
    const a4 = botMessagesIn(thread).at(-1)!;
    s.fake.userDeletes(thread, a4.id);
    await until(() => logs.some((l) => l.startsWith(`discord: deleted answer ${a4.id} (`)), 'the new answer handled');
    expect(await askedIn(conv)).toEqual(['what is this?']);

    // the answer about the image: that exchange goes, the conversation and its image stay (its message is there)
    s.fake.userDeletes(thread, a1.id);
    await until(() => logs.some((l) => l.startsWith(`discord: deleted answer ${a1.id} (`)), 'the second deletion handled');
    const h = (await s.manager.history(conv))!;
    expect(h.turns).toEqual([]);
    expect(h.image.askedIn).toBe(`discord-${ask.id}`);
    const follow = s.fake.postMessage(thread, s.w.alice, 'and now?');
    expect(await answered(logs, follow.id)).toMatch(/: answered/);
    expect(await askedIn(conv)).toEqual(['and now?']);
  }, 60_000);
});
