// Faults on the Discord side (issue 9): gateway drops with close codes that allow a RESUME and ones that need
// a new IDENTIFY, REST 429s with retry-after, and 5xx answers to uploads. The whole stack is real (discord.js
// against the fake Discord, the conversation manager, the demo model); every request must get exactly one
// answer, in its own thread, late perhaps but neither lost nor doubled.
import { beforeAll, describe, expect, it } from 'vitest';
import type { ApiMessage, RestCall } from '../discord/fake-discord.js';
import { answered, outcome, testPng, useStack } from '../discord/helpers.js';
import { expectNoSecrets, FORCED, FORCED_DISCORD, until } from './helpers.js';

const s = useStack(FORCED, { adapter: { editIntervalMs: 50 } });
const { logs } = s;
let png: Buffer;

beforeAll(async () => {
  png = await testPng(64, 48);
});

const botMessagesIn = (channelId: string): ApiMessage[] => s.fake.messagesIn(channelId).filter((m) => m.author.id === s.fake.bot.id);

function mention(channel: string, text: string): ApiMessage {
  return s.fake.postMessage(channel, s.w.alice, text, { attachments: [s.fake.addAttachment('p.png', png, 'image/png')], mentionBot: true });
}

/** Exactly one answer per request: one outcome line each, one bot message in each thread, the final text. */
async function expectAnsweredOnce(msgs: readonly ApiMessage[], threadOf: (m: ApiMessage) => string = (m) => m.id): Promise<void> {
  for (const m of msgs) await answered(logs, m.id, 60_000);
  for (const m of msgs) {
    expect(
      logs.filter((l) => l.includes(` ${m.id} (`) && /: (answered|error) /.test(l)),
      `outcomes of ${m.id}`,
    ).toHaveLength(1);
    expect(outcome(logs, m.id)).toMatch(/answered/);
  }
  // Replies are counted in each thread (after a short settle, so that a late duplicate would show).
  await new Promise((r) => setTimeout(r, 300));
  const byThread = new Map<string, ApiMessage[]>();
  for (const m of msgs) byThread.set(threadOf(m), [...(byThread.get(threadOf(m)) ?? []), m]);
  for (const [thread, asked] of byThread) {
    const replies = botMessagesIn(thread);
    expect(
      replies.map((r) => r.content),
      `replies in thread ${thread}`,
    ).toEqual(asked.map(() => FORCED_DISCORD));
    expect(
      replies.every((r) => r.attachments.length === 1),
      `every reply in ${thread} has the annotated image`,
    ).toBe(true);
  }
}

describe('Discord gateway drops', () => {
  for (const code of [4000, 4009, 'reconnect'] as const) {
    it(`close ${code} (resumable): answers in flight are delivered, events sent during the gap are replayed once`, async () => {
      const resumedBefore = s.fake.gatewayStats.resumed;
      const identifiesBefore = s.fake.gatewayStats.identifies;
      const first = Array.from({ length: 5 }, (_, i) => mention(i % 2 ? s.w.general : s.w.other, `before drop ${code} #${i}`));
      // Drop once the first answer is being written.
      await until(() => first.some((m) => botMessagesIn(m.id).length > 0), 'the first reply');
      s.fake.dropGateway(code);
      expect(s.fake.connected).toBe(false);
      // Users go on talking while the bot is away: Discord keeps these for the resumed session.
      const during = Array.from({ length: 3 }, (_, i) => mention(s.w.general, `during drop ${code} #${i}`));
      await until(() => s.fake.connected, 'the resumed gateway session');
      expect(s.fake.gatewayStats.resumed).toBe(resumedBefore + 1);
      expect(s.fake.gatewayStats.identifies).toBe(identifiesBefore); // resumed, not identified anew
      const after = [mention(s.w.other, `after drop ${code}`)];
      await expectAnsweredOnce([...first, ...during, ...after]);
    });
  }

  for (const code of [4007, 1000] as const) {
    it(`close ${code} (new IDENTIFY): answers in flight are delivered once, and new events are answered`, async () => {
      const identifiesBefore = s.fake.gatewayStats.identifies;
      const first = Array.from({ length: 5 }, (_, i) => mention(i % 2 ? s.w.general : s.w.other, `before drop ${code} #${i}`));
      await until(() => first.some((m) => botMessagesIn(m.id).length > 0), 'the first reply');
      s.fake.dropGateway(code);
      await until(() => s.fake.connected, 'a new gateway session', 30_000);
      expect(s.fake.gatewayStats.identifies).toBe(identifiesBefore + 1);
      const after = Array.from({ length: 3 }, (_, i) => mention(s.w.general, `after drop ${code} #${i}`));
      await expectAnsweredOnce([...first, ...after]);
      // A follow-up in a thread started before the drop still continues its conversation.
      const follow = s.fake.postMessage(first[0].id, s.w.alice, `follow-up after ${code}`);
      await answered(logs, follow.id);
      expect(botMessagesIn(first[0].id).map((m) => m.content)).toEqual([FORCED_DISCORD, FORCED_DISCORD]);
      const state = await s.manager.history({
        platform: 'discord',
        workspace: s.w.guildId,
        channel: first[0].channel_id,
        thread: first[0].id,
      });
      expect(state?.turns.map((t) => t.user)).toEqual([`before drop ${code} #0`, `follow-up after ${code}`]);
    });
  }
});

