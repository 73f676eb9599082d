// FairScheduler with several model jobs at a time (batched decoding): one job per conversation, turns in
// round robin, positions counted against the free slots.
import { describe, expect, it } from 'vitest';
import { FairScheduler } from '../../src/conversation/scheduler.js';

interface J {
  convId: string;
  control: boolean;
  name: string;
}

function harness(concurrency: number) {
  const running = new Map<string, () => void>();
  const started: string[] = [];
  const s = new FairScheduler<J>(
    (job) =>
      new Promise<void>((resolve) => {
        started.push(job.name);
        running.set(job.name, resolve);
      }),
    concurrency,
  );
  const add = (convId: string, name: string) => {
    const job = { convId, control: false, name };
    s.add(job);
    return job;
  };
  const finish = async (name: string) => {
    running.get(name)!();
    running.delete(name);
    await new Promise((r) => setTimeout(r, 0));
  };
  return { s, started, running, add, finish };
}

describe('FairScheduler with concurrency', () => {
  it('runs up to `concurrency` conversations at once, never two jobs of one conversation', async () => {
    const h = harness(3);
    const jobs = [h.add('A', 'A1'), h.add('A', 'A2'), h.add('B', 'B1'), h.add('C', 'C1'), h.add('D', 'D1'), h.add('B', 'B2')];
    expect(jobs.map((j) => h.s.position(j))).toEqual([0, 2, 0, 0, 1, 3]);
    h.s.pump();
    expect(h.started).toEqual(['A1', 'B1', 'C1']);
    expect(h.s.waiting).toBe(3);
    expect(h.s.wouldStartNow('E')).toBe(false);
    await h.finish('A1'); // D was waiting longer than A's next turn
    expect(h.started).toEqual(['A1', 'B1', 'C1', 'D1']);
    await h.finish('C1');
    expect(h.started.at(-1)).toBe('A2');
    await h.finish('B1');
    expect(h.started.at(-1)).toBe('B2');
    for (const n of ['D1', 'A2', 'B2']) await h.finish(n);
    await h.s.idle();
    expect(h.s.wouldStartNow('E')).toBe(true);
  });

  it('with concurrency 1 behaves as one job at a time', async () => {
    const h = harness(1);
    const a = h.add('A', 'A1');
    const b = h.add('B', 'B1');
    expect([h.s.position(a), h.s.position(b)]).toEqual([0, 1]);
    h.s.pump();
    expect(h.started).toEqual(['A1']);
    expect(h.s.position(b)).toBe(1);
    await h.finish('A1');
    expect(h.started).toEqual(['A1', 'B1']);
    await h.finish('B1');
  });
});
