// The real `bin/minigpt.js serve` process (issue 9), connected to the fake Discord in this test process, with a
// SQLite conversation store:
//   - SIGTERM while answers are streaming: it stops accepting, every request ends with its answer or a "the bot
//     is restarting" message, the store holds every answered turn, and the process exits 0 within a bound;
//   - SIGKILL while answers are streaming: after a restart every conversation's history up to its last
//     completed turn is intact, the SQLite file passes its integrity check, and the conversations go on.
import { beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createStore, conversationId } from '../../src/conversation/index.js';
import { ConversationStore } from '../../src/conversation/store.js';
import type { ApiMessage } from '../discord/fake-discord.js';
import { testPng, useFakeDiscord } from '../discord/helpers.js';
import { expectNoSecrets, FORCED, FORCED_DISCORD, until } from './helpers.js';
import { useBotConfig } from '../helpers/shared.js';

const ROOT = join(import.meta.dirname, '..', '..');
const RESTARTING = '⚠️ The bot is restarting; please ask again in a moment.';
/** long enough that answers are still streaming when the signal comes */
const LONG_FORCED = `${FORCED}, ${'and more grey background '.repeat(12).trim()}`;

const files = useBotConfig('minigpt-process-', 'bot.yaml', {
  model: { package: join(ROOT, 'models', 'demo'), max_new_tokens: 120, temperature: 0 },
  runtime: { threads: 1, queue_size: 64 },
});
const w = useFakeDiscord();
let png: Buffer;

beforeAll(async () => {
  png = await testPng(64, 48);
});

interface Bot {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

function startBot(storeUrl: string): Bot {
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'minigpt.js'), 'serve'], {
    cwd: files.work,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      MINIGPT_CONFIG: files.config,
      EXECUTION_PROVIDER: 'cpu',
      STORE_URL: storeUrl,
      DISCORD_TOKEN: w.fake.token,
      DISCORD_API_URL: w.fake.apiUrl,
      DISCORD_RATE_LIMIT: '0',
      MINIGPT_TEST_FORCED_ANSWER: LONG_FORCED,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  child.stdout!.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal, at: Date.now() })),
  );
  return { child, stderr: () => err, exited };
}

async function started(bot: Bot): Promise<void> {
  await until(() => /discord adapter started/.test(bot.stderr()) || bot.child.exitCode !== null, 'the bot to start', 60_000);
  expect(bot.child.exitCode, bot.stderr()).toBeNull();
  await until(() => w.fake.connected, 'the gateway session');
}

const botMessagesIn = (channel: string): ApiMessage[] => w.fake.messagesIn(channel).filter((m) => m.author.id === w.fake.bot.id);
const finalOf = (thread: string) => botMessagesIn(thread).map((m) => m.content);
const keyOf = (channel: string, thread: string) => ({ platform: 'discord' as const, workspace: w.guildId, channel, thread });

function mention(channel: string, text: string): ApiMessage {
  return w.fake.postMessage(channel, w.alice, text, { attachments: [w.fake.addAttachment('p.png', png, 'image/png')], mentionBot: true });
}

/** Whether the reply to a user message in `thread` has settled on the answer or the restart notice. */
/** a final answer: the forced text (longer in these tests), not a preview still being written (those end with " …") */
const isAnswer = (content: string) => content.startsWith(FORCED_DISCORD) && !content.endsWith(' …');
// a final answer or the restart notice
const settled = (content: string) => isAnswer(content) || content === RESTARTING;

