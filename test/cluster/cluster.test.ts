// `minigpt serve --role frontend|worker` as real processes around a real redis-server: two front ends (the web
// demo and the OpenAI-compatible API) and two workers answer concurrent conversations; a worker killed with
// SIGKILL mid-answer has its jobs run again on the other, and every request still gets exactly one final answer,
// identical (greedy) to the single-process answer, with nothing doubled in the history; a worker stopped with
// SIGTERM finishes its answer first; a restarted front end continues a thread from Redis.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { MiniGPT } from '../../src/inference/model.js';
import { loadConfig } from '../../src/config.js';
import { managerDefaults } from '../../src/serve.js';
import { ConversationManager, createStore, conversationId, type AnswerEvent, type ConversationKey } from '../../src/conversation/index.js';
import { ConversationStore } from '../../src/conversation/store.js';
import { buildTinyPackage, postChat, readEvents, testPng, type WebEvent } from '../web/helpers.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { startServe, type ServeProcess } from '../helpers/serve-process.js';

let work: string;
let config: string;
let redis: TestRedis;
let env: NodeJS.ProcessEnv;
const procs: ServeProcess[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-cluster-'));
  const pkg = await buildTinyPackage(work); // random weights: long answers, so that a worker dies mid-answer
  config = join(work, 'tiny.yaml');
  await writeFile(
    config,
    ['model:', '  arch: minigpt_v2', `  package: ${JSON.stringify(pkg)}`, '  max_new_tokens: 120', '  temperature: 0', 'runtime:', '  execution_provider: cpu', '  threads: 1', '  max_batch: 2', '  queue_size: 32', ''].join('\n'),
  );
  redis = await startRedis({ aof: true });
  env = { MINIGPT_CONFIG: config, REDIS_URL: redis.url, MINIGPT_WORKER_LOCK_MS: '1500', WEB_PORT: '0', API_PORT: '0', DISCORD_TOKEN: '', SLACK_BOT_TOKEN: '' };
}, 120_000);

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

describe('serve --role frontend / worker', () => {
  it('answers through 2 front ends and 2 workers; a worker killed mid-answer loses nothing; SIGTERM finishes first; a front end restarts', async () => {
    // single-process answers to compare with (greedy, the same package and settings)
    const cfg = await loadConfig(config, {});
    const model = await MiniGPT.load(cfg.packageDir, { provider: 'cpu', threads: 1 });
    const local = new ConversationManager({ model, defaults: managerDefaults(cfg), maxBatch: 2 });
    const images = [await testPng(200, 150), await testPng(120, 180), await testPng(160, 160)];
    const questions = ['describe this image', '[refer] the red square', 'what is in the picture?'];
    const expected: string[] = [];
    for (let i = 0; i < 3; i++) {
      let final = '';
      for await (const ev of local.handle({ key: { platform: 'cli', workspace: 'w', channel: 'c', thread: `t${i}` }, user: 'u', text: questions[i], image: images[i] })) {
        if (ev.type === 'final') final = ev.text;
      }
      expected.push(final);
    }
    await local.close();
    await model.close();
    expect(new Set(expected).size).toBe(3);
    expect(expected.every((t) => t.length > 40)).toBe(true); // long enough to be cut in the middle

    const w1 = serve('worker');
    const w2 = serve('worker');
    const webFront = serve('frontend');
    const apiFront = serve('frontend');
    await Promise.all([w1, w2].map((w) => w.waitFor(/worker \S+ takes jobs/)));
    const webUrl = (await webFront.waitFor(/web demo on (http:\S+)/))[1];
    const apiUrl = (await apiFront.waitFor(/OpenAI-compatible API on (http:\S+)/))[1];
    await apiFront.waitFor(/front end on redis:/);
    const client = new OpenAI({ baseURL: apiUrl, apiKey: 'local', maxRetries: 0 });

    // 6 concurrent conversations: 3 threads on the web demo, 3 API requests (streamed)
    const convs = [0, 1, 2].map((i) => `conversation-${i}-${Date.now()}`);
    const web = convs.map((c, i) => postChat(webUrl, { conversation: c, text: questions[i], image: images[i] }).then(readEvents));
    let firstChunk!: () => void;
    const chunked = new Promise<void>((r) => (firstChunk = r));
    const api = [0, 1, 2].map(async (i) => {
      const stream = await client.chat.completions.create({
        model: 'pkg',
        messages: [{ role: 'user', content: [{ type: 'text', text: questions[i] }, { type: 'image_url', image_url: { url: `data:image/png;base64,${images[i].toString('base64')}` } }] }],
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
    w1.kill('SIGKILL');
    const webEvents = await Promise.all(web);
    const apiEvents = await Promise.all(api);
    expect((await w1.exited).signal).toBe('SIGKILL');

    webEvents.forEach((evs: WebEvent[], i) => {
      expect(evs.filter((e) => e.type === 'error'), JSON.stringify(evs)).toEqual([]);
      const finals = evs.filter((e) => e.type === 'final') as unknown as { text: string }[];
      expect(finals).toHaveLength(1);
      expect(finals[0].text).toBe(expected[i]);
      expect(shown(evs)).toBe(expected[i]);
    });
    apiEvents.forEach((evs, i) => {
      expect(evs.filter((e) => e.type === 'final')).toHaveLength(1);
      expect(shown(evs)).toBe(expected[i]);
    });
    // the killed worker's jobs were run again by the other one
    expect(w2.lines.some((l) => /run again after its worker stopped/.test(l))).toBe(true);
    // nothing doubled: one turn per thread, in the shared store
    const store = await createStore(redis.url);
    const repo = new ConversationStore(store);
    const key = (c: string): ConversationKey => ({ platform: 'web', workspace: 'local', channel: 'web', thread: c });
    for (const c of convs) expect((await repo.getConversation(conversationId(key(c))))?.turns).toHaveLength(1);

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
    expect((await repo.getConversation(conversationId(key(convs[0]))))?.turns).toHaveLength(2);

    // a front end restarted: the thread goes on from Redis, image and history kept
    webFront.kill('SIGTERM');
    expect((await webFront.exited).code).toBe(0);
    const w3 = serve('worker');
    await w3.waitFor(/worker \S+ takes jobs/);
    const webFront2 = serve('frontend');
    const webUrl2 = (await webFront2.waitFor(/web demo on (http:\S+)/))[1];
    const after = await readEvents(await postChat(webUrl2, { conversation: convs[1], text: 'and now?' }));
    expect(after.filter((e) => e.type === 'error')).toEqual([]);
    const timings = (after.find((e) => e.type === 'timings') as unknown as { timings: Record<string, number> }).timings;
    expect(timings.historyTurns).toBe(1);
    expect((await repo.getConversation(conversationId(key(convs[1]))))?.turns).toHaveLength(2);
    await store.disconnect();
  }, 180_000);
});

export type { AnswerEvent };
