// `minigpt serve --role frontend|worker` as real processes around a real redis-server: two front ends (the web
// demo and the OpenAI-compatible API) and two workers answer concurrent conversations; a worker killed with
// SIGKILL mid-answer has its jobs run again on the other, and every request still gets exactly one final answer,
// identical (greedy) to the single-process answer, with nothing doubled in the history; a worker stopped with
// SIGTERM finishes its answer first; a restarted front end continues a thread from Redis.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { MiniGPT } from '../../src/inference/model.js';
import { loadConfig } from '../../src/config.js';
import { managerDefaults } from '../../src/serve.js';
import { ConversationManager, createStore, conversationId } from '../../src/conversation/index.js';
import { ConversationStore } from '../../src/conversation/store.js';
import { buildTinyPackage, postChat, readEvents, testPng, type WebEvent } from '../web/helpers.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { startServe, type ServeProcess } from '../helpers/serve-process.js';
import { minigpt } from '../helpers/cli.js';
import { writeBotConfig, type TestBotConfig } from '../helpers/bot-config.js';
import { FakeSlack } from '../slack/fake-slack.js';
import { FakeDiscord } from '../discord/fake-discord.js';
import { until } from '../discord/helpers.js';
import { squarePng, textReplies, waitForAnswers } from '../slack/helpers.js';
import { answerMrkdwn } from '../../adapters/slack/format.js';
import type { ClusterStatus } from '../../src/cluster/status.js';
import { keys } from '../../src/cluster/protocol.js';

let work: string;
let config: string;
let redis: TestRedis;
let env: NodeJS.ProcessEnv;
const procs: ServeProcess[] = [];
const closers: (() => Promise<void>)[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-cluster-'));
  const pkg = await buildTinyPackage(work); // random weights: long answers, so that a worker dies mid-answer
  config = await writeBotConfig(join(work, 'tiny.yaml'), {
    model: { package: pkg, max_new_tokens: 120, temperature: 0 },
    runtime: { threads: 1, max_batch: 2, queue_size: 32 },
  });
  redis = await startRedis({ aof: true });
  env = {
    MINIGPT_CONFIG: config,
    REDIS_URL: redis.url,
    MINIGPT_WORKER_LOCK_MS: '1500',
    WEB_PORT: '0',
    API_PORT: '0',
    DISCORD_TOKEN: '',
    SLACK_BOT_TOKEN: '',
  };
}, 120_000);

// Each test has its own processes and an empty Redis: a worker left from one test must not take another's jobs.
afterEach(async () => {
  for (const c of closers.splice(0)) await c().catch(() => {});
  for (const p of procs) p.kill('SIGKILL');
  await Promise.all(procs.map((p) => p.exited));
  procs.length = 0;
  const { Redis } = await import('ioredis');
  const c = new Redis(redis.url);
  await c.flushall();
  c.disconnect();
});

afterAll(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await Promise.all(procs.map((p) => p.exited));
  await redis?.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
});

function serve(role: 'frontend' | 'worker', extra: NodeJS.ProcessEnv = {}): ServeProcess {
  const p = startServe(['--role', role], { ...env, ...extra });
  procs.push(p);
  return p;
}

/** What one request got back: every event, and the text as a reader of the stream sees it (restarts applied). */
function shown(events: readonly { type: string; text?: unknown }[]): string {
  let text = '';
  for (const ev of events) {
    if (ev.type === 'restart') text = '';
    if (ev.type === 'text') text += String(ev.text);
  }
  return text;
}

/** The answer's timings event (web demo events). */
function timingsOf(events: readonly WebEvent[]): Record<string, number> {
  return (events.find((e) => e.type === 'timings') as unknown as { timings: Record<string, number> }).timings;
}

/** The id of web demo conversation `conversation` in the shared store. */
const webConversationId = (conversation: string) =>
  conversationId({ platform: 'web', workspace: 'local', channel: 'web', thread: conversation });

