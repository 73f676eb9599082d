// A cluster in the middle of an upgrade: a worker of an earlier version (protocol 1: it forgets a conversation
// whatever the reset job's `by` says, and says nothing of what it did) beside a front end of this one. The front end
// sees it in the heartbeats, logs it once, decides itself who may forget a conversation, and `minigpt status` flags
// the worker. A real redis-server on a free loopback port; the earlier worker is emulated with BullMQ as it behaved.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager, createStore, type ConversationKey } from '../../src/conversation/index.js';
import { RemoteConversations } from '../../src/cluster/frontend.js';
import { clusterStatus, statusText } from '../../src/cluster/status.js';
import { encodeEvent, keys, QUEUE_NAME, type JobData } from '../../src/cluster/protocol.js';
import { earlierWorkerBeat } from './helpers.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { squarePng } from '../slack/helpers.js';

const DEMO = join(import.meta.dirname, '..', '..', 'models', 'demo');

let redis: TestRedis;
let client: Redis;
let model: MiniGPT;
let manager: ConversationManager;
let oldWorker: Worker<JobData>;
let heartbeat: NodeJS.Timeout;
let frontend: RemoteConversations;
const logs: string[] = [];

beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url);
  model = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1, forcedAnswer: 'a square' });
  manager = new ConversationManager({ model, store: await createStore(redis.url), defaults: { maxNewTokens: 8, temperature: 0 } });
  // the earlier worker: a heartbeat without `protocol`; a reset job forgets, whoever asked, then ends the stream
  const beat = () => earlierWorkerBeat(client, 'old-1', 1);
  await beat();
  heartbeat = setInterval(() => void beat(), 1000);
  oldWorker = new Worker<JobData>(
    QUEUE_NAME,
    async (job) => {
      if (job.data.kind === 'reset') await manager.reset(job.data.key);
      await client.xadd(keys.events(job.id!), '*', 'e', encodeEvent({ type: 'end' }));
    },
    { connection: { url: redis.url, maxRetriesPerRequest: null } as never },
  );
  await oldWorker.waitUntilReady();
  frontend = new RemoteConversations({ redisUrl: redis.url, store: await createStore(redis.url), log: (l) => logs.push(l) });
}, 60_000);

afterAll(async () => {
  clearInterval(heartbeat);
  await frontend?.close();
  await oldWorker?.close();
  await manager?.close();
  await model?.close();
  client?.disconnect();
  await redis?.cleanup();
});

describe('a worker of an earlier version', () => {
  it('the front end decides who may forget, logs the worker once, and status flags it', async () => {
    const key: ConversationKey = { platform: 'slack', workspace: 'T1', channel: 'C1', thread: '1700000000.000100' };
    for await (const _ of manager.handle({ key, user: 'alice', text: 'what is this?', image: await squarePng(40, 30) }));
    expect((await frontend.history(key))?.turns.map((t) => t.by)).toEqual(['alice']);

    // mallory took no part: refused, nothing forgotten (the earlier worker would have forgotten it)
    expect(await frontend.reset(key, { by: 'mallory' })).toBe('not_allowed');
    expect(await frontend.history(key)).not.toBeNull();
    expect(await frontend.reset(key, { by: 'mallory' })).toBe('not_allowed');
    expect(logs.filter((l) => l.includes('worker old-1 (h, pid 1) is of an earlier version (protocol 1'))).toHaveLength(1);

    // alice did
    expect(await frontend.reset(key, { by: 'alice' })).toBe('forgotten');
    expect(await frontend.history(key)).toBeNull();

    expect(statusText(await clusterStatus(redis.url))).toMatch(/old-1 .*\(an earlier version: protocol 1, upgrade it\)/);
  }, 60_000);
});