describe('SIGTERM', () => {
  it('stops accepting, finishes or cancels every answer with a message, flushes the store and exits 0', async () => {
    const store = `sqlite://${join(files.work, 'term.sqlite')}`;
    const bot = startBot(store);
    try {
      await started(bot);
      const msgs = Array.from({ length: 30 }, (_, i) => mention(i % 2 ? w.general : w.other, `term #${i}`));
      // The first answer on its way, the others streaming or waiting: then the signal.
      await until(() => msgs.some((m) => finalOf(m.id).length > 0), 'the first reply', 60_000);
      const signalled = Date.now();
      bot.child.kill('SIGTERM');
      const late = mention(w.general, 'sent after SIGTERM');
      const { code, at } = await bot.exited;
      expect(code, bot.stderr()).toBe(0);
      expect(at - signalled).toBeLessThan(15_000);
      expect(bot.stderr()).toContain('SIGTERM, shutting down');

      // Every request has exactly one reply, settled on its answer or on the restart notice (no stale preview).
      const outcomes = msgs.map((m) => {
        const replies = finalOf(m.id);
        expect(replies, `replies to ${m.content}`).toHaveLength(1);
        expect(settled(replies[0]), `${m.content}: ${replies[0]}`).toBe(true);
        return replies[0] === RESTARTING ? 'cancelled' : 'answered';
      });
      // The signal came while answers were in flight (some may have finished in the grace period).
      expect(outcomes.filter((o) => o === 'cancelled').length, outcomes.join(' ')).toBeGreaterThanOrEqual(1);
      // The late message was not taken on (at most told to come back).
      expect(finalOf(late.id).every((c) => c === RESTARTING)).toBe(true);

      // The store was flushed: every answered turn is there; cancelled ones are not, but the image of each that had
      // started is (asked again in its thread, as the notice says, it needs no new upload).
      const kv = await createStore(store);
      try {
        const repo = new ConversationStore(kv);
        for (let i = 0; i < msgs.length; i++) {
          const m = msgs[i];
          const state = await repo.getConversation(conversationId(keyOf(m.channel_id, m.id)));
          if (outcomes[i] === 'answered') {
            expect(
              state?.turns.map((t) => t.user),
              m.content,
            ).toEqual([m.content.replace(/^<@\d+> /, '')]);
            expect(await repo.getImage(state!.image.hash)).toBeDefined();
          } else if (state) {
            expect(state.turns, m.content).toEqual([]);
            expect(await repo.getImage(state.image.hash)).toBeDefined();
          }
        }
      } finally {
        await kv.disconnect();
      }
      expectNoSecrets([bot.stderr()], [w.fake.token]);
    } finally {
      if (bot.child.exitCode === null) bot.child.kill('SIGKILL');
    }
  });
});

