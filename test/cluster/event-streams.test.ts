// src/cluster/event-streams.ts: a front end reads the answer events of all its jobs through one blocking Redis
// connection. Every stream gets its own entries, in order, however many are read at once; a stream opened while
// the reader blocks on others is not held back; Redis going away fails the readers waiting on it and the next
// stream reconnects; closing fails them too. A real redis-server on a free loopback port.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { EventStreams } from '../../src/cluster/event-streams.js';
import { connectionsReceived, startRedis, type TestRedis } from '../helpers/redis.js';

let redis: TestRedis;
let writer: Redis;

beforeAll(async () => {
  redis = await startRedis();
  writer = new Redis(redis.url);
  writer.on('error', () => {}); // (Redis is stopped and started by a test)
}, 30_000);

afterAll(async () => {
  writer?.disconnect();
  await redis?.cleanup();
});

const connections = () => connectionsReceived(writer);

/** Every entry's value until the one that says `end`. */
async function readAll(r: { next(ms: number): Promise<[string, string[]][]> }): Promise<string[]> {
  const got: string[] = [];
  for (;;) {
    for (const [, fields] of await r.next(1000)) {
      if (fields[1] === 'end') return got;
      got.push(fields[1]);
    }
  }
}

describe('EventStreams on a Redis that refuses CLIENT (as some hosted ones do)', () => {
  it('still reads every stream; a new one waits for the current block at most', async () => {
    const restricted = await startRedis({ args: ['--rename-command', 'CLIENT', ''] });
    const main = new Redis(restricted.url);
    const w = new Redis(restricted.url);
    const streams = new EventStreams(main, 500);
    try {
      await expect(w.call('CLIENT', 'ID')).rejects.toThrow(/unknown command/i);
      const a = streams.open('test:r:a');
      const waitingA = a.next(5000);
      await new Promise((r) => setTimeout(r, 100));
      const b = streams.open('test:r:b');
      await w.xadd('test:r:b', '*', 'e', 'b1');
      const t0 = Date.now();
      expect((await b.next(3000)).map(([, f]) => f[1])).toEqual(['b1']);
      expect(Date.now() - t0).toBeLessThan(1500);
      await w.xadd('test:r:a', '*', 'e', 'a1');
      expect((await waitingA).map(([, f]) => f[1])).toEqual(['a1']);
    } finally {
      streams.close();
      main.disconnect();
      w.disconnect();
      await restricted.cleanup();
    }
  }, 30_000);
});

describe('EventStreams', () => {
  it('reads 20 streams through one connection, each its own entries in order', async () => {
    const main = new Redis(redis.url);
    await main.ping();
    const streams = new EventStreams(main);
    try {
      const before = await connections();
      const names = Array.from({ length: 20 }, (_, i) => `test:ev:${i}`);
      const readers = names.map((n) => streams.open(n));
      const reading = readers.map((r) => readAll(r));
      // written interleaved, as 20 workers would
      for (let k = 0; k < 30; k++) for (const [i, n] of names.entries()) await writer.xadd(n, '*', 'e', `${i}-${k}`);
      for (const n of names) await writer.xadd(n, '*', 'e', 'end');
      const got = await Promise.all(reading);
      got.forEach((values, i) => expect(values).toEqual(Array.from({ length: 30 }, (_, k) => `${i}-${k}`)));
      for (const r of readers) r.close();
      // one connection for all of them: the reader's
      expect((await connections()) - before).toBe(1);
    } finally {
      streams.close();
      main.disconnect();
    }
  });

  it('a stream opened while the reader blocks on another is read at once, not after the block', async () => {
    const main = new Redis(redis.url);
    const streams = new EventStreams(main, 10_000);
    try {
      const a = streams.open('test:block:a');
      const waitingA = a.next(15_000);
      await new Promise((r) => setTimeout(r, 300)); // the reader is now blocked on a alone, for up to 10 s
      const b = streams.open('test:block:b');
      const t0 = Date.now();
      await writer.xadd('test:block:b', '*', 'e', 'hello');
      const entries = await b.next(12_000);
      expect(entries.map(([, f]) => f[1])).toEqual(['hello']);
      expect(Date.now() - t0).toBeLessThan(2000);
      await writer.xadd('test:block:a', '*', 'e', 'for a');
      expect((await waitingA).map(([, f]) => f[1])).toEqual(['for a']);
      a.close();
      b.close();
    } finally {
      streams.close();
      main.disconnect();
    }
  });

  it('a stream opened after every other was closed (the reader idle) is read, over the same connection', async () => {
    const main = new Redis(redis.url);
    await main.ping();
    const streams = new EventStreams(main, 200);
    try {
      const a = streams.open('test:idle:a');
      await writer.xadd('test:idle:a', '*', 'e', 'a1');
      expect((await a.next(2000)).map(([, f]) => f[1])).toEqual(['a1']);
      a.close();
      await new Promise((r) => setTimeout(r, 500)); // its block ended, nothing left to read: the loop stops
      const before = await connections();
      for (let i = 0; i < 3; i++) {
        const b = streams.open(`test:idle:b${i}`);
        await writer.xadd(`test:idle:b${i}`, '*', 'e', `b${i}`);
        expect((await b.next(2000)).map(([, f]) => f[1])).toEqual([`b${i}`]);
        b.close();
      }
      expect(await connections()).toBe(before);
    } finally {
      streams.close();
      main.disconnect();
    }
  });

  it('Redis going away fails the waiting readers; once it is back, a new stream reads again; close fails them', async () => {
    const main = new Redis(redis.url, { maxRetriesPerRequest: 1 });
    main.on('error', () => {});
    const streams = new EventStreams(main);
    try {
      const r = streams.open('test:down:1');
      const waiting = r.next(20_000);
      await new Promise((res) => setTimeout(res, 200));
      await redis.stop();
      await expect(waiting).rejects.toThrow();
      await redis.start();
      const w2 = new Redis(redis.url);
      try {
        const r2 = streams.open('test:down:2');
        await w2.xadd('test:down:2', '*', 'e', 'after');
        let entries: [string, string[]][] = [];
        for (let i = 0; i < 10 && entries.length === 0; i++) entries = await r2.next(1000);
        expect(entries.map(([, f]) => f[1])).toEqual(['after']);
        const r3 = streams.open('test:down:3');
        const pending = r3.next(10_000);
        streams.close();
        await expect(pending).rejects.toThrow(/closing/);
        expect(() => streams.open('test:down:4')).toThrow(/closing/);
      } finally {
        w2.disconnect();
      }
    } finally {
      streams.close();
      main.disconnect();
    }
  }, 30_000);
});