/** Writes `<work>/<name>`, a config of the demo package (short greedy answers: nothing dropped from the history), with `runtime` settings added. */
function writeDemoConfig(name: string, runtime: TestBotConfig['runtime'] = {}): Promise<string> {
  return writeBotConfig(join(work, name), {
    model: { package: join(import.meta.dirname, '..', '..', 'models', 'demo'), temperature: 0 },
    runtime: { threads: 1, ...runtime },
  });
}

/** The single-process answers of config `file` to one thread's `turns`, the first with `image`; and the package's name. */
async function singleProcessAnswers(file: string, thread: string, turns: string[], image: Buffer) {
  const cfg = await loadConfig(file, {});
  const model = await MiniGPT.load(cfg.packageDir, { provider: 'cpu', threads: 1 });
  const local = new ConversationManager({ model, defaults: managerDefaults(cfg) });
  const answers: string[] = [];
  for (const [i, text] of turns.entries()) {
    for await (const ev of local.handle({
      key: { platform: 'cli', workspace: 'w', channel: 'c', thread },
      user: 'u',
      text,
      ...(i === 0 ? { image } : {}),
    })) {
      if (ev.type === 'final') answers.push(ev.text);
    }
  }
  await local.close();
  await model.close();
  return { answers, modelName: model.meta.name };
}

