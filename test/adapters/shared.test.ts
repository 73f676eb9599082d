// What adapters/shared gives every adapter: the paced message (one write per interval, counted from the end of
// the write before, never two at once, the newest content winning, the last word at once), the tracked tasks of
// a closing adapter, the answer-event switch and the restart notice, and secrets kept out of log lines.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { AnswerEvent } from '../../src/conversation/index.js';
import { onAnswerEvents, QueuePlaces, restartNotice, RESTARTING, unlessRefused } from '../../adapters/shared/answer-events.js';
import { describeError, hideSecrets } from '../../adapters/shared/errors.js';
import { TaskSet } from '../../adapters/shared/tasks.js';
import { ThrottledMessage } from '../../adapters/shared/throttled-message.js';

async function* stream(...events: AnswerEvent[]): AsyncIterable<AnswerEvent> {
  yield* events;
}

describe('ThrottledMessage', () => {
  beforeEach(() => vi.useFakeTimers({ now: 1_000_000 }));
  afterEach(() => vi.useRealTimers());

  /** A write that takes `ms`, recording when each started and how many ran at once. */
  function recorder(ms: number) {
    const writes: Array<{ content: string; at: number }> = [];
    let running = 0;
    let most = 0;
    const write = async (content: string) => {
      running++;
      most = Math.max(most, running);
      writes.push({ content, at: Date.now() });
      await new Promise((r) => setTimeout(r, ms));
      running--;
    };
    return { writes, write, most: () => most };
  }

  it('writes at most once per interval (from the end of one write to the start of the next), never two at once, the newest content winning', async () => {
    const r = recorder(300);
    const m = new ThrottledMessage<string>({ intervalMs: 1000, write: r.write });
    m.show('a');
    await vi.advanceTimersByTimeAsync(0);
    m.show('ab');
    m.show('abc');
    await vi.advanceTimersByTimeAsync(500);
    m.show('abcd');
    await vi.advanceTimersByTimeAsync(3000);
    expect(r.writes.map((w) => w.content)).toEqual(['a', 'abcd']);
    // 'a' took 300 ms: the next write starts an interval after it ended, so the platform, which sees a request
    // when it arrives, never sees two closer than the interval however long the first took to get there
    expect(r.writes[1].at - r.writes[0].at).toBe(300 + 1000);
    expect(r.most()).toBe(1);
  });

  it('waits for notBefore (the first text a moment to grow), then writes the newest', async () => {
    const r = recorder(0);
    const first = Date.now();
    const m = new ThrottledMessage<string>({ intervalMs: 100, write: r.write, notBefore: () => first + 600 });
    m.show('Hel');
    await vi.advanceTimersByTimeAsync(300);
    m.show('Hello there');
    await vi.advanceTimersByTimeAsync(400);
    expect(r.writes).toEqual([{ content: 'Hello there', at: first + 600 }]);
  });

  it('final: pending edits are dropped and the last word goes out after the write in flight, at once', async () => {
    const r = recorder(200);
    const m = new ThrottledMessage<string>({ intervalMs: 1000, write: r.write });
    m.show('a');
    await vi.advanceTimersByTimeAsync(50);
    m.show('ab');
    const done = m.final('final answer');
    await vi.advanceTimersByTimeAsync(500);
    await done;
    expect(r.writes.map((w) => w.content)).toEqual(['a', 'final answer']);
    expect(r.writes[1].at - r.writes[0].at).toBe(200);
    m.show('late');
    await vi.advanceTimersByTimeAsync(2000);
    expect(r.writes).toHaveLength(2);
  });

  it('a failed write is reported and tried again with the newest content; flush writes what is still pending', async () => {
    const errors: unknown[] = [];
    const seen: string[] = [];
    let fail = true;
    const m = new ThrottledMessage<string>({
      intervalMs: 100,
      write: async (c) => {
        seen.push(c);
        if (fail) {
          fail = false;
          throw new Error('429');
        }
      },
      onError: (e) => errors.push(e),
    });
    m.show('x');
    await vi.advanceTimersByTimeAsync(150);
    expect(seen).toEqual(['x', 'x']);
    expect(errors).toHaveLength(1);
    m.show('xy');
    await m.flush();
    expect(seen).toEqual(['x', 'x', 'xy']);
  });
});

describe('TaskSet', () => {
  it('reports a failing task and settles once the tasks end, or says when the wait ran out', async () => {
    const failures: string[] = [];
    const tasks = new TaskSet((what, err) => failures.push(`${what}: ${(err as Error).message}`));
    let finish!: () => void;
    tasks.run('slow', () => new Promise<void>((r) => (finish = r)));
    tasks.run('broken', async () => {
      throw new Error('boom');
    });
    expect(await tasks.settle(20)).toBe(false);
    expect(failures).toEqual(['broken: boom']);
    finish();
    expect(await tasks.settle(1000)).toBe(true);
    expect(tasks.size).toBe(0);
  });
});

