// A regenerate or edit request waiting in a cluster's queue behind other conversations' answers: the front end checks
// it once nothing of its own conversation is ahead of it, as a local manager does: an edit of an earlier question is
// refused at once (not when a worker takes it), an edit that will be answered is told its place as checked (an
// adapter shows it then), and an edit whose conversation is still being answered waits for that answer before it is
// decided. A real redis-server on a free loopback port, the real cluster worker (one job at a time, its decoding
// steps slowed) and front end in this process, the demo model.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createStore, type ConversationKey } from '../../src/conversation/index.js';
import { RemoteConversations } from '../../src/cluster/frontend.js';
import { startDemoWorker, type DemoWorker } from './helpers.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { squarePng } from '../slack/helpers.js';
import { eventLog } from '../helpers/event-log.js';
import { slowSteps } from '../helpers/slow-steps.js';

let redis: TestRedis;
let cluster: DemoWorker;
let frontend: RemoteConversations;

beforeAll(async () => {
  redis = await startRedis();
  cluster = await startDemoWorker(redis.url, {
    forcedAnswer: 'a square on a plain background, seen in every detail there is to see',
    manager: { defaults: { maxNewTokens: 24, temperature: 0 } },
    worker: { concurrency: 1 },
  });
  frontend = new RemoteConversations({ redisUrl: redis.url, store: await createStore(redis.url), positionPollMs: 100 });
}, 60_000);

afterAll(async () => {
  await frontend?.close();
  await cluster?.close();
  await redis?.cleanup();
});

const keyOf = (thread: string): ConversationKey => ({ platform: 'slack', workspace: 'T1', channel: 'C1', thread });

describe('a cluster: edits waiting in line', () => {
  it('are checked once nothing of their conversation is ahead: refused at once, or their place told as checked', async () => {
    const { seen, read } = eventLog();
    for (const p of ['x', 'e', 'f']) {
      await read(
        'setup',
        frontend.handle({ key: keyOf(p), user: 'U1', text: `${p} one`, image: await squarePng(40, 30), requestId: `${p}1` }),
      );
      if (p !== 'x') await read('setup', frontend.handle({ key: keyOf(p), user: 'U1', text: `${p} two`, requestId: `${p}2` }));
    }
    expect(seen.filter((s) => s.endsWith('error'))).toEqual([]);
    // X's second question holds the worker, slowed
    const slow = slowSteps(cluster.model, 150);
    try {
      const blocker = read('x2', frontend.handle({ key: keyOf('x'), user: 'U1', text: 'x two', requestId: 'x2' }));
      await vi.waitFor(() => expect(seen).toContain('x2 started'), { timeout: 10_000 });
      const editE = read('e', frontend.handle({ key: keyOf('e'), user: 'U1', text: 'e two, edited', edit: 'e2', requestId: 'e2-e1' }));
      const editF = read('f', frontend.handle({ key: keyOf('f'), user: 'U1', text: 'f one, edited', edit: 'f1', requestId: 'f1-e1' }));
      // x1 is X's latest question until x2, being answered, is stored
      const editX = read('x', frontend.handle({ key: keyOf('x'), user: 'U1', text: 'x one, edited', edit: 'x1', requestId: 'x1-e1' }));
      // a new conversation's question behind the three: the refused edit is not counted ahead of it
      await vi.waitFor(() => expect(seen).toContain('x queued'), { timeout: 10_000 });
      const places: string[] = [];
      const newcomer = (async () => {
        for await (const ev of frontend.handle({
          key: keyOf('y'),
          user: 'U1',
          text: 'y one',
          image: await squarePng(40, 30),
          requestId: 'y1',
        }))
          if (ev.type === 'queued') places.push(`${ev.position}${seen.includes('x2 final') ? ' after x2' : ''}`);
      })();
      await vi.waitFor(() => expect(seen).toEqual(expect.arrayContaining(['e queued checked', 'f error'])), { timeout: 10_000 });
      await vi.waitFor(() => expect(places).toContain('2'), { timeout: 10_000 });
      expect(seen).not.toContain('x2 final');
      const [eE, eF, eX] = await Promise.all([editE, editF, editX]);
      await newcomer;
      expect((await blocker).find((e) => e.type === 'error')).toBeUndefined();
      expect(eE.find((e) => e.type === 'error')).toBeUndefined();
      expect(eE.some((e) => e.type === 'final')).toBe(true);
      expect((await frontend.history(keyOf('e')))!.turns.map((t) => t.user)).toEqual(['e one', 'e two, edited']);
      expect(eF.at(-1)).toEqual({
        type: 'error',
        code: 'stale',
        message: 'Only the latest question in a conversation is answered again when edited.',
      });
      expect(eF.some((e) => e.type === 'started')).toBe(false);
      expect(eX.at(-1)).toMatchObject({ type: 'error', code: 'stale' });
      expect(eX.some((e) => e.type === 'queued' && e.checked)).toBe(false);
      expect(seen.indexOf('x error')).toBeGreaterThan(seen.indexOf('x2 final'));
      expect((await frontend.history(keyOf('x')))!.turns.map((t) => t.user)).toEqual(['x one', 'x two']);
      expect((await frontend.history(keyOf('f')))!.turns.map((t) => t.user)).toEqual(['f one', 'f two']);
    } finally {
      slow.restore();
    }
  }, 60_000);
});