describe('serve --role frontend / worker', () => {
  it('answers through 3 front ends (web, API, Slack) and 2 workers; a worker killed mid-answer loses nothing; SIGTERM finishes first; a front end restarts', async () => {
    // single-process answers to compare with (greedy, the same package and settings)
    const cfg = await loadConfig(config, {});
    const model = await MiniGPT.load(cfg.packageDir, { provider: 'cpu', threads: 1 });
    const local = new ConversationManager({ model, defaults: managerDefaults(cfg), maxBatch: 2 });
    const images = [await testPng(200, 150), await testPng(120, 180), await testPng(160, 160)];
    const questions = ['describe this image', '[refer] the red square', 'what is in the picture?'];
    const expected: string[] = [];
    for (let i = 0; i < 3; i++) {
      let final = '';
      for await (const ev of local.handle({
        key: { platform: 'cli', workspace: 'w', channel: 'c', thread: `t${i}` },
        user: 'u',
        text: questions[i],
        image: images[i],
      })) {
        if (ev.type === 'final') final = ev.text;
      }
      expected.push(final);
    }
    await local.close();
    await model.close();
    expect(new Set(expected).size).toBe(3);
    expect(expected.every((t) => t.length > 40)).toBe(true); // long enough to be cut in the middle

    const fake = await FakeSlack.start();
    closers.push(() => fake.close());
    const w1 = serve('worker');
    const w2 = serve('worker');
    const webFront = serve('frontend');
    const apiFront = serve('frontend');
    const slackFront = serve('frontend', {
      SLACK_BOT_TOKEN: fake.botToken,
      SLACK_SIGNING_SECRET: fake.signingSecret,
      SLACK_PORT: '0',
      SLACK_API_URL: fake.apiUrl,
    });
    const [w1Id] = await Promise.all([w1, w2].map(async (w) => (await w.waitFor(/worker (\S+) takes jobs/))[1]));
    const webUrl = (await webFront.waitFor(/web demo on (http:\S+)/))[1];
    const apiUrl = (await apiFront.waitFor(/OpenAI-compatible API on (http:\S+)/))[1];
    fake.appUrl = (await slackFront.waitFor(/slack adapter started on (http:\S+)/))[1].replace('localhost', '127.0.0.1');
    await apiFront.waitFor(/front end on redis:/);
    const client = new OpenAI({ baseURL: apiUrl, apiKey: 'local', maxRetries: 0 });

    // 8 concurrent conversations: 3 threads on the web demo, 3 API requests (streamed), 2 Slack threads
    const slackThreads = await Promise.all(
      [0, 1].map(async (i) => {
        const file = fake.addFile({ name: `scene${i}.png`, data: images[i], mimetype: 'image/png' });
        return (await fake.mention(`CK${i}`, { text: `<@${fake.botUserId}> ${questions[i]}`, files: [file] }, { alsoMessage: false })).msg;
      }),
    );
    const convs = [0, 1, 2].map((i) => `conversation-${i}-${Date.now()}`);
    const web = convs.map((c, i) => postChat(webUrl, { conversation: c, text: questions[i], image: images[i] }).then(readEvents));
    let firstChunk!: () => void;
    const chunked = new Promise<void>((r) => (firstChunk = r));
    const api = [0, 1, 2].map(async (i) => {
      const stream = await client.chat.completions.create({
        model: 'pkg',
        messages: [
          {
            role: 'user',
            content: [
              { type: 'text', text: questions[i] },
              { type: 'image_url', image_url: { url: `data:image/png;base64,${images[i].toString('base64')}` } },
            ],
          },
        ],
        stream: true,
      });
      const evs: { type: string; text?: string }[] = [];
      for await (const c of stream) {
        const t = c.choices[0]?.delta.content;
        if (t) {
          evs.push({ type: 'text', text: t });
          firstChunk();
        }
        if (c.choices[0]?.finish_reason) evs.push({ type: 'final' });
      }
      return evs;
    });
    await chunked;
    // Killed while it holds a job (its heartbeat is written as each job starts and ends), so that it dies mid-answer.
    const { Redis } = await import('ioredis');
    const watch = new Redis(redis.url);
    const holds = async () => (JSON.parse((await watch.get(keys.worker(w1Id))) ?? '{}') as { running?: number }).running ?? 0;
    const deadline = Date.now() + 30_000;
    while ((await holds()) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    watch.disconnect();
    w1.kill('SIGKILL');
    const webEvents = await Promise.all(web);
    const apiEvents = await Promise.all(api);
    expect((await w1.exited).signal).toBe('SIGKILL');

    webEvents.forEach((evs: WebEvent[], i) => {
      expect(
        evs.filter((e) => e.type === 'error'),
        JSON.stringify(evs),
      ).toEqual([]);
      const finals = evs.filter((e) => e.type === 'final') as unknown as { text: string }[];
      expect(finals).toHaveLength(1);
      expect(finals[0].text).toBe(expected[i]);
      expect(shown(evs)).toBe(expected[i]);
    });
    apiEvents.forEach((evs, i) => {
      expect(evs.filter((e) => e.type === 'final')).toHaveLength(1);
      expect(shown(evs)).toBe(expected[i]);
    });
    // Slack: one reply per thread, the single-process answer (streamed edits of one message)
    for (const [i, msg] of slackThreads.entries()) {
      const want = answerMrkdwn(expected[i]);
      await fake.waitFor(() => textReplies(fake, `CK${i}`, msg.ts).find((m) => m.text === want), 30_000, `the answer in CK${i}`);
    }
    await new Promise((r) => setTimeout(r, 300));
    for (const [i, msg] of slackThreads.entries())
      expect(textReplies(fake, `CK${i}`, msg.ts).map((m) => m.text)).toEqual([answerMrkdwn(expected[i])]);
    // the killed worker's jobs were run again by the other one
    expect(w2.lines.some((l) => /run again after its worker stopped/.test(l))).toBe(true);
    // nothing doubled: one turn per thread, in the shared store
    const store = await createStore(redis.url);
    const repo = new ConversationStore(store);
    for (const c of convs) expect((await repo.getConversation(webConversationId(c)))?.turns).toHaveLength(1);

    // SIGTERM while answering: the answer is finished, then the worker exits cleanly
    const res = await postChat(webUrl, { conversation: convs[0], text: 'and what else?' });
    const evs: WebEvent[] = [];
    let buf = '';
    let signalled = false;
    for await (const bytes of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += Buffer.from(bytes).toString('utf8');
      for (let at = buf.indexOf('\n\n'); at >= 0; at = buf.indexOf('\n\n')) {
        const frame = buf.slice(0, at);
        buf = buf.slice(at + 2);
        if (frame.startsWith('data: ')) evs.push(JSON.parse(frame.slice(6)) as WebEvent);
      }
      if (!signalled && evs.some((e) => e.type === 'text')) {
        signalled = true;
        w2.kill('SIGTERM');
      }
    }
    expect(signalled).toBe(true);
    expect(evs.filter((e) => e.type === 'error')).toEqual([]);
    expect(evs.filter((e) => e.type === 'final')).toHaveLength(1);
    expect((await w2.exited).code).toBe(0);
    expect((await repo.getConversation(webConversationId(convs[0])))?.turns).toHaveLength(2);

    // a front end restarted: the thread goes on from Redis, image and history kept
    webFront.kill('SIGTERM');
    expect((await webFront.exited).code).toBe(0);
    const w3 = serve('worker');
    await w3.waitFor(/worker \S+ takes jobs/);
    const webFront2 = serve('frontend');
    const webUrl2 = (await webFront2.waitFor(/web demo on (http:\S+)/))[1];
    const after = await readEvents(await postChat(webUrl2, { conversation: convs[1], text: 'and now?' }));
    expect(after.filter((e) => e.type === 'error')).toEqual([]);
    expect(timingsOf(after).historyTurns).toBe(1);
    expect((await repo.getConversation(webConversationId(convs[1])))?.turns).toHaveLength(2);
    await store.disconnect();
  }, 180_000);
});

describe('KV-cache affinity', () => {
  it("sends follow-ups to the worker that holds the conversation's cache; when it dies, another answers the same", async () => {
    // the demo package: short answers, so that the whole conversation stays within its window (nothing dropped)
    const demoConfig = await writeDemoConfig('demo.yaml', { max_batch: 2 });
    const image = await testPng(180, 140);
    const turns = [
      '[grounding] describe this image in detail',
      'what colour is the square?',
      '[refer] the red square',
      'what is the background?',
      'what shape is it?',
    ];
    const { answers: expected, modelName } = await singleProcessAnswers(demoConfig, 'aff', turns, image);

    const workers = [serve('worker', { MINIGPT_CONFIG: demoConfig }), serve('worker', { MINIGPT_CONFIG: demoConfig })];
    const front = serve('frontend', { MINIGPT_CONFIG: demoConfig });
    await Promise.all(workers.map((w) => w.waitFor(/worker \S+ takes jobs/)));
    const webUrl = (await front.waitFor(/web demo on (http:\S+)/))[1];
    const conversation = `affinity-${Date.now()}`;
    const ask = async (text: string, img?: Buffer) => {
      const evs = await readEvents(await postChat(webUrl, { conversation, text, ...(img ? { image: img } : {}) }));
      expect(
        evs.filter((e) => e.type === 'error'),
        JSON.stringify(evs),
      ).toEqual([]);
      const final = (evs.find((e) => e.type === 'final') as unknown as { text: string }).text;
      return { final, timings: timingsOf(evs) };
    };
    const first = await ask(turns[0], image);
    expect(first.final).toBe(expected[0]);
    for (let i = 1; i <= 3; i++) {
      const r = await ask(turns[i]);
      expect(r.final).toBe(expected[i]);
      // the whole earlier conversation came from this worker's kept KV cache
      expect(r.timings.reusedTokens, `follow-up ${i}`).toBeGreaterThan(0);
      expect(r.timings.promptTokens - r.timings.reusedTokens).toBeLessThan(20);
    }
    // minigpt status: both workers, their model, nothing waiting
    const status = await minigpt(['status', '--json'], { REDIS_URL: redis.url });
    expect(status.code, status.stderr).toBe(0);
    const st = JSON.parse(status.stdout) as ClusterStatus;
    expect(st.workers.map((w) => [w.model, w.architecture, w.provider])).toEqual([
      [modelName, 'minigpt-v2', 'cpu'],
      [modelName, 'minigpt-v2', 'cpu'],
    ]);
    expect(st.workers.map((w) => w.pid).sort()).toEqual(workers.map((w) => w.child.pid).sort());
    expect(st.total).toEqual({ waiting: 0, running: 0, failed: 0 });
    // the worker holding the cache dies: the next follow-up is answered by the other one, in full, the same
    const { Redis } = await import('ioredis');
    const redisClient = new Redis(redis.url);
    const holder = await redisClient.get(`minigpt:affinity:${webConversationId(conversation)}`);
    await redisClient.quit();
    expect(holder).toBeTruthy();
    const victim = workers.find((w) => w.child.pid !== undefined && holder!.includes(`-${w.child.pid}-`))!;
    expect(victim).toBeDefined();
    victim.kill('SIGKILL');
    await victim.exited;
    const last = await ask(turns[4]);
    expect(last.final).toBe(expected[4]);
    expect(last.timings.reusedTokens).toBe(0);
    // the image's embeddings came from the workers' shared cache in Redis: this worker never ran the encoder on it
    expect(last.timings.imageCached).toBe(1);
    expect(last.timings.visionMs).toBe(0);
  }, 120_000);
});

describe('Slack on two front ends', () => {
  it("answers a mention through one front end; Slack's retry to the other is not answered again; the thread goes on there", async () => {
    const fake = await FakeSlack.start();
    try {
      const demoConfig = await writeDemoConfig('demo-slack.yaml');
      const image = await squarePng();
      const { answers: expected } = await singleProcessAnswers(
        demoConfig,
        'slack',
        ['[grounding] describe this image in detail', 'what colour is the square?'],
        image,
      );

      const slackEnv = {
        MINIGPT_CONFIG: demoConfig,
        SLACK_BOT_TOKEN: fake.botToken,
        SLACK_SIGNING_SECRET: fake.signingSecret,
        SLACK_PORT: '0',
        SLACK_API_URL: fake.apiUrl,
      };
      const worker = serve('worker', { MINIGPT_CONFIG: demoConfig });
      const fronts = [serve('frontend', slackEnv), serve('frontend', slackEnv)];
      await worker.waitFor(/worker \S+ takes jobs/);
      const urls = await Promise.all(
        fronts.map(async (f) => (await f.waitFor(/slack adapter started on (http:\S+)/))[1].replace('localhost', '127.0.0.1')),
      );

      fake.appUrl = urls[0];
      const file = fake.addFile({ name: 'square.png', data: image, mimetype: 'image/png' });
      const msg = fake.addMessage('CCLUSTER', { text: `<@${fake.botUserId}> [grounding] describe this image in detail`, files: [file] });
      const sent = await fake.sendEvent(fake.messageEvent(msg, 'app_mention'));
      expect(sent.status).toBe(200);
      await waitForAnswers(fake, 'CCLUSTER', msg.ts, 1);
      // Slack did not see the ack in time and retries the same event, this time to the other front end
      fake.appUrl = urls[1];
      const retried = await fake.sendEvent(fake.messageEvent(msg, 'app_mention'), { retryNum: 1, eventId: sent.eventId });
      expect(retried.status).toBe(200);
      // a follow-up in the thread, to the other front end: answered with the image and the first turn
      await fake.reply('CCLUSTER', msg.ts, { text: 'what colour is the square?' });
      await waitForAnswers(fake, 'CCLUSTER', msg.ts, 2);
      await new Promise((r) => setTimeout(r, 500));
      // the retry was not answered a second time; both answers are the single-process ones
      expect(textReplies(fake, 'CCLUSTER', msg.ts).map((m) => m.text)).toEqual(expected.map((t) => answerMrkdwn(t)));
    } finally {
      await fake.close();
    }
  }, 120_000);
});

describe('Discord on two front ends', () => {
  it('a second front end of the same bot and shard stops at start naming the first; after the first dies, a new one connects', async () => {
    const fake = await new FakeDiscord().start();
    try {
      const discordEnv = {
        MINIGPT_CONFIG: await writeDemoConfig('demo-discord.yaml'),
        DISCORD_TOKEN: fake.token,
        DISCORD_API_URL: fake.apiUrl,
        MINIGPT_SHARD_HOLD_MS: '1000',
      };
      const first = serve('frontend', discordEnv);
      await first.waitFor(/discord: connected as .*, held in Redis\)/);
      const status = await minigpt(['status', '--json'], { REDIS_URL: redis.url });
      const st = JSON.parse(status.stdout) as ClusterStatus;
      expect(st.discord.map((d) => [d.shards, d.count, d.pid])).toEqual([['0', 1, first.child.pid]]);
      expect((await minigpt(['status'], { REDIS_URL: redis.url })).stdout).toMatch(
        new RegExp(`discord bot [0-9a-f]{16}: shards 0 of 1 connected by the front end on .* \\(pid ${first.child.pid}\\) since `),
      );

      const second = serve('frontend', discordEnv);
      const { code } = await second.exited;
      expect(code).toBe(1);
      expect(second.lines.join('\n')).toMatch(
        new RegExp(
          `Discord shard 0 of 1 is connected by another front end \\(host .*, pid ${first.child.pid}, shards 0 of 1, since .*\\): each shard must be connected by one front end only, or both answer every message; DISCORD_SHARDS is unset, so this front end connects the bot's only shard: run Discord on one front end, or split the bot's shards between front ends with DISCORD_SHARDS and DISCORD_SHARD_COUNT$`,
          'm',
        ),
      );
      expect(second.lines.join('\n')).not.toContain(fake.token);
      expect(first.child.exitCode).toBeNull();
      expect(fake.connectedShards).toEqual([0]);

      // the first dies without releasing its hold: a new front end connects once the hold lapsed (within a second;
      // whether it had to wait depends on how fast it started: test/cluster/shard-lease.test.ts times the wait)
      first.kill('SIGKILL');
      await first.exited;
      const third = serve('frontend', discordEnv);
      await third.waitFor(/discord: connected as .*, held in Redis\)/, 30_000);
      await until(() => fake.connectedShards.length === 1, 'one connection of shard 0');
    } finally {
      await fake.close();
    }
  }, 120_000);
});

