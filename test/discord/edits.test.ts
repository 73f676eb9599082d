// Edited questions on Discord: the real discord.js client on the fake Discord (MESSAGE_UPDATE as Discord sends it),
// the real ConversationManager and the demo model (its answer forced). The asker edits the message that asked the
// conversation's latest question: it is answered again (in the thread opened on it, or as a reply to it), the new
// turn replaces the old one in the stored conversation, and the old answer says so and loses its Regenerate button.
// An edit of an earlier question, or one that leaves the text as it was (a link preview), is left alone; a message
// sent before a restart is edited all the same.
import { describe, expect, it } from 'vitest';
import type { ConversationKey } from '../../src/conversation/index.js';
import type { ApiMessage } from './fake-discord.js';
import { answered, discordKey, firstButton, publicBotMessages, startAdapter, testPng, until, useStack } from './helpers.js';

const FORCED = 'a red square on a grey background';
const EDITED = '-# The question was edited: this answer replaces the one before it in the conversation.';
const s = useStack(FORCED);
const { logs } = s;

const botMessagesIn = (channelId: string): ApiMessage[] => publicBotMessages(s.fake, channelId);
const key = (channel: string, thread: string, workspace = s.w.guildId): ConversationKey => discordKey(workspace, channel, thread);
const turnsOf = async (k: ConversationKey) => (await s.manager.history(k))!.turns.map((t) => [t.user, t.requestId, t.askedAs]);

async function image(name: string) {
  return s.fake.addAttachment(name, await testPng(80, 60), 'image/png', { width: 80, height: 60 });
}

/** The log line of the edit of message `id` once handled (answered, or left alone: "not answered"). */
async function editHandled(id: string): Promise<string> {
  const line = () => logs.find((l) => l.includes(`edit of message ${id} (`) && /: (answered|error|not answered) /.test(l));
  await until(() => line() !== undefined, `the edit of ${id}; log:\n${logs.join('\n')}`);
  const found = line()!;
  logs.splice(logs.indexOf(found), 1);
  return found;
}

