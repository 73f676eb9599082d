// The Stop button on an answer being written: the real discord.js client on the fake Discord, the real
// ConversationManager and the demo model (forced to a long answer, its decoding steps slowed so that there is time
// to press). The asker or a moderator stops it: generation ends, the message keeps the text so far and says who
// stopped it, the button goes; anyone else is told no, privately; a finished answer's button says so.
import { afterAll, describe, expect, it } from 'vitest';
import { slowSteps, type SlowSteps } from '../helpers/slow-steps.js';
import { PERMISSIONS, type ApiMessage } from './fake-discord.js';
import { answered, describeCommand, firstButton, publicBotMessages, sleep, testPng, until, useStack } from './helpers.js';

const WORDS = Array.from({ length: 40 }, (_, i) => `word${i}`);
const FORCED = WORDS.join(' ');
const STEP_DELAY_MS = 25;

let slow: SlowSteps;
const s = useStack(FORCED, {
  adapter: { editIntervalMs: 100 },
  defaults: { maxNewTokens: 400 },
  prepare: (model) => {
    slow = slowSteps(model, STEP_DELAY_MS);
  },
});
const { logs } = s;
afterAll(() => slow?.restore());

const botMessagesIn = (channelId: string): ApiMessage[] => publicBotMessages(s.fake, channelId);
const stopIdOf = (m: ApiMessage | undefined): string | undefined => firstButton(m)?.custom_id;

/** Waits for the answer in `channelId` to be shown with its Stop button and some text; returns that message. */
async function streaming(channelId: string): Promise<ApiMessage> {
  let msg: ApiMessage | undefined;
  await until(() => {
    msg = botMessagesIn(channelId).at(-1);
    return !!msg && !!stopIdOf(msg) && /word3 .* …$/.test(msg.content);
  }, `an answer being written in ${channelId}`);
  return msg!;
}

async function mention(text: string): Promise<ApiMessage> {
  return s.fake.postMessage(s.w.general, s.w.alice, text, {
    attachments: [s.fake.addAttachment('p.png', await testPng(80, 60), 'image/png', { width: 80, height: 60 })],
    mentionBot: true,
  });
}

