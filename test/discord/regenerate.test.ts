// The Regenerate button on an answer: the real discord.js client on the fake Discord, the real ConversationManager
// and the demo model (its answer forced). The asker presses it on the conversation's last answer: a new answer to
// the same question is posted after it (a reply to it, with its own button) and replaces it in the stored
// conversation; the old one says so and loses its button. Anyone else, or an answer followed up since, is told why
// privately. Also on a /describe answer (its new answer goes into the thread opened on it) and on an answer in a
// channel where the bot cannot open threads.
import { describe, expect, it, vi } from 'vitest';
import type { ConversationKey } from '../../src/conversation/index.js';
import type { ApiMessage } from './fake-discord.js';
import { answered, describeCommand, firstButton, publicBotMessages, startAdapter, testPng, until, useStack } from './helpers.js';

const FORCED = 'a red square on a grey background';
const s = useStack(FORCED);
const { logs } = s;

const botMessagesIn = (channelId: string): ApiMessage[] => publicBotMessages(s.fake, channelId);
const key = (channel: string, thread: string): ConversationKey => ({ platform: 'discord', workspace: s.w.guildId, channel, thread });

async function image(name: string) {
  return s.fake.addAttachment(name, await testPng(80, 60), 'image/png', { width: 80, height: 60 });
}

const ephemeralIn = (channelId: string): ApiMessage[] => s.fake.messagesIn(channelId).filter((m) => (m.flags ?? 0) & 64);

/**
 * Presses the button of message `msg` in `channelId` as `user`; returns the interaction's token once it was answered,
 * and `told()`, the private reply it got (a reply of its own, or a follow-up after the button was taken away).
 */
async function press(channelId: string, msg: ApiMessage, user = s.w.alice): Promise<{ token: string; told(): Promise<string> }> {
  const before = ephemeralIn(channelId).length;
  const { token } = s.fake.press(channelId, msg.id, firstButton(msg).custom_id, user, '0');
  await until(() => s.fake.interaction(token)?.callback !== undefined, 'the button acknowledged');
  const told = async () => {
    await until(() => ephemeralIn(channelId).length > before && ephemeralIn(channelId)[before]!.content !== '', 'the private reply');
    return ephemeralIn(channelId)[before]!.content;
  };
  return { token, told };
}