describe('Discord REST faults', () => {
  it('429 with retry-after on message posts and edits: answers arrive after the wait, once each', async () => {
    const hits = new Map<string, number>();
    const limited: RestCall[] = [];
    s.fake.restFault = (call) => {
      // The first write of every thread, and the first edit, are rate limited.
      const m = /^\/channels\/(\d+)\/messages(?:\/\d+)?$/.exec(call.path);
      if (!m || (call.method !== 'POST' && call.method !== 'PATCH')) return undefined;
      const k = `${call.method} ${m[1]}`;
      const n = (hits.get(k) ?? 0) + 1;
      hits.set(k, n);
      if (n > 1) return undefined;
      limited.push(call);
      return {
        status: 429,
        headers: {
          'retry-after': '0.4',
          'x-ratelimit-limit': '5',
          'x-ratelimit-remaining': '0',
          'x-ratelimit-reset-after': '0.4',
          'x-ratelimit-scope': 'user',
        },
        body: { message: 'You are being rate limited.', retry_after: 0.4, global: false },
      };
    };
    try {
      const t0 = Date.now();
      const msgs = Array.from({ length: 4 }, (_, i) => mention(i % 2 ? s.w.general : s.w.other, `rate limited #${i}`));
      await expectAnsweredOnce(msgs);
      expect(limited.length).toBeGreaterThanOrEqual(4);
      // Each thread's first post was refused once and made again after the wait.
      for (const m of msgs) {
        const posts = s.fake.calls.filter((c) => c.method === 'POST' && c.path === `/channels/${m.id}/messages` && c.at >= t0);
        expect(posts.length, `posts to ${m.id}`).toBe(2);
        expect(posts[1].at - posts[0].at).toBeGreaterThanOrEqual(350);
      }
    } finally {
      s.fake.restFault = undefined;
    }
  });

  it('a global 429 holds every request for retry-after, then all answers arrive once', async () => {
    let fired = 0;
    s.fake.restFault = (call) => {
      if (fired >= 1 || call.method !== 'POST' || !/^\/channels\/\d+\/messages$/.test(call.path)) return undefined;
      fired++;
      return {
        status: 429,
        headers: { 'retry-after': '0.5', 'x-ratelimit-global': 'true', 'x-ratelimit-scope': 'global' },
        body: { message: 'You are being rate limited.', retry_after: 0.5, global: true },
      };
    };
    try {
      const msgs = Array.from({ length: 3 }, (_, i) => mention(s.w.general, `global limit #${i}`));
      await expectAnsweredOnce(msgs);
      expect(fired).toBe(1);
    } finally {
      s.fake.restFault = undefined;
    }
  });

  it('5xx on the upload of the annotated image: retried, delivered once with its image', async () => {
    const failures = new Map<string, number>();
    s.fake.restFault = (call) => {
      if (call.files.length === 0) return undefined;
      const thread = /^\/channels\/(\d+)\//.exec(call.path)?.[1] ?? call.path;
      const n = failures.get(thread) ?? 0;
      // Two failures for one thread, one for the others (discord.js retries server errors up to 3 times).
      if (n >= (failures.size === 0 || thread === [...failures.keys()][0] ? 2 : 1)) return undefined;
      failures.set(thread, n + 1);
      return { status: n === 0 ? 502 : 503, body: { message: 'Bad Gateway', code: 0 } };
    };
    try {
      const msgs = Array.from({ length: 3 }, (_, i) => mention(s.w.other, `upload fails #${i}`));
      await expectAnsweredOnce(msgs);
      expect([...failures.values()].reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(4);
      for (const m of msgs) {
        const uploads = s.fake.calls.filter((c) => c.path.startsWith(`/channels/${m.id}/messages`) && c.files.length > 0);
        expect(uploads.length).toBe((failures.get(m.id) ?? 0) + 1);
      }
    } finally {
      s.fake.restFault = undefined;
    }
  });

  it('an upload that keeps failing: the answer is delivered without the image, saying so', async () => {
    s.fake.restFault = (call) => (call.files.length > 0 ? { status: 500, body: { message: 'Internal Server Error', code: 0 } } : undefined);
    try {
      const m = mention(s.w.general, 'upload always fails');
      expect(await answered(logs, m.id, 60_000)).toMatch(/answered \(\d+ chars\)/);
      await new Promise((r) => setTimeout(r, 300));
      const replies = botMessagesIn(m.id);
      expect(replies.map((r) => r.content)).toEqual([
        `${FORCED_DISCORD}\n-# I couldn't upload the image with the boxes (Discord's upload failed).`,
      ]);
      expect(replies[0].attachments).toHaveLength(0);
      expect(s.fake.faulted.filter((c) => c.path.startsWith(`/channels/${m.id}/`)).length).toBe(4); // discord.js: 1 + 3 retries
    } finally {
      s.fake.restFault = undefined;
    }
  });

  it('logs no token and no signed attachment URL through all of this', () => {
    expectNoSecrets(logs, [s.fake.token]);
  });
});