describe('order and back-pressure', () => {
  it("answers a thread's follow-ups in the order they were sent, also when two front ends receive them", async () => {
    // the demo package: short answers, nothing dropped from the history
    const demoConfig = await writeDemoConfig('demo-order.yaml');
    const workers = [serve('worker', { MINIGPT_CONFIG: demoConfig }), serve('worker', { MINIGPT_CONFIG: demoConfig })];
    const fronts = [serve('frontend', { MINIGPT_CONFIG: demoConfig }), serve('frontend', { MINIGPT_CONFIG: demoConfig })];
    await Promise.all(workers.map((w) => w.waitFor(/worker \S+ takes jobs/)));
    const urls = await Promise.all(fronts.map(async (f) => (await f.waitFor(/web demo on (http:\S+)/))[1]));
    const conversation = `order-${Date.now()}`;
    const first = await readEvents(await postChat(urls[0], { conversation, text: 'describe this image', image: await testPng(140, 140) }));
    expect(first.filter((e) => e.type === 'final')).toHaveLength(1);
    // No KV-cache affinity here: A and B go to the shared queue, where either worker may take either.
    const { Redis } = await import('ioredis');
    const rc = new Redis(redis.url);
    await rc.del(`minigpt:affinity:${webConversationId(conversation)}`);
    rc.disconnect();
    // Six follow-ups, alternating between the front ends, each sent once the one before is queued (numbered):
    // both workers are free, but each must wait for the one before it.
    const questions = [
      '[grounding] describe this image in detail',
      'question A',
      '[detection] squares',
      'question B',
      '[caption] briefly describe this image',
      'question C',
    ];
    const pending: Promise<string>[] = [];
    for (const [i, text] of questions.entries()) {
      const res = await postChat(urls[i % 2], { conversation, text });
      const reader = res.body!.getReader();
      const { value } = await reader.read(); // the first event (queued) is out: the request is numbered
      expect(Buffer.from(value!).toString()).toContain('"queued"');
      pending.push(
        (async () => {
          let rest = Buffer.from(value!).toString();
          for (let r = await reader.read(); !r.done; r = await reader.read()) rest += Buffer.from(r.value).toString();
          return rest;
        })(),
      );
    }
    const streams = await Promise.all(pending);
    const history = streams.map((t) => Number(/"historyTurns":(\d+)/.exec(t)?.[1]));
    expect(history).toEqual([1, 2, 3, 4, 5, 6]); // each saw every turn before it
    const store = await createStore(redis.url);
    const turns = (await new ConversationStore(store).getConversation(webConversationId(conversation)))!.turns;
    await store.disconnect();
    expect(turns.map((t) => t.user)).toEqual(['describe this image', ...questions]);
  }, 120_000);

  it('refuses at once with "busy" when more requests wait than runtime.queue_size', async () => {
    const small = join(work, 'small-queue.yaml');
    await writeFile(
      small,
      (await readFile(config, 'utf8')).replace('queue_size: 32', 'queue_size: 2').replace('max_batch: 2', 'max_batch: 1'),
    );
    const worker = serve('worker', { MINIGPT_CONFIG: small });
    const front = serve('frontend', { MINIGPT_CONFIG: small });
    await worker.waitFor(/worker \S+ takes jobs/);
    const url = (await front.waitFor(/web demo on (http:\S+)/))[1];
    const png = await testPng(120, 120);
    // the worker takes 2 (max_batch 1, plus the next one ready); 2 may wait; the rest are refused
    const t0 = performance.now();
    const all = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        postChat(url, { conversation: `busy-${i}-${Date.now()}`, text: 'describe this image', image: png }).then(async (r) => ({
          evs: await readEvents(r),
          at: performance.now() - t0,
        })),
      ),
    );
    const busy = all.filter((x) => x.evs.some((e) => e.type === 'error' && e.code === 'busy'));
    const answered = all.filter((x) => x.evs.some((e) => e.type === 'final'));
    expect(busy.length).toBeGreaterThan(0);
    expect(answered.length).toBeGreaterThanOrEqual(2);
    expect(busy.length + answered.length).toBe(8);
    // refused at once: before the first answer came back
    expect(Math.max(...busy.map((x) => x.at))).toBeLessThan(Math.min(...answered.map((x) => x.at)));
    expect((busy[0].evs.find((e) => e.type === 'error') as unknown as { message: string }).message).toMatch(/busy.*try again/);
  }, 120_000);
});