describe('an edited question', () => {
  it('is answered again where its answer was; the old answer says so; only the latest question counts', async () => {
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'what is this?', { attachments: [await image('a.png')], mentionBot: true });
    const thread = ask.id;
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const first = botMessagesIn(thread).at(-1)!;

    // the message that opened the thread, edited: the new answer goes into the thread, with the Regenerate button
    s.fake.userEdits(s.w.general, ask.id, 'what colour is this?', { mentionBot: true });
    expect(await editHandled(ask.id)).toMatch(/: answered/);
    const second = botMessagesIn(thread).at(-1)!;
    expect(second.id).not.toBe(first.id);
    expect(second.content).toBe(`${EDITED}\n${FORCED}`);
    expect(firstButton(second).custom_id).toMatch(new RegExp(`^minigpt-regen:discord-${ask.id}-e\\d+$`));
    await until(() => s.fake.message(thread, first.id)!.content.endsWith('below.'), 'the old answer marked');
    expect(s.fake.message(thread, first.id)).toMatchObject({
      content: `${FORCED}\n-# The question was edited: answered again below.`,
      components: [],
    });
    const conv = key(s.w.general, thread);
    expect(await turnsOf(conv)).toEqual([
      ['what colour is this?', second.components[0].components[0].custom_id.slice(14), `discord-${ask.id}`],
    ]);

    // a follow-up in the thread, edited right after it was sent: answered with the edited text, either at once (the
    // edit came before the message was read: the edit itself then changes nothing) or answered again as a reply to it
    const follow = s.fake.postMessage(thread, s.w.alice, 'is it big?');
    s.fake.userEdits(thread, follow.id, 'is it small?');
    expect(await answered(logs, follow.id)).toMatch(/: answered/);
    const edit = await editHandled(follow.id);
    expect(edit).toMatch(/: (answered|not answered \(stale: The edited question is the same as the one answered\.\))/);
    const third = botMessagesIn(thread).at(-1)!;
    const again = !edit.includes('not answered');
    expect(third.content).toBe(again ? `${EDITED}\n${FORCED}` : FORCED);
    // (an answer in a thread follows its question; one to an edited question replies to it, which may be far above)
    expect(third.message_reference?.message_id).toBe(again ? follow.id : undefined);
    expect((await turnsOf(conv)).map((t) => t[0])).toEqual(['what colour is this?', 'is it small?']);
    const before = botMessagesIn(thread).length;

    // the first question edited again: no longer the latest, left alone without a word
    s.fake.userEdits(s.w.general, ask.id, 'what shape is this?', { mentionBot: true });
    expect(await editHandled(ask.id)).toMatch(
      /: not answered \(stale: Only the latest question in a conversation is answered again when edited\.\)/,
    );
    // the latest one with its text as it was (Discord sends MESSAGE_UPDATE for a link preview too): nothing at all
    s.fake.userEdits(thread, follow.id, 'is it small?');
    s.fake.userEdits(thread, follow.id, 'is it tiny?');
    expect(await editHandled(follow.id)).toMatch(/: answered/);
    expect(botMessagesIn(thread).length).toBe(before + 1);
    const turns = await turnsOf(conv);
    expect(turns.map((t) => t[0])).toEqual(['what colour is this?', 'is it tiny?']);
    expect(turns[1]![2]).toBe(`discord-${follow.id}`);
    expect(logs.filter((l) => l.includes(`edit of message ${follow.id} (`))).toEqual([]);
  }, 60_000);

  it('in a DM, and in a channel where the bot cannot open threads: answered again as a reply to the edited message', async () => {
    const dm = s.fake.addDm(s.w.alice);
    const ask = s.fake.postMessage(dm, s.w.alice, 'what is this?', { attachments: [await image('d.png')] });
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    s.fake.userEdits(dm, ask.id, '[grounding] what is this?');
    expect(await editHandled(ask.id)).toMatch(/: answered/);
    const again = botMessagesIn(dm).at(-1)!;
    expect(again.message_reference?.message_id).toBe(ask.id);
    expect(again.content.startsWith(EDITED)).toBe(true);
    expect((await turnsOf(key(dm, dm, '@me'))).map((t) => t[0])).toEqual(['[grounding] what is this?']);
    // after a restart, before any message in the DM (the new client has no channel for it): seen all the same, once
    await s.adapter.close();
    s.adapter = await startAdapter(s.fake, s.manager, logs);
    const before = botMessagesIn(dm).length;
    s.fake.userEdits(dm, ask.id, '[grounding] what is that?');
    expect(await editHandled(ask.id)).toMatch(/: answered/);
    expect((await turnsOf(key(dm, dm, '@me'))).map((t) => t[0])).toEqual(['[grounding] what is that?']);
    expect(botMessagesIn(dm).length).toBe(before + 1);

    s.fake.denyThreads.add(s.w.other);
    try {
      const q = s.fake.postMessage(s.w.other, s.w.alice, 'what is it?', { attachments: [await image('o.png')], mentionBot: true });
      expect(await answered(logs, q.id)).toMatch(/: answered/);
      s.fake.userEdits(s.w.other, q.id, 'what is it for?', { mentionBot: true });
      expect(await editHandled(q.id)).toMatch(/: answered/);
      const reply = botMessagesIn(s.w.other).at(-1)!;
      expect(reply.message_reference?.message_id).toBe(q.id);
      expect(reply.content.startsWith(EDITED)).toBe(true);
      expect((await turnsOf(key(s.w.other, `message:${q.id}`))).map((t) => t[0])).toEqual(['what is it for?']);
      // after a restart (the message not in the new client's cache): the edit is seen all the same
      await s.adapter.close();
      s.adapter = await startAdapter(s.fake, s.manager, logs);
      s.fake.userEdits(s.w.other, q.id, 'what is it made of?', { mentionBot: true });
      expect(await editHandled(q.id)).toMatch(/: answered/);
      expect((await turnsOf(key(s.w.other, `message:${q.id}`))).map((t) => t[0])).toEqual(['what is it made of?']);
      // ... and, after another restart, one that leaves the text as it was (a link preview) goes to the manager, which
      // takes it for no edit (the client has no earlier text to compare)
      await s.adapter.close();
      s.adapter = await startAdapter(s.fake, s.manager, logs);
      s.fake.userEdits(s.w.other, q.id, 'what is it made of?', { mentionBot: true });
      expect(await editHandled(q.id)).toMatch(/: not answered \(stale: The edited question is the same as the one answered\.\)/);
    } finally {
      s.fake.denyThreads.delete(s.w.other);
    }
  }, 60_000);
});
