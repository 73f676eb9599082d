// The inference session failing mid-answer (issue 9): the decoder's step is made to throw for one conversation
// while others are answered around it. That conversation gets an error reply, the others their answers, its
// stored history is untouched, and its next request works. Through the whole Discord stack.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ApiMessage } from '../discord/fake-discord.js';
import { answered, testPng, useStack } from '../discord/helpers.js';
import { expectNoSecrets, FORCED, FORCED_DISCORD, injectAnswerFault, injectSessionFault } from './helpers.js';

let fault: ReturnType<typeof injectAnswerFault>;
let sessionFault: ReturnType<typeof injectSessionFault>;
const s = useStack(FORCED, {
  adapter: { editIntervalMs: 50 },
  prepare: (model) => {
    // The fault hits only the answers whose (last) user turn asks for it, from their third decoding step.
    fault = injectAnswerFault(model, (prompt, step) => step >= 3 && /EXPLODE[^\]]*\[\/INST\]\s*$/.test(prompt));
    sessionFault = injectSessionFault(model);
  },
});
const { logs } = s;
let png: Buffer;

beforeAll(async () => {
  png = await testPng(64, 48);
});

// Registered after useStack's, so it runs before the stack is closed (vitest runs after-hooks last first).
afterAll(() => {
  fault?.restore();
  sessionFault?.restore();
});

const botMessagesIn = (channelId: string): ApiMessage[] => s.fake.messagesIn(channelId).filter((m) => m.author.id === s.fake.bot.id);
const key = (m: ApiMessage) => ({ platform: 'discord' as const, workspace: s.w.guildId, channel: m.channel_id, thread: m.id });

function mention(channel: string, text: string): ApiMessage {
  return s.fake.postMessage(channel, s.w.alice, text, { attachments: [s.fake.addAttachment('p.png', png, 'image/png')], mentionBot: true });
}

describe('the decoder throws mid-answer', () => {
  it('that conversation gets an error reply, the others are answered, and its next request works', async () => {
    const before = fault.thrown();
    const a = mention(s.w.general, 'first EXPLODE please');
    const b = mention(s.w.other, 'an ordinary question');
    const c = mention(s.w.general, 'another ordinary question');
    const [la, lb, lc] = await Promise.all([answered(logs, a.id), answered(logs, b.id), answered(logs, c.id)]);
    expect(fault.thrown()).toBe(before + 1);
    expect(la).toMatch(/error internal/);
    expect(lb).toMatch(/answered/);
    expect(lc).toMatch(/answered/);
    // The failed answer: one message in its thread, an error sentence (no partial answer left behind).
    const ra = botMessagesIn(a.id);
    expect(ra).toHaveLength(1);
    expect(ra[0].content).toMatch(/^⚠️ Something went wrong while answering .*please try again\.$/);
    expect(ra[0].attachments).toHaveLength(0);
    expect(botMessagesIn(b.id).map((m) => m.content)).toEqual([FORCED_DISCORD]);
    expect(botMessagesIn(c.id).map((m) => m.content)).toEqual([FORCED_DISCORD]);
    // Nothing was stored for the failed first turn.
    expect(await s.manager.history(key(a))).toBeNull();

    // The next request in that thread (with its image again) works.
    const again = s.fake.postMessage(a.id, s.w.alice, 'try again, nicely', {
      attachments: [s.fake.addAttachment('p.png', png, 'image/png')],
    });
    expect(await answered(logs, again.id)).toMatch(/answered/);
    expect(
      botMessagesIn(a.id)
        .map((m) => m.content)
        .at(-1),
    ).toBe(FORCED_DISCORD);
    expect((await s.manager.history(key(a)))?.turns.map((t) => t.user)).toEqual(['try again, nicely']);
  });

  it('a failing follow-up leaves the earlier turns intact; the one after it continues the conversation', async () => {
    const m = mention(s.w.general, 'start here');
    await answered(logs, m.id);
    const f1 = s.fake.postMessage(m.id, s.w.alice, 'second turn');
    await answered(logs, f1.id);
    const bad = s.fake.postMessage(m.id, s.w.alice, 'third turn EXPLODE');
    const other = mention(s.w.other, 'meanwhile elsewhere');
    expect(await answered(logs, bad.id)).toMatch(/error internal/);
    expect(await answered(logs, other.id)).toMatch(/answered/);
    expect((await s.manager.history(key(m)))?.turns.map((t) => t.user)).toEqual(['start here', 'second turn']);
    const f3 = s.fake.postMessage(m.id, s.w.alice, 'fourth turn');
    expect(await answered(logs, f3.id)).toMatch(/answered/);
    expect((await s.manager.history(key(m)))?.turns.map((t) => t.user)).toEqual(['start here', 'second turn', 'fourth turn']);
    const replies = botMessagesIn(m.id).map((x) => x.content);
    expect(replies).toHaveLength(4);
    expect(replies[2]).toMatch(/^⚠️ /);
    expect([replies[0], replies[1], replies[3]]).toEqual([FORCED_DISCORD, FORCED_DISCORD, FORCED_DISCORD]);
  });

  it('many failures in a row do not wedge the queue or leak the failing state into other answers', async () => {
    const bad = Array.from({ length: 6 }, (_, i) => mention(i % 2 ? s.w.general : s.w.other, `EXPLODE #${i}`));
    const good = Array.from({ length: 6 }, (_, i) => mention(i % 2 ? s.w.other : s.w.general, `fine #${i}`));
    for (const m of bad) expect(await answered(logs, m.id)).toMatch(/error internal/);
    for (const m of good) expect(await answered(logs, m.id)).toMatch(/answered/);
    for (const m of good) expect(botMessagesIn(m.id).map((x) => x.content)).toEqual([FORCED_DISCORD]);
    expectNoSecrets([...logs, ...bad.flatMap((m) => botMessagesIn(m.id).map((x) => x.content))], [s.fake.token]);
  });

  it('the session failing on a (possibly batched) step: every request gets one reply, none hangs, the next ones work', async () => {
    // The session fails once, on its 10th run from now: in the middle of these six answers' prefills and steps.
    sessionFault.arm(1, 9);
    const msgs = Array.from({ length: 6 }, (_, i) => mention(i % 2 ? s.w.general : s.w.other, `session fault #${i}`));
    const outcomes = await Promise.all(msgs.map((m) => answered(logs, m.id)));
    expect(sessionFault.thrown()).toBe(1);
    expect(outcomes.filter((l) => /error internal/.test(l)).length).toBeGreaterThanOrEqual(1);
    for (const m of msgs) {
      const replies = botMessagesIn(m.id).map((x) => x.content);
      expect(replies, m.content).toHaveLength(1);
      expect(replies[0]).toMatch(/^(⚠️ Something went wrong|\*\*red square\*\*)/);
    }
    const after = Array.from({ length: 3 }, (_, i) => mention(s.w.general, `after the session fault #${i}`));
    for (const m of after) expect(await answered(logs, m.id)).toMatch(/answered/);
  });
});
