// A worker that dies with follow-ups waiting in its own queue (those of the conversations whose KV cache it held):
// a live worker takes the queue over, answers them in full, and lets the queue go once it is empty; it reads the
// queue's job counts through one connection while it holds it, not a new one every heartbeat. A real
// redis-server on a free loopback port, the real worker (in this process) with the demo model.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager, conversationId, createStore, type ConversationKey } from '../../src/conversation/index.js';
import { startClusterWorker } from '../../src/cluster/worker.js';
import {
  decodeEvent,
  encodeRequest,
  HEARTBEAT_MS,
  type JobData,
  keys,
  type WireEvent,
  workerQueueName,
} from '../../src/cluster/protocol.js';
import { renderExamples } from '../../adapters/web/examples.js';
import { connectionsReceived, startRedis, type TestRedis } from '../helpers/redis.js';

const DEMO = join(import.meta.dirname, '..', '..', 'models', 'demo');
let model: MiniGPT;
let redis: TestRedis;
let raw: Redis;

beforeAll(async () => {
  redis = await startRedis();
  raw = new Redis(redis.url);
  model = await MiniGPT.load(DEMO, { provider: 'cpu' });
}, 60_000);

afterAll(async () => {
  raw?.disconnect();
  await model?.close();
  await redis?.cleanup();
});

/** The job's events as the worker streams them, until `end`. */
async function eventsOf(jobId: string, timeoutMs: number): Promise<WireEvent[]> {
  const out: WireEvent[] = [];
  let last = '0';
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const res = (await raw.xread('BLOCK', 500, 'STREAMS', keys.events(jobId), last)) as [string, [string, string[]][]][] | null;
    for (const [, entries] of res ?? []) {
      for (const [id, fields] of entries) {
        last = id;
        const ev = decodeEvent(fields[1]);
        out.push(ev);
        if (ev.type === 'end') return out;
      }
    }
  }
  throw new Error(`no end event for ${jobId} in ${timeoutMs} ms: ${JSON.stringify(out)}`);
}

describe("a dead worker's own queue", () => {
  it('is taken over by a live worker, its follow-ups answered in full, then let go', async () => {
    const ghost = 'ghost-worker-1';
    const ex = await renderExamples({ count: 1 });
    const png = ex.png(ex.list[0].id)!;
    // a conversation whose KV cache the ghost held: its requests were queued to the ghost's own queue. The second
    // is numbered 3: its predecessor (2) never comes, so it waits for the order timeout and the queue stays
    // taken over meanwhile
    const key: ConversationKey = { platform: 'web', workspace: 'w', channel: 'c', thread: `adopt-${Date.now()}` };
    const convId = conversationId(key);
    const requests = [
      { seq: 1, text: ex.list[0].prompt, image: png },
      { seq: 3, text: 'what colour is it?' },
    ];
    const queue = new Queue<JobData>(workerQueueName(ghost), { connection: { url: redis.url } as never });
    const jobIds: string[] = [];
    for (const [i, r] of requests.entries()) {
      const requestId = `adopt-${i}-${Date.now()}`;
      const request = encodeRequest(
        { key, user: 'u', text: r.text, generation: { temperature: 0, maxNewTokens: 16 }, ...(r.image ? { image: r.image } : {}) },
        requestId,
      );
      await queue.add('answer', { kind: 'answer', convId, seq: r.seq, request }, { jobId: requestId, attempts: 2 });
      jobIds.push(requestId);
    }
    await queue.close();
    // the ghost is known to have a queue, and has no heartbeat: it died
    await raw.sadd(keys.known, ghost);

    const lines: string[] = [];
    const manager = new ConversationManager({ model, store: await createStore(redis.url), kvCacheBytes: 0 });
    const worker = await startClusterWorker({
      redisUrl: redis.url,
      manager,
      model: { name: 'demo', architecture: 'minigpt-v2', provider: 'cpu' },
      orderTimeoutMs: 5 * HEARTBEAT_MS,
      log: (l) => lines.push(l),
    });
    const connections = () => connectionsReceived(raw);
    try {
      const first = await eventsOf(jobIds[0], 60_000);
      expect(
        first.filter((e) => e.type === 'error'),
        JSON.stringify(first),
      ).toEqual([]);
      expect(
        lines.some((l) => l.includes(`worker ${ghost} stopped with 2 job(s) in its queue; taking them over`)),
        lines.join('\n'),
      ).toBe(true);
      // two beats while the adopted queue still holds the waiting job: its counts are read, no connection opened
      expect(await raw.sismember(keys.known, ghost)).toBe(1);
      const before = await connections();
      await new Promise((r) => setTimeout(r, 2 * HEARTBEAT_MS + 200));
      expect(await connections()).toBe(before);
      expect(await raw.sismember(keys.known, ghost)).toBe(1);
      // the waiting one runs after the order timeout, answered in full after the first
      const second = await eventsOf(jobIds[1], 60_000);
      expect(
        second.filter((e) => e.type === 'error'),
        JSON.stringify(second),
      ).toEqual([]);
      for (const evs of [first, second]) expect((evs.find((e) => e.type === 'final') as { text: string } | undefined)?.text).toBeTruthy();
      expect((await manager.history(key))?.turns.map((t) => t.user)).toEqual(requests.map((r) => r.text));
      // the emptied queue is let go at a following beat: the ghost is forgotten
      const deadline = Date.now() + 5 * HEARTBEAT_MS;
      while ((await raw.sismember(keys.known, ghost)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(await raw.sismember(keys.known, ghost)).toBe(0);
    } finally {
      await worker.close();
      await manager.close();
    }
  }, 120_000);
});