describe('the Stop button', () => {
  it('is on the answer while it is written; someone else is told no, privately; the asker stops it, the text so far kept', async () => {
    const ask = await mention('describe this at length');
    const thread = ask.id;
    const msg = await streaming(thread);
    const button = (msg.components as any[])[0].components[0];
    expect(button).toMatchObject({ type: 2, label: 'Stop', style: 2 });

    // bob, not a moderator: a private no, the answer goes on
    const no = s.fake.press(thread, msg.id, button.custom_id, s.w.bob, '0');
    await until(() => s.fake.interaction(no.token)?.callback !== undefined, 'the reply to bob');
    expect(s.fake.interaction(no.token)!.callback!.type).toBe(4);
    const told = s.fake.original(no.token)!;
    expect(told.content).toBe('Only the person who asked, or a moderator (Manage Messages), can stop this answer.');
    expect(told.flags! & 64).toBe(64); // ephemeral
    const stepsBefore = slow.steps();
    await sleep(300);
    expect(slow.steps()).toBeGreaterThan(stepsBefore);

    // alice, who asked: stopped
    const yes = s.fake.press(thread, msg.id, button.custom_id, s.w.alice, '0');
    expect(await answered(logs, ask.id)).toMatch(/: stopped by user \d+ in \d+ ms$/);
    expect(s.fake.interaction(yes.token)!.callback!.type).toBe(6); // acknowledged, no message of its own
    const stoppedAt = slow.steps();
    await sleep(400);
    expect(slow.steps()).toBe(stoppedAt); // generation ended
    const final = s.fake.message(thread, msg.id)!;
    expect(final.components).toEqual([]);
    const [text, line] = final.content.split('\n');
    expect(line).toBe(`-# Stopped by <@${s.w.alice.id}>. A stopped answer is not kept in the conversation.`);
    // the text written so far, in order, unfinished
    expect(FORCED.startsWith(text)).toBe(true);
    expect(text.split(' ').length).toBeGreaterThan(3);
    expect(text.split(' ').length).toBeLessThan(WORDS.length);
    expect(botMessagesIn(thread)).toHaveLength(1);
    // pressed again (or a stale button after a restart): already finished
    const late = s.fake.press(thread, msg.id, button.custom_id, s.w.alice);
    await until(() => s.fake.original(late.token) !== undefined, 'the late reply');
    expect(s.fake.original(late.token)!.content).toBe('This answer has already finished.');

    // the conversation goes on: a follow-up in the thread has the image and is answered in full
    const follow = s.fake.postMessage(thread, s.w.alice, 'and in short?');
    const followed = await answered(logs, follow.id);
    expect(followed).toMatch(/: answered/);
    expect(botMessagesIn(thread).at(-1)!.content).toBe(FORCED);
    // (no Stop button once it is written; the Regenerate button of an answer given in full: test/discord/regenerate.test.ts)
    expect((botMessagesIn(thread).at(-1)!.components as any[]).map((row) => row.components.map((b: any) => b.label))).toEqual([
      ['Regenerate'],
    ]);
    const state = await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.general, thread });
    expect(state?.turns.map((t) => t.user)).toEqual(['and in short?']);
  }, 60_000);

  it('an edit of the question while its answer is written stops that answer; the edited text is answered instead', async () => {
    const key = (thread: string) => ({ platform: 'discord' as const, workspace: s.w.guildId, channel: s.w.general, thread });
    const edited = (id: string) => logs.filter((l) => l.includes(`discord: edit of message ${id} (`) && / in \d+ ms$/.test(l));
    // the first answer not yet stored: the edited text is asked as the message's question
    const ask = await mention('describe this');
    const msg = await streaming(ask.id);
    s.fake.userEdits(s.w.general, ask.id, 'describe this briefly', { mentionBot: true });
    expect(await answered(logs, ask.id)).toMatch(/: stopped by user \d+ in \d+ ms$/);
    await until(() => edited(ask.id).length === 1, 'the edited question answered');
    expect(edited(ask.id)[0]).toMatch(/: answered \(/);
    expect(s.fake.message(ask.id, msg.id)!.content).toContain(`-# Stopped by <@${s.w.alice.id}>.`);
    const again = botMessagesIn(ask.id).at(-1)!;
    expect(again.content.startsWith('-# The question was edited: this answer replaces the one before it in the conversation.\n')).toBe(
      true,
    );
    let turns = (await s.manager.history(key(ask.id)))!.turns;
    expect(turns.map((t) => [t.user, t.askedAs])).toEqual([['describe this briefly', `discord-${ask.id}`]]);

    // an edit while the answer to an edit is written: that one stopped, the stored question (answered since) replaced
    s.fake.userEdits(s.w.general, ask.id, 'describe this in one word', { mentionBot: true });
    await until(
      () => botMessagesIn(ask.id).length > 2 && /word3 .* …$/.test(botMessagesIn(ask.id).at(-1)!.content),
      'the second edit being answered',
    );
    s.fake.userEdits(s.w.general, ask.id, 'describe this in two words', { mentionBot: true });
    await until(() => edited(ask.id).length === 3, 'both edits handled');
    expect(
      edited(ask.id)
        .slice(1)
        .map((l) => l.replace(/.*\): /, '').replace(/ in \d+ ms$/, '')),
    ).toEqual([`stopped by user ${s.w.alice.id}`, expect.stringMatching(/^answered \(/)]);
    turns = (await s.manager.history(key(ask.id)))!.turns;
    expect(turns.map((t) => [t.user, t.askedAs])).toEqual([['describe this in two words', `discord-${ask.id}`]]);
  }, 60_000);

  it('a question deleted while its answer is written: the answer stops, then goes, with what the bot kept of it', async () => {
    const key = { platform: 'discord' as const, workspace: s.w.guildId, channel: s.w.general, thread: '' };
    // the follow-up's answer being written when it is deleted: stopped, deleted, and the question never stored
    const ask = await mention('describe this');
    expect(await answered(logs, ask.id)).toMatch(/: answered/);
    const follow = s.fake.postMessage(ask.id, s.w.alice, 'describe it again');
    const msg = await streaming(ask.id);
    const stepsBefore = slow.steps();
    s.fake.userDeletes(ask.id, follow.id);
    expect(await answered(logs, follow.id)).toMatch(/: error cancelled in \d+ ms$/);
    await until(() => logs.some((l) => l.startsWith(`discord: deleted message ${follow.id} (`)), 'the deletion handled');
    expect(logs.find((l) => l.startsWith(`discord: deleted message ${follow.id} (`))).toMatch(
      /: not asked, 1 answer message\(s\) deleted$/,
    );
    expect(s.fake.message(ask.id, msg.id)).toBeUndefined();
    await sleep(200);
    expect(slow.steps() - stepsBefore).toBeLessThan(WORDS.length);
    expect((await s.manager.history({ ...key, thread: ask.id }))!.turns.map((t) => t.user)).toEqual(['describe this']);
  }, 60_000);

  it('the image deleted while an answer about it is written: the answer stops, then goes, with the conversation', async () => {
    const pic = s.fake.postMessage(s.w.general, s.w.bob, 'my picture', {
      attachments: [s.fake.addAttachment('p.png', await testPng(80, 60), 'image/png', { width: 80, height: 60 })],
    });
    const ask = s.fake.postMessage(s.w.general, s.w.alice, 'describe this', { mentionBot: true, replyTo: pic.id });
    const msg = await streaming(ask.id);
    s.fake.userDeletes(s.w.general, pic.id);
    expect(await answered(logs, ask.id)).toMatch(/: error cancelled in \d+ ms$/);
    await until(() => logs.some((l) => l.startsWith(`discord: deleted message ${pic.id} (`)), 'the deletion handled');
    // stopped before it was stored: the image was kept with no turn, and goes as its message's
    expect(logs.find((l) => l.startsWith(`discord: deleted message ${pic.id} (`))).toMatch(
      /: conversation forgotten, 1 answer message\(s\) deleted$/,
    );
    expect(s.fake.message(ask.id, msg.id)).toBeUndefined();
    expect(await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.general, thread: ask.id })).toBeNull();
  }, 60_000);

  it("a moderator (Manage Messages) stops someone else's answer", async () => {
    const ask = await mention('and this one?');
    const msg = await streaming(ask.id);
    s.fake.press(ask.id, msg.id, stopIdOf(msg)!, s.w.bob, PERMISSIONS.ALL);
    expect(await answered(logs, ask.id)).toMatch(/: stopped by user \d+/);
    expect(s.fake.message(ask.id, msg.id)!.content).toContain(`-# Stopped by <@${s.w.bob.id}>.`);
  }, 60_000);

  it("stops a /describe answer (the interaction's original response)", async () => {
    const image = s.fake.addAttachment('d.png', await testPng(80, 60), 'image/png', { width: 80, height: 60 });
    const cmd = s.fake.interact(s.w.general, s.w.alice, describeCommand({ image, prompt: 'describe' }));
    let original: ApiMessage | undefined;
    await until(() => {
      original = s.fake.original(cmd.token);
      return !!original && !!stopIdOf(original) && /word3 .* …$/.test(original.content);
    }, 'the /describe answer being written');
    s.fake.press(s.w.general, original!.id, stopIdOf(original)!, s.w.alice, '0');
    await until(() => /-# Stopped by/.test(s.fake.original(cmd.token)!.content), 'the stopped /describe answer');
    const final = s.fake.original(cmd.token)!;
    expect(final.components).toEqual([]);
    expect(FORCED.startsWith(final.content.split('\n')[0])).toBe(true);
    // a stopped /describe opens no thread
    await sleep(300);
    expect(s.fake.calls.filter((c) => c.path === `/channels/${s.w.general}/messages/${final.id}/threads`)).toHaveLength(0);
  }, 60_000);
});