describe('the Regenerate button', () => {
  it('gives the asker a new answer after the old one, which it replaces in the conversation; others are told no', async () => {
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'what is this?', { attachments: [await image('a.png')], mentionBot: true });
    const thread = ask.id;
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const first = botMessagesIn(thread).at(-1)!;
    expect(first.content).toBe(FORCED);
    expect(firstButton(first)).toMatchObject({ type: 2, label: 'Regenerate', style: 2, custom_id: `minigpt-regen:discord-${ask.id}` });

    // bob did not ask: a private no, nothing changes
    const no = await press(thread, first, s.w.bob);
    expect(s.fake.interaction(no.token)!.callback!.type).toBe(4);
    expect(await no.told()).toBe('Only the person who asked can regenerate this answer.');
    expect(firstButton(s.fake.message(thread, first.id))).toBeDefined();

    // alice: the button goes at once, a new answer is posted as a reply to the old one, which says it was replaced
    const yes = await press(thread, first);
    const id = s.fake.interaction(yes.token)!.id;
    expect(s.fake.interaction(yes.token)!.callback!.type).toBe(7);
    expect(await answered(logs, id)).toMatch(new RegExp(`^discord: regenerate ${id} \\(guild .*\\): answered`));
    const second = botMessagesIn(thread).at(-1)!;
    expect(second.id).not.toBe(first.id);
    expect(second.content).toBe(`-# Regenerated: this answer replaces the one above in the conversation.\n${FORCED}`);
    expect(second.message_reference?.message_id).toBe(first.id);
    expect(firstButton(second).custom_id).toBe(`minigpt-regen:discord-${id}`);
    // (marked after the new answer ended)
    await until(() => s.fake.message(thread, first.id)!.content.endsWith('below.'), 'the old answer marked');
    const old = s.fake.message(thread, first.id)!;
    expect(old.components).toEqual([]);
    expect(old.content).toBe(`${FORCED}\n-# Replaced by a regenerated answer below.`);
    const state = await s.manager.history(key(s.w.general, thread));
    expect(state!.turns.map((t) => [t.user, t.by, t.requestId])).toEqual([['what is this?', s.w.alice.id, `discord-${id}`]]);

    // a follow-up: its answer carries the button now, the regenerated answer's is taken off
    const shown = { ...second }; // (as a client that has not refreshed still shows it)
    const follow = s.fake.postMessage(thread, s.w.alice, 'and its colour?');
    expect(await answered(logs, follow.id)).toMatch(/: answered/);
    expect(firstButton(botMessagesIn(thread).at(-1)).custom_id).toBe(`minigpt-regen:discord-${follow.id}`);
    expect(s.fake.message(thread, second.id)!.components).toEqual([]);
    // pressed all the same: no longer the last answer, told why privately
    const stale = await press(thread, shown);
    expect(s.fake.interaction(stale.token)!.callback!.type).toBe(7);
    expect(await stale.told()).toBe('Only the latest answer in a conversation can be regenerated.');
    expect(s.fake.message(thread, second.id)!.components).toEqual([]);
    expect((await s.manager.history(key(s.w.general, thread)))!.turns.map((t) => t.requestId)).toEqual([
      `discord-${id}`,
      `discord-${follow.id}`,
    ]);
  }, 60_000);

  it('on a /describe answer in a channel: the new answer goes into the thread opened on it', async () => {
    const cmd = s.fake.interact(s.w.general, s.w.alice, describeCommand({ image: await image('d.png'), prompt: 'describe' }));
    const cmdId = s.fake.interaction(cmd.token)!.id;
    expect(await answered(logs, cmdId)).toMatch(/: answered/);
    const reply = s.fake.original(cmd.token)!;
    await until(() => s.fake.channel(reply.id) !== undefined, 'the thread on the answer');
    expect(firstButton(reply).custom_id).toBe(`minigpt-regen:discord-${cmdId}`);

    const yes = await press(s.w.general, reply);
    const id = s.fake.interaction(yes.token)!.id;
    expect(await answered(logs, id)).toMatch(/: answered/);
    const again = botMessagesIn(reply.id).at(-1)!;
    expect(again.content).toBe(`-# Regenerated: this answer replaces the one above in the conversation.\n${FORCED}`);
    expect(s.fake.message(s.w.general, reply.id)!.components).toEqual([]);
    expect((await s.manager.history(key(s.w.general, reply.id)))!.turns.map((t) => t.requestId)).toEqual([`discord-${id}`]);
  }, 60_000);

  it('on an answer in a channel where the bot cannot open threads, after a restart: the new answer is a reply there, and goes on', async () => {
    s.fake.denyThreads.add(s.w.other);
    try {
      const ask = s.fake.postMessage(s.w.other, s.w.alice, 'what is it?', { attachments: [await image('o.png')], mentionBot: true });
      expect(await answered(logs, ask.id)).toMatch(/: answered/);
      const first = botMessagesIn(s.w.other).at(-1)!;
      // the button names the conversation: the adapter's memory of its answers in channels is not needed (a restart)
      expect(firstButton(first).custom_id).toBe(`minigpt-regen:discord-${ask.id}|message:${ask.id}`);
      await s.adapter.close();
      s.adapter = await startAdapter(s.fake, s.manager, logs);
      const yes = await press(s.w.other, first);
      const id = s.fake.interaction(yes.token)!.id;
      expect(await answered(logs, id)).toMatch(/: answered/);
      const second = botMessagesIn(s.w.other).at(-1)!;
      expect(second.message_reference?.message_id).toBe(first.id);
      expect(second.content).toContain(FORCED);
      const conv = key(s.w.other, `message:${ask.id}`);
      expect((await s.manager.history(conv))!.turns.map((t) => t.requestId)).toEqual([`discord-${id}`]);
      // a reply to the new answer continues the same conversation, also after another restart (the store says whose
      // answer it is)
      await s.adapter.close();
      s.adapter = await startAdapter(s.fake, s.manager, logs);
      const follow = s.fake.postMessage(s.w.other, s.w.alice, 'more?', { replyTo: second.id, mentionBot: true });
      expect(await answered(logs, follow.id)).toMatch(/: answered/);
      expect((await s.manager.history(conv))!.turns.map((t) => t.requestId)).toEqual([`discord-${id}`, `discord-${follow.id}`]);
    } finally {
      s.fake.denyThreads.delete(s.w.other);
    }
  }, 60_000);

  it("after a restart, a follow-up's answer still takes the button off the answer before it", async () => {
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'before the restart?', {
      attachments: [await image('r.png')],
      mentionBot: true,
    });
    const thread = ask.id;
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const first = botMessagesIn(thread).at(-1)!;
    expect(firstButton(first)).toBeDefined();
    await s.adapter.close();
    s.adapter = await startAdapter(s.fake, s.manager, logs);
    const follow = s.fake.postMessage(thread, s.w.alice, 'and after it?');
    expect(await answered(logs, follow.id)).toMatch(/: answered/);
    expect(firstButton(botMessagesIn(thread).at(-1)).custom_id).toBe(`minigpt-regen:discord-${follow.id}`);
    await until(() => s.fake.message(thread, first.id)!.components?.length === 0, 'the button taken off');
    expect(s.fake.message(thread, first.id)!.content).toBe(FORCED);
  }, 60_000);

  it('pressed twice at once: one new answer; the second press is told privately', async () => {
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'twice?', { attachments: [await image('t.png')], mentionBot: true });
    const thread = ask.id;
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const first = botMessagesIn(thread).at(-1)!;
    const before = ephemeralIn(thread).length;
    const a = s.fake.press(thread, first.id, firstButton(first).custom_id, s.w.alice, '0');
    const b = s.fake.press(thread, first.id, firstButton(first).custom_id, s.w.alice, '0');
    await until(() => ephemeralIn(thread).length > before && ephemeralIn(thread)[before]!.content !== '', 'the private reply');
    expect(ephemeralIn(thread)[before]!.content).toBe('This answer is being regenerated already.');
    expect(s.fake.interaction(b.token)!.callback!.type).toBe(4);
    expect(await answered(logs, s.fake.interaction(a.token)!.id)).toMatch(/: answered/);
    expect(botMessagesIn(thread).filter((m) => m.content.startsWith('-# Regenerated'))).toHaveLength(1);
    const state = await s.manager.history(key(s.w.general, thread));
    expect(state!.turns.map((t) => t.requestId)).toEqual([`discord-${s.fake.interaction(a.token)!.id}`]);
  }, 60_000);

  it('in a DM: the new answer follows in the DM', async () => {
    const dm = s.fake.addDm(s.w.alice);
    const ask = s.fake.postMessage(dm, s.w.alice, 'hello', { attachments: [await image('dm.png')] });
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const first = botMessagesIn(dm).at(-1)!;
    const yes = await press(dm, first);
    const id = s.fake.interaction(yes.token)!.id;
    expect(await answered(logs, id)).toMatch(/^discord: regenerate \d+ \(DM\): answered/);
    const second = botMessagesIn(dm).at(-1)!;
    expect(second.message_reference?.message_id).toBe(first.id);
    const state = await s.manager.history({ platform: 'discord', workspace: '@me', channel: dm, thread: dm });
    expect(state!.turns.map((t) => t.requestId)).toEqual([`discord-${id}`]);
  }, 60_000);

  it('not answered again (here: the model fails once): the old answer keeps its place and its button', async () => {
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'and this?', { attachments: [await image('g.png')], mentionBot: true });
    const thread = ask.id;
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const first = botMessagesIn(thread).at(-1)!;
    // biome-ignore lint/correctness/useYield: a run that fails before its first token
    const fails = vi.spyOn(s.model, 'answer').mockImplementationOnce(async function* () {
      throw new Error('the device was lost');
    });

    const yes = await press(thread, first);
    const id = s.fake.interaction(yes.token)!.id;
    expect(await answered(logs, id)).toMatch(/: error internal/);
    fails.mockRestore();
    expect(botMessagesIn(thread).at(-1)!.content).toMatch(/^-# Regenerated: .*\n⚠️ /);
    await until(() => firstButton(s.fake.message(thread, first.id)) !== undefined, 'the button given back');
    expect(firstButton(s.fake.message(thread, first.id)).custom_id).toBe(`minigpt-regen:discord-${ask.id}`);
    expect(s.fake.message(thread, first.id)!.content).toBe(FORCED);
    expect((await s.manager.history(key(s.w.general, thread)))!.turns.map((t) => t.requestId)).toEqual([`discord-${ask.id}`]);
  }, 60_000);
});
