// Regenerate across Redis: a front end queues a request for the conversation's last answer again, the worker
// (protocol 3) answers the stored question and replaces the stored answer. While a worker of an earlier version is
// alive the front end refuses it (that worker would answer an empty question). A real redis-server on a free
// loopback port, the real cluster worker and front end in this process, the demo model.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { MiniGPT } from '../../src/inference/model.js';
import {
  ConversationManager,
  createStore,
  type AnswerEvent,
  type ConversationKey,
  type ConversationRequest,
} from '../../src/conversation/index.js';
import { RemoteConversations } from '../../src/cluster/frontend.js';
import { startClusterWorker, type ClusterWorker } from '../../src/cluster/worker.js';
import { earlierWorkerBeat } from './helpers.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { squarePng } from '../slack/helpers.js';

const DEMO = join(import.meta.dirname, '..', '..', 'models', 'demo');

let redis: TestRedis;
let client: Redis;
let model: MiniGPT;
let manager: ConversationManager;
let worker: ClusterWorker;
let frontend: RemoteConversations;
const logs: string[] = [];

beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url);
  model = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1 });
  manager = new ConversationManager({ model, store: await createStore(redis.url), defaults: { maxNewTokens: 12, temperature: 1 } });
  worker = await startClusterWorker({
    redisUrl: redis.url,
    manager,
    model: { name: 'demo', architecture: 'minigpt_v2', provider: 'cpu' },
    lockMs: 2000,
  });
  frontend = new RemoteConversations({ redisUrl: redis.url, store: await createStore(redis.url), log: (l) => logs.push(l) });
}, 60_000);

afterAll(async () => {
  await frontend?.close();
  await worker?.close();
  await manager?.close();
  await model?.close();
  client?.disconnect();
  await redis?.cleanup();
});

async function ask(req: ConversationRequest): Promise<AnswerEvent[]> {
  const out: AnswerEvent[] = [];
  for await (const ev of frontend.handle(req)) out.push(ev);
  return out;
}

const finalText = (events: AnswerEvent[]) => events.flatMap((e) => (e.type === 'final' ? [e.text] : []))[0];

describe('regenerate through a front end', () => {
  it('the worker answers the stored last question again and replaces its answer; refused while an earlier worker is alive', async () => {
    const key: ConversationKey = { platform: 'slack', workspace: 'T1', channel: 'C1', thread: '1700000000.000100' };
    await ask({ key, user: 'U1', text: 'what is this?', image: await squarePng(40, 30), requestId: 'q1' });
    const e2 = await ask({ key, user: 'U1', text: '[vqa] what colour is the square?', requestId: 'q2', generation: { seed: 1 } });
    expect(finalText(e2)).toBeDefined();

    // the same seed: the same answer to the same question (the text sent with the request is not the question)
    const e3 = await ask({ key, user: 'U1', text: 'unused', regenerate: 'q2', requestId: 'q3', generation: { seed: 1 } });
    expect(e3.find((e) => e.type === 'error')).toBeUndefined();
    expect(finalText(e3)).toBe(finalText(e2));
    let h = (await frontend.history(key))!;
    expect(h.turns.map((t) => [t.user, t.requestId])).toEqual([
      ['what is this?', 'q1'],
      ['[vqa] what colour is the square?', 'q3'],
    ]);

    // someone else's answer, and an answer no longer the last: refused by the worker, nothing changed
    expect((await ask({ key, user: 'U2', text: '', regenerate: 'q3', requestId: 'q4' })).at(-1)).toMatchObject({
      type: 'error',
      code: 'not_allowed',
    });
    expect((await ask({ key, user: 'U1', text: '', regenerate: 'q1', requestId: 'q5' })).at(-1)).toMatchObject({
      type: 'error',
      code: 'stale',
    });
    expect((await frontend.history(key))!.turns.map((t) => t.requestId)).toEqual(['q1', 'q3']);

    // a worker of protocol 2 joins: the front end refuses before queueing, and says why
    await earlierWorkerBeat(client, 'old-2', 2, 2);
    const refused = await ask({ key, user: 'U1', text: '', regenerate: 'q3', requestId: 'q6' });
    expect(refused).toEqual([
      {
        type: 'error',
        code: 'unavailable',
        message: expect.stringMatching(/^Regenerating an answer is not possible while this bot is being upgraded/),
      },
    ]);
    h = (await frontend.history(key))!;
    expect(h.turns.map((t) => t.requestId)).toEqual(['q1', 'q3']);
    expect(logs.filter((l) => l.includes('worker old-2 (h, pid 2) is of an earlier version (protocol 2'))).toHaveLength(1);
  }, 60_000);
});
