// API_MAX_CONCURRENT with several front ends: a key's requests in progress are counted in Redis, so that a client
// spread over front ends by a load balancer gets the number set, not that number per front end. Two real front ends
// (serveFrontend, the API on each) and a cluster worker with the demo model (its steps slowed, so that an answer
// lasts), a real redis-server on a free loopback port; the places of a front end that died lapse by themselves.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { serveFrontend, type RunningFrontend } from '../../src/cluster/serve.js';
import { RedisConcurrency } from '../../src/cluster/concurrency.js';
import { startDemoWorker, type DemoWorker } from './helpers.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

let redis: TestRedis;
let client: Redis;
let worker: DemoWorker;
const fronts: RunningFrontend[] = [];
const logs: string[] = [];

beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url);
  worker = await startDemoWorker(redis.url, { stepMs: 40, manager: { defaults: { maxNewTokens: 30, temperature: 0 } } });
  const env = {
    REDIS_URL: redis.url,
    API_PORT: '0',
    WEB_PORT: '0',
    API_MAX_CONCURRENT: '1',
    MINIGPT_API_KEYS: 'key-one,key-two',
    DISCORD_TOKEN: '',
    SLACK_BOT_TOKEN: '',
  };
  for (let i = 0; i < 2; i++) fronts.push(await serveFrontend({ env, log: (l) => logs.push(`${i}: ${l}`) }));
}, 60_000);

afterAll(async () => {
  for (const f of fronts) await f.close();
  await worker?.close();
  client?.disconnect();
  await redis?.cleanup();
});

const sdk = (front: number, apiKey: string) => new OpenAI({ baseURL: fronts[front].apiUrl!, apiKey, maxRetries: 0 });
const ask = (c: OpenAI, maxTokens = 2) =>
  c.chat.completions.create({
    model: 'demo',
    messages: [{ role: 'user', content: 'what is the red shape?' }],
    temperature: 0,
    max_tokens: maxTokens,
  });
const status = (p: Promise<unknown>) =>
  p.then(
    () => 200,
    (e: unknown) => (e instanceof OpenAI.APIError ? `${e.status} ${e.code}` : String(e)),
  );

describe('API_MAX_CONCURRENT over several front ends', () => {
  it('counts a key’s requests on every front end; other keys are not held back; a finished one frees its place', async () => {
    expect(logs.filter((l) => l.includes('per key: 1 at once (counted with the other front ends)'))).toHaveLength(2);
    // a long answer streamed through front end 0
    const stream = await sdk(0, 'key-one').chat.completions.create({
      model: 'demo',
      messages: [{ role: 'user', content: 'describe the picture' }],
      temperature: 0,
      max_tokens: 30,
      stream: true,
    });
    const first = await stream[Symbol.asyncIterator]().next();
    expect(first.done).toBe(false);
    // the same key through front end 1: refused; another key: answered
    expect(await status(ask(sdk(1, 'key-one')))).toBe('429 too_many_concurrent_requests');
    expect(await status(ask(sdk(0, 'key-one')))).toBe('429 too_many_concurrent_requests');
    expect(await status(ask(sdk(1, 'key-two')))).toBe(200);
    stream.controller.abort();
    await vi.waitFor(async () => expect(await client.zcard('minigpt:api-inflight:key1')).toBe(0), { timeout: 5000 });
    expect(await status(ask(sdk(1, 'key-one')))).toBe(200);
  }, 60_000);

  it("a front end that died holding a place: it comes free once the hold lapses; a live one's hold is renewed", async () => {
    const dying = new Redis(redis.url);
    const lapsing = new RedisConcurrency(dying, () => {}, 600);
    expect(await lapsing.acquire('key1', 1)).toBeTypeOf('function');
    lapsing.close();
    dying.disconnect(); // died: nothing given back, nothing renewed
    expect(await status(ask(sdk(1, 'key-one')))).toBe('429 too_many_concurrent_requests');
    await vi.waitFor(async () => expect(await status(ask(sdk(1, 'key-one')))).toBe(200), { timeout: 5000, interval: 200 });

    // held for longer than its hold, renewed meanwhile: still counted, then given back
    const live = new RedisConcurrency(client, () => {}, 600);
    const release = await live.acquire('key1', 1);
    await new Promise((r) => setTimeout(r, 1500));
    expect(await status(ask(sdk(0, 'key-one')))).toBe('429 too_many_concurrent_requests');
    release!();
    await vi.waitFor(async () => expect(await status(ask(sdk(0, 'key-one')))).toBe(200), { timeout: 5000, interval: 100 });
    live.close();
  }, 60_000);

  it('lets requests through, saying why, while Redis cannot be reached', async () => {
    const gone = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false });
    const said: string[] = [];
    const c = new RedisConcurrency(gone, (l) => said.push(l));
    const release = await c.acquire('key1', 1);
    expect(release).toBeTypeOf('function');
    expect(await c.acquire('key1', 1)).toBeTypeOf('function');
    expect(said[0]).toMatch(/^api: concurrency limit: Redis failed, letting the request through: /);
    c.close();
    gone.disconnect();
  });
});
