// The operator's endpoint (METRICS_PORT): Prometheus metrics of the requests as adapters hand them over (counted,
// timed, tokens), the process's own, and the probes (/healthz, /readyz) of each role: one process; a front end
// (not ready without a live worker, ready once one beats) and a worker on a real redis-server. The tiny demo
// package through the real web demo; the text format is read back with a small parser of the exposition format.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { metricsSettings, serve, ServeError } from '../../src/serve.js';
import { serveFrontend, serveWorker } from '../../src/cluster/serve.js';
import Keyv from 'keyv';
import type { QuestionOutcome } from '../../src/conversation/index.js';
import { BotMetrics } from '../../src/observe/metrics.js';
import { startMetricsServer } from '../../src/observe/server.js';
import { buildTinyPackage, postChat, randomConversation, readEvents, testPng } from '../web/helpers.js';
import { writeBotConfig } from '../helpers/bot-config.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { FakeSlack } from '../slack/fake-slack.js';
import { textReplies } from '../slack/helpers.js';

let work: string;
let config: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-metrics-'));
  const pkg = await buildTinyPackage(work);
  await mkdir(join(work, 'configs'));
  config = await writeBotConfig(join(work, 'configs', 'tiny.yaml'), {
    model: { package: pkg, max_new_tokens: 12 },
    runtime: { queue_size: 4 },
  });
}, 120_000);

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** Samples of the exposition format: `name{labels}` -> value. */
async function scrape(base: string, key?: string): Promise<Map<string, number>> {
  const res = await fetch(`${base}/metrics`, key ? { headers: { authorization: `Bearer ${key}` } } : {});
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

async function probe(base: string, path: '/healthz' | '/readyz'): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${base}${path}`);
  return { status: res.status, body: await res.json() };
}

/** A web demo turn in a new conversation: its final event, or its error. */
async function chat(webUrl: string, fields: { text: string; image?: Buffer }) {
  const events = await readEvents(await postChat(webUrl, { conversation: randomConversation(), ...fields }));
  return events.find((e) => e.type === 'final' || e.type === 'error');
}

describe('METRICS_PORT', () => {
  it('one process: requests counted by platform and outcome, tokens and times, the process metrics, the probes', async () => {
    const logs: string[] = [];
    const bot = await serve({ env: { MINIGPT_CONFIG: config, WEB_PORT: '0', METRICS_PORT: '0' }, log: (l) => logs.push(l) });
    try {
      const base = bot.metricsUrl!;
      expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(logs).toContain(`minigpt: metrics on ${base}/metrics (probes: /healthz, /readyz)`);
      expect(await probe(base, '/healthz')).toEqual({ status: 200, body: { status: 'ok' } });
      expect(await probe(base, '/readyz')).toEqual({ status: 200, body: { ready: true } });

      const before = await scrape(base);
      expect(before.get(`minigpt_info{role="all",model="${bot.model.meta.name}",provider="cpu"}`)).toBe(1);
      expect(before.get('minigpt_queue_waiting')).toBe(0);
      expect(before.has('process_cpu_seconds_total')).toBe(true);
      expect(before.has('nodejs_eventloop_lag_seconds')).toBe(true);

      expect((await chat(bot.webUrl!, { text: 'what is this?', image: await testPng() }))?.type).toBe('final');
      expect(await chat(bot.webUrl!, { text: 'and without an image?' })).toMatchObject({ type: 'error', code: 'no_image' });
      const after = await scrape(base);
      expect(after.get('minigpt_requests_total{platform="web",outcome="answered"}')).toBe(1);
      expect(after.get('minigpt_requests_total{platform="web",outcome="no_image"}')).toBe(1);
      expect(after.get('minigpt_requests_in_flight{platform="web"}')).toBe(0);
      expect(after.get('minigpt_answer_seconds_count{platform="web"}')).toBe(1);
      expect(after.get('minigpt_time_to_first_text_seconds_count{platform="web"}')).toBe(1);
      expect(after.get('minigpt_vision_encoder_seconds_count')).toBe(1);
      expect(after.get('minigpt_generated_tokens_total')).toBeGreaterThan(0);
      expect(after.get('minigpt_generated_tokens_total')).toBeLessThanOrEqual(12);
      expect(after.get('minigpt_prompt_tokens_total')).toBeGreaterThan(16); // the image's tokens and the text
      expect(after.get('minigpt_decode_seconds_total')).toBeGreaterThan(0);

      // Regenerate: counted as a request and as a regeneration, by outcome
      const conversation = randomConversation();
      const events = await readEvents(await postChat(bot.webUrl!, { conversation, text: 'hi', image: await testPng() }));
      const firstId = String(events.find((e) => e.type === 'final')?.requestId);
      await readEvents(await postChat(bot.webUrl!, { conversation, regenerate: firstId }));
      await readEvents(await postChat(bot.webUrl!, { conversation, regenerate: firstId }));
      const regenerated = await scrape(base);
      expect(regenerated.get('minigpt_regenerations_total{platform="web",outcome="answered"}')).toBe(1);
      expect(regenerated.get('minigpt_regenerations_total{platform="web",outcome="stale"}')).toBe(1);
      expect(regenerated.get('minigpt_requests_total{platform="web",outcome="answered"}')).toBe(3);

      // An edited question: counted as a request and as an edit, by outcome
      await readEvents(await postChat(bot.webUrl!, { conversation, edit: firstId, text: 'and the colour?' }));
      await readEvents(await postChat(bot.webUrl!, { conversation, edit: firstId, text: 'and the colour?' }));
      const edited = await scrape(base);
      expect(edited.get('minigpt_edited_questions_total{platform="web",outcome="answered"}')).toBe(1);
      expect(edited.get('minigpt_edited_questions_total{platform="web",outcome="stale"}')).toBe(1);
      expect(edited.get('minigpt_regenerations_total{platform="web",outcome="answered"}')).toBe(1);
      expect(edited.get('minigpt_requests_total{platform="web",outcome="answered"}')).toBe(4);

      // the KV caches: a new conversation about the same image starts from another one's kept cache
      await vi.waitFor(async () => expect((await scrape(base)).get('minigpt_kv_cache_keeping')).toBe(0));
      const cached = await scrape(base);
      expect(cached.get('minigpt_kv_cache_entries')).toBe(2);
      expect(cached.get('minigpt_kv_cache_bytes')).toBeGreaterThan(0);
      expect(cached.get('minigpt_kv_cache_hits_total')).toBe(2); // the regenerated and the edited answer
      expect((await chat(bot.webUrl!, { text: 'what colour is it?', image: await testPng() }))?.type).toBe('final');
      const lent = await scrape(base);
      expect(lent.get('minigpt_kv_cache_lent_total')).toBe(cached.get('minigpt_kv_cache_lent_total')! + 1);
      expect(lent.get('minigpt_kv_cache_misses_total')).toBe(cached.get('minigpt_kv_cache_misses_total')! + 1);
      expect(lent.get('minigpt_kv_cache_evictions_total')).toBe(0);
      expect(lent.get('minigpt_prefill_handoffs_total')).toBe(0);

      // the web page's "new conversation"
      const res = await fetch(new URL('/api/reset', bot.webUrl), {
        method: 'POST',
        headers: { 'content-type': 'application/json', origin: new URL(bot.webUrl!).origin },
        body: JSON.stringify({ conversation: randomConversation() }),
      });
      expect(res.status).toBe(204);
      expect((await scrape(base)).get('minigpt_resets_total{platform="web",outcome="empty"}')).toBe(1);

      expect((await fetch(`${base}/other`)).status).toBe(404);
      expect((await fetch(`${base}/metrics`, { method: 'POST' })).status).toBe(405);
    } finally {
      await bot.close();
    }
    await expect(fetch(`${bot.metricsUrl}/healthz`)).rejects.toThrow();
  });

  it("requests refused by a user's rate limit are counted by adapter (Slack, on the fake Slack)", async () => {
    const fake = await FakeSlack.start();
    const bot = await serve({
      env: {
        MINIGPT_CONFIG: config,
        SLACK_BOT_TOKEN: fake.botToken,
        SLACK_SIGNING_SECRET: fake.signingSecret,
        SLACK_PORT: '0',
        SLACK_API_URL: fake.apiUrl,
        SLACK_RATE_LIMIT: '1/60',
        METRICS_PORT: '0',
      },
      log: () => {},
    });
    try {
      fake.appUrl = bot.adapters[0]!.url!.replace('localhost', '127.0.0.1');
      const first = await fake.mention('CM1', { files: [fake.addFile({ name: 'a.png', data: await testPng(), mimetype: 'image/png' })] });
      await fake.waitFor(() => textReplies(fake, 'CM1', first.msg.ts).find((m) => !/…/.test(m.text)), 20_000, 'the first answer');
      await fake.mention('CM2', { files: [fake.addFile({ name: 'b.png', data: await testPng(), mimetype: 'image/png' })] });
      await fake.waitFor(() => fake.ephemerals.find((e) => e.channel === 'CM2'), 10_000, 'the rate-limit notice');
      const m = await scrape(bot.metricsUrl!);
      expect(m.get('minigpt_rate_limited_total{platform="slack"}')).toBe(1);
      expect(m.get('minigpt_requests_total{platform="slack",outcome="answered"}')).toBe(1);
    } finally {
      await bot.close();
      await fake.close();
    }
  });

  it('a bad METRICS_PORT, or one in use, stops the start before any adapter listens', async () => {
    await expect(serve({ env: { MINIGPT_CONFIG: config, WEB_PORT: '0', METRICS_PORT: 'x' }, log: () => {} })).rejects.toThrow(
      new ServeError('METRICS_PORT=x: expected a port number (0-65535)'),
    );
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    const port = (taken.address() as AddressInfo).port;
    const logs: string[] = [];
    try {
      await expect(
        serve({ env: { MINIGPT_CONFIG: config, WEB_PORT: '0', METRICS_PORT: String(port) }, log: (l) => logs.push(l) }),
      ).rejects.toThrow(/EADDRINUSE/);
      expect(logs.filter((l) => l.includes('adapter started') || l.includes('web demo'))).toEqual([]);
    } finally {
      taken.close();
    }
  });

  it('beyond loopback the metrics need METRICS_KEY, sent as a bearer token; the probes stay open', async () => {
    expect(() => metricsSettings({ METRICS_PORT: '0', METRICS_HOST: '0.0.0.0' })).toThrow(
      /^METRICS_HOST=0\.0\.0\.0 without METRICS_KEY: the metrics would be open to anyone who reaches 0\.0\.0\.0\./,
    );
    const settings = metricsSettings({ METRICS_PORT: '0', METRICS_HOST: '0.0.0.0', METRICS_KEY: 'sesame' })!;
    expect(settings).toEqual({ port: 0, host: '0.0.0.0', key: 'sesame' });
    const server = await startMetricsServer({ ...settings, host: '127.0.0.1' }, new BotMetrics('all'), async () => []);
    try {
      for (const authorization of [undefined, 'Bearer wrong', 'Bearer sesame2', 'sesame']) {
        const res = await fetch(`${server.url}/metrics`, authorization ? { headers: { authorization } } : {});
        expect(res.status).toBe(401);
        expect(res.headers.get('www-authenticate')).toBe('Bearer');
      }
      expect((await scrape(server.url, 'sesame')).get('minigpt_info{role="all"}')).toBe(1);
      expect(await probe(server.url, '/readyz')).toEqual({ status: 200, body: { ready: true } });
    } finally {
      await server.close();
    }
  });

  it('deleted questions counted by what was forgotten; a store that fails counts as failed and still throws', async () => {
    const metrics = new BotMetrics('all');
    const outcomes: (QuestionOutcome | Error)[] = [
      'question_forgotten',
      'conversation_forgotten',
      'question_forgotten',
      new Error('store down'),
    ];
    const port = metrics.meter({
      store: new Keyv(),
      handle: () => (async function* () {})(),
      history: async () => null,
      reset: async () => 'empty',
      forgetWorkspace: async () => 0,
      forgetQuestion: async () => {
        const next = outcomes.shift()!;
        if (next instanceof Error) throw next;
        return next;
      },
    });
    const key = { platform: 'slack' as const, workspace: 'T1', channel: 'C1', thread: '1.2' };
    for (let i = 0; i < 3; i++) await port.forgetQuestion(key, `q${i}`);
    await expect(port.forgetQuestion(key, 'q3')).rejects.toThrow('store down');
    const server = await startMetricsServer({ port: 0, host: '127.0.0.1' }, metrics, async () => []);
    try {
      const got = await scrape(server.url);
      expect(got.get('minigpt_deleted_questions_total{platform="slack",outcome="question_forgotten"}')).toBe(2);
      expect(got.get('minigpt_deleted_questions_total{platform="slack",outcome="conversation_forgotten"}')).toBe(1);
      expect(got.get('minigpt_deleted_questions_total{platform="slack",outcome="failed"}')).toBe(1);
    } finally {
      await server.close();
    }
  });

  it('/readyz says what keeps the process from answering', async () => {
    let problems: string[] = [];
    const server = await startMetricsServer({ port: 0, host: '127.0.0.1' }, new BotMetrics('all'), async () => problems);
    try {
      expect(await probe(server.url, '/readyz')).toEqual({ status: 200, body: { ready: true } });
      problems = ['shutting down'];
      expect(await probe(server.url, '/readyz')).toEqual({ status: 503, body: { ready: false, problems: ['shutting down'] } });
      expect(await probe(server.url, '/healthz')).toEqual({ status: 200, body: { status: 'ok' } });
    } finally {
      await server.close();
    }
  });
});

describe('METRICS_PORT on Redis', () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.cleanup();
  });

  it('a front end is ready once a worker beats; each counts its side of a request', async () => {
    const env = { MINIGPT_CONFIG: config, REDIS_URL: redis.url, METRICS_PORT: '0' };
    const front = await serveFrontend({ env: { ...env, WEB_PORT: '0' }, log: () => {} });
    let worker: Awaited<ReturnType<typeof serveWorker>> | undefined;
    try {
      const fm = front.metricsUrl!;
      expect(await probe(fm, '/readyz')).toEqual({ status: 503, body: { ready: false, problems: ['no model worker is running'] } });
      expect((await scrape(fm)).get('minigpt_workers')).toBe(0);

      worker = await serveWorker({ env, log: () => {} });
      const wm = worker.metricsUrl!;
      expect(await probe(wm, '/readyz')).toEqual({ status: 200, body: { ready: true } });
      expect(await probe(fm, '/readyz')).toEqual({ status: 200, body: { ready: true } });
      expect((await scrape(fm)).get('minigpt_workers')).toBe(1);

      expect((await chat(front.webUrl!, { text: 'what is this?', image: await testPng() }))?.type).toBe('final');
      const f = await scrape(fm);
      expect(f.get('minigpt_requests_total{platform="web",outcome="answered"}')).toBe(1);
      expect(f.get(`minigpt_info{role="frontend"}`)).toBe(1);
      const w = await scrape(wm);
      expect(w.get('minigpt_requests_total{platform="web",outcome="answered"}')).toBe(1);
      expect(w.get('minigpt_worker_jobs_finished')).toBe(1);
      expect(w.get('minigpt_worker_jobs_running')).toBe(0);
      // the KV caches are the worker's: it answers
      expect(w.get('minigpt_kv_cache_misses_total')).toBe(1);
      expect(f.has('minigpt_kv_cache_misses_total')).toBe(false);
      // the tokens as the worker counted them reached the front end with the answer's timings
      expect(f.get('minigpt_generated_tokens_total')).toBe(w.get('minigpt_generated_tokens_total'));

      const closing = worker.close();
      worker = undefined;
      await closing;
      expect(await probe(fm, '/readyz')).toMatchObject({ status: 503 });
    } finally {
      await worker?.close();
      await front.close();
    }
  }, 120_000);
});