describe('SIGKILL', () => {
  it('after a kill -9 during answers and a restart, histories are intact up to the last completed turn', async () => {
    const file = join(files.work, 'kill.sqlite');
    const store = `sqlite://${file}`;
    const threads: ApiMessage[] = [];
    /** what was sent in each thread, in order */
    const sent = new Map<string, string[]>();
    const bot1 = startBot(store);
    try {
      await started(bot1);
      for (let i = 0; i < 8; i++) {
        const m = mention(i % 2 ? w.general : w.other, `kill thread ${i} turn 0`);
        threads.push(m);
        sent.set(m.id, [`kill thread ${i} turn 0`]);
      }
      await until(() => threads.every((t) => finalOf(t.id).some(isAnswer)), 'the first turns', 90_000);
      // Round 1: a follow-up everywhere, all answered.
      for (const t of threads) {
        w.fake.postMessage(t.id, w.alice, `${t.id} turn 1`);
        sent.get(t.id)!.push(`${t.id} turn 1`);
      }
      await until(() => threads.every((t) => finalOf(t.id).filter(isAnswer).length === 2), 'round 1', 90_000);
      // Round 2: a follow-up everywhere; killed once some are answered and another is streaming. Batched
      // decoding finishes concurrent answers together, so the threads get their follow-ups in two halves.
      const completed = (t: ApiMessage) => finalOf(t.id).filter(isAnswer).length;
      const [first, second] = [threads.slice(0, 4), threads.slice(4)];
      const followUp = (t: ApiMessage) => {
        w.fake.postMessage(t.id, w.alice, `${t.id} turn 2`);
        sent.get(t.id)!.push(`${t.id} turn 2`);
      };
      first.forEach(followUp);
      await until(() => first.some((t) => completed(t) === 3), 'some of round 2', 90_000);
      const mark = w.fake.calls.length;
      second.forEach(followUp);
      // the bot has taken up a follow-up of the second half (typing in its thread) and not answered it yet
      await until(
        () => second.some((t) => completed(t) < 3 && w.fake.calls.slice(mark).some((c) => c.path === `/channels/${t.id}/typing`)),
        'a round-2 answer in progress',
        90_000,
      );
      bot1.child.kill('SIGKILL');
      const { signal } = await bot1.exited;
      expect(signal).toBe('SIGKILL');
    } finally {
      if (bot1.child.exitCode === null && bot1.child.signalCode === null) bot1.child.kill('SIGKILL');
    }
    /** completed answers seen by users in each thread before the kill */
    const seen = new Map(threads.map((t) => [t.id, finalOf(t.id).filter(isAnswer).length]));
    expect([...seen.values()].some((n) => n < 3)).toBe(true); // the kill did interrupt answers

    // The file is a sound SQLite database.
    const sqlite3 = (await import('sqlite3')).default;
    const check = await new Promise<string>((resolve, reject) => {
      const db = new sqlite3.Database(file, sqlite3.OPEN_READONLY, (err) => {
        if (err) return reject(err);
        db.get('PRAGMA integrity_check', (e: Error | null, row: Record<string, string>) => {
          db.close();
          if (e) reject(e);
          else resolve(Object.values(row)[0]);
        });
      });
    });
    expect(check).toBe('ok');

    // Each history is a prefix of what was sent, holding at least every turn a user saw answered.
    const kv = await createStore(store);
    const before = new Map<string, string[]>();
    try {
      const repo = new ConversationStore(kv);
      for (const t of threads) {
        const state = await repo.getConversation(conversationId(keyOf(t.channel_id, t.id)));
        expect(state, `thread ${t.id}`).toBeDefined();
        const users = state!.turns.map((x) => x.user);
        // Stored: the turns sent, in order, up to some point, the oldest perhaps trimmed to the model's window.
        const done = state!.droppedTurns + users.length;
        expect(users, `thread ${t.id}`).toEqual(sent.get(t.id)!.slice(state!.droppedTurns, done));
        expect(done, `thread ${t.id}: turns stored vs answers seen`).toBeGreaterThanOrEqual(seen.get(t.id)!);
        expect(await repo.getImage(state!.image.hash), `the image of ${t.id}`).toBeTruthy();
        before.set(t.id, sent.get(t.id)!.slice(0, done));
      }
    } finally {
      await kv.disconnect();
    }

    // Restarted on the same store: every conversation goes on from its history.
    const bot2 = startBot(store);
    try {
      await started(bot2);
      const follow = threads.map((t) => w.fake.postMessage(t.id, w.alice, `${t.id} after restart`));
      await until(
        () => follow.every((f) => botMessagesIn(f.channel_id).some((m) => isAnswer(m.content) && BigInt(m.id) > BigInt(f.id))),
        'the answers after the restart',
        90_000,
      );
      bot2.child.kill('SIGTERM');
      expect((await bot2.exited).code, bot2.stderr()).toBe(0);
    } finally {
      if (bot2.child.exitCode === null) bot2.child.kill('SIGKILL');
    }
    const kv2 = await createStore(store);
    try {
      const repo = new ConversationStore(kv2);
      for (const t of threads) {
        const state = await repo.getConversation(conversationId(keyOf(t.channel_id, t.id)));
        const users = state!.turns.map((x) => x.user);
        // the history may have been trimmed to the model's window from the oldest turn
        const full = [...before.get(t.id)!, `${t.id} after restart`];
        expect(users, `thread ${t.id}`).toEqual(full.slice(full.length - users.length));
        expect(state!.droppedTurns + users.length).toBe(full.length);
      }
    } finally {
      await kv2.disconnect();
    }
  });
});