describe('answer events', () => {
  it('runs the handler of each type in order and ignores the types without one', async () => {
    const seen: string[] = [];
    await onAnswerEvents(
      stream({ type: 'queued', position: 2 }, { type: 'started' }, { type: 'text', text: 'Hi' }, { type: 'timings', timings: {} }),
      {
        queued: (ev) => void seen.push(`queued ${ev.position}`),
        text: async (ev) => {
          await new Promise((r) => setTimeout(r, 5));
          seen.push(`text ${ev.text}`);
        },
      },
    );
    expect(seen).toEqual(['queued 2', 'text Hi']);
  });

  it('unlessRefused: decided at the first checked place, else after the start; the places told before that left out', async () => {
    const stale: AnswerEvent = { type: 'error', code: 'stale', message: 'not the latest' };
    const all = async (it: AsyncIterable<AnswerEvent>) => {
      const out: AnswerEvent[] = [];
      for await (const ev of it) out.push(ev);
      return out;
    };
    // refused while it waits (checked at enqueue), or when it starts
    for (const events of [
      [{ type: 'queued', position: 3 }, stale],
      [{ type: 'queued', position: 3 }, { type: 'queued', position: 2 }, { type: 'started' }, stale],
    ] as AnswerEvent[][]) {
      expect(await unlessRefused(stream(...events), ['stale'])).toEqual({ refused: stale });
    }
    // answered: decided at the checked place, while the rest is still to come
    let more!: () => void;
    const gate = new Promise<void>((r) => (more = r));
    const held = await unlessRefused(
      (async function* (): AsyncIterable<AnswerEvent> {
        yield { type: 'queued', position: 3 };
        yield { type: 'queued', position: 3, checked: true };
        await gate;
        yield { type: 'queued', position: 1, checked: true };
        yield { type: 'started' };
        yield { type: 'text', text: 'hi' };
      })(),
      ['stale'],
    );
    if (!('events' in held)) throw new Error('refused');
    more();
    expect((await all(held.events)).map((e) => (e.type === 'queued' ? `queued ${e.position}` : e.type))).toEqual([
      'queued 3',
      'queued 1',
      'started',
      'text',
    ]);
    // never checked (a cluster's front end): decided by what follows the start; another error is the stream's own
    const started = await unlessRefused(stream({ type: 'queued', position: 2 }, { type: 'started' }, { type: 'text', text: 'a' }), [
      'stale',
    ]);
    expect('events' in started && (await all(started.events)).map((e) => e.type)).toEqual(['started', 'text']);
    const busy: AnswerEvent = { type: 'error', code: 'busy', message: 'busy' };
    const other = await unlessRefused(stream(busy), ['stale']);
    expect('events' in other && (await all(other.events))).toEqual([busy]);
  });

  it('a cancellation while the adapter closes says the bot is restarting', async () => {
    let closing = false;
    const cancelled: AnswerEvent = { type: 'error', code: 'cancelled', message: 'cancelled' };
    const out: AnswerEvent[] = [];
    for await (const ev of restartNotice(stream(cancelled), () => closing)) out.push(ev);
    closing = true;
    for await (const ev of restartNotice(stream(cancelled), () => closing)) out.push(ev);
    expect(out.map((e) => (e.type === 'error' ? e.message : e.type))).toEqual(['cancelled', RESTARTING]);
  });
});

describe('errors', () => {
  it('describes an error with what its client attached, and hides secrets long enough to be secrets', () => {
    const err = Object.assign(new Error('Missing Access'), {
      code: 50001,
      status: 403,
      method: 'post',
      url: 'https://discord.com/api/v10/x',
    });
    expect(describeError(err)).toBe('Missing Access, code 50001, HTTP 403, POST https://discord.com/api/v10/x');
    expect(describeError('plain')).toBe('plain');
    expect(hideSecrets('token abcdefgh and abc', ['abcdefgh', 'abc'], 6)).toBe('token [redacted] and abc');
  });
});

describe('QueuePlaces (which places in the queue a waiting reply shows)', () => {
  it('the first place above 0, then a lower one at most every everyMs; never a higher one', () => {
    const places = new QueuePlaces(5000);
    expect(places.show(0, 0)).toBe(false); // started at once: nothing to show
    expect(places.waited).toBe(false);
    expect(places.show(3, 1000)).toBe(true);
    expect(places.waited).toBe(true);
    expect(places.show(2, 2000)).toBe(false); // too soon after the last
    expect(places.show(4, 7000)).toBe(false); // further back: not shown
    expect(places.show(2, 7000)).toBe(true);
    expect(places.show(2, 20_000)).toBe(false); // the same place
    expect(places.show(0, 20_000)).toBe(true); // next in line
  });
});