describe('Redis down and back', () => {
  it('front ends answer "unavailable" while Redis is down, without crashing; after a restart (AOF) the thread goes on', async () => {
    const worker = serve('worker');
    const front = serve('frontend');
    await worker.waitFor(/worker \S+ takes jobs/);
    const webUrl = (await front.waitFor(/web demo on (http:\S+)/))[1];
    const conversation = `redis-restart-${Date.now()}`;
    const image = await testPng(150, 150);
    const first = await readEvents(await postChat(webUrl, { conversation, text: 'describe this image', image }));
    expect(first.filter((e) => e.type === 'final')).toHaveLength(1);

    await redis.stop();
    const down = await readEvents(await postChat(webUrl, { conversation, text: 'are you there?' }));
    const err = down.find((e) => e.type === 'error') as unknown as { code: string; message: string };
    expect(err.code).toBe('unavailable');
    expect(err.message).toMatch(/try again/);
    expect(front.child.exitCode).toBeNull();

    await redis.start();
    let after: WebEvent[] = [];
    for (let i = 0; i < 60; i++) {
      after = await readEvents(await postChat(webUrl, { conversation, text: 'are you there?' }));
      if (!after.some((e) => e.type === 'error')) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(after.filter((e) => e.type === 'error')).toEqual([]);
    expect(timingsOf(after).historyTurns).toBe(1); // the first turn survived the restart
    expect(worker.child.exitCode).toBeNull();
    expect(front.child.exitCode).toBeNull();
  }, 120_000);
});
