// The soak (issue 9): the real bot (scripts/soak-bot.mjs: `minigpt serve` from dist/, Discord and Slack adapters
// at once, a SQLite store) against the fake Discord and the fake Slack on loopback, which send bursts of events
// from many users in many threads: @mentions with images (new threads), follow-ups in existing threads, and
// /describe commands. Every event must end with exactly one answer or one "busy" reply, in its own thread.
// Reported: outcome counts, queue wait and latency percentiles, and the bot's memory over time.
//
// Used by `npm run soak` (scripts/soak.ts, the long profile) and by test/reliability/soak.test.ts (a short
// profile in CI).
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createStore, conversationId } from '../../src/conversation/index.js';
import { ConversationStore } from '../../src/conversation/store.js';
import { FakeDiscord, type ApiMessage, type ApiUser } from '../discord/fake-discord.js';
import { FakeSlack, type FakeFile, type FakeMessage } from '../slack/fake-slack.js';
import { squarePng, testPng } from '../helpers/images.js';
import { rng } from '../helpers/rng.js';
import { writeBotConfig } from '../helpers/bot-config.js';
import { parse } from 'yaml';

const ROOT = join(import.meta.dirname, '..', '..');

/** The forced answer: one grounded phrase with a box (so every answer also uploads an annotated image). */
const FORCED = '<p>red square</p> {<20><20><70><70>} on a grey background';
const DISCORD_FINAL = '**red square** on a grey background';
const SLACK_FINAL = '*red square* on a grey background';

export interface SoakOptions {
  /** events to send in all */
  events: number;
  /** events per burst (uniform in the range) */
  burst: [number, number];
  /** pause between bursts, ms (uniform in the range) */
  pauseMs: [number, number];
  /** hard bound on the whole run (sending and waiting for the answers), ms */
  timeLimitMs: number;
  /** the bot's queue (requests waiting for the model past which it answers "busy") */
  queueSize: number;
  /** distinct users per platform */
  users?: number;
  /** Discord channels / Slack channels that threads are started in */
  channels?: number;
  seed?: number;
  /** progress lines */
  log?: (line: string) => void;
  /** keep the work folder (store, bot log) */
  keep?: boolean;
  /** more `runtime:` lines for the bot's config (e.g. `kv_cache_mb: 0`) */
  runtime?: string[];
  /** more environment for the bot process (MALLOC_ARENA_MAX is 2 unless given here; '' leaves glibc's default) */
  env?: Record<string, string>;
}

/** A growth figure with its sign. */
const signed = (mb: number): string => `${mb >= 0 ? '+' : ''}${mb.toFixed(1)}`;

export interface MemSample {
  at: number;
  /** events whose reply had settled by then */
  settled: number;
  rssMb: number;
  heapMb: number;
  /** memory of ArrayBuffers and other objects outside the JS heap (tensors, image buffers) */
  externalMb: number;
}

export interface SoakReport {
  events: number;
  byKind: Record<string, number>;
  answered: number;
  busy: number;
  /** other error replies (cancelled, bad image, internal: none expected) */
  errors: number;
  /** events without exactly one settled reply */
  missing: string[];
  /** replies beyond one per event, or in a thread / channel with no such request */
  extra: string[];
  /** stored conversations whose turns are not what was answered in that thread */
  misrouted: string[];
  /** threads whose stored turns are in another order than their messages were sent (must be 0: issue 3) */
  reordered: number;
  wallMs: number;
  sendMs: number;
  /** event -> settled reply, as the users saw it (ms): p50, p90, p99, max */
  latency: Percentiles;
  latencyByPlatform: Record<'discord' | 'slack', Percentiles>;
  /** the manager's queue wait of answered requests (ms) */
  queueWait: Percentiles;
  /** the manager's processing time of answered requests (ms) */
  processing: Percentiles;
  mem: MemSample[];
  /** RSS (MB) after warm-up (25% of events) and at the end; growth per 1000 events between them */
  rssAfterWarmupMb: number;
  rssEndMb: number;
  rssGrowthPer1000Mb: number;
  /**
   * the same over the second half of the events only: near 0 when RSS has levelled off (the KV cache at its cap,
   * the arenas grown) however much it rose during the first half, which the figure above averages in
   */
  rssSecondHalfPer1000Mb: number;
  exitCode: number | null;
  /** REST calls the bot made to Discord, and Web API calls to Slack (uploads included) */
  platformCalls: { discord: number; slack: number };
  botStderrTail: string;
}

export interface Percentiles {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

function percentiles(values: number[]): Percentiles {
  const v = [...values].sort((a, b) => a - b);
  const at = (p: number) => (v.length ? v[Math.min(v.length - 1, Math.max(0, Math.ceil((p / 100) * v.length) - 1))] : NaN);
  return { n: v.length, p50: at(50), p90: at(90), p99: at(99), max: v.length ? v[v.length - 1] : NaN };
}

type Kind = 'discord-mention' | 'discord-followup' | 'discord-command' | 'slack-mention' | 'slack-followup' | 'slack-command';
type Outcome = 'answer' | 'busy' | 'error';

interface Sent {
  kind: Kind;
  text: string;
  at: number;
  settledAt?: number;
}

/**
 * Where replies land: a Discord thread, a Slack thread, or one command's response. Requests of one place
 * settle in some order (a platform may deliver two follow-ups out of order); the counts are what is checked:
 * as many settled replies as requests, no reply more, and the store holding exactly the answered ones.
 */
interface Place {
  label: string;
  sent: Sent[];
  /** the bot's replies here, oldest first: each one's outcome once settled */
  replies: () => Array<Outcome | undefined>;
  /** when the number of settled replies reached 1, 2, ... */
  settleTimes: number[];
  /** the stored conversation (threads; commands are checked through their replies only) */
  key?: Parameters<typeof conversationId>[0];
  /** Discord thread id / Slack channel + ts, for follow-ups */
  discordThread?: string;
  slack?: { channel: string; ts: string };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A reply's outcome once it has settled (answer or error sentence), else undefined (streaming, waiting). */
function discordOutcome(content: string): Outcome | undefined {
  if (content === DISCORD_FINAL) return 'answer';
  if (/^⚠️ .*busy/.test(content)) return 'busy';
  if (/^⚠️ /.test(content)) return 'error';
  return undefined;
}

function slackOutcome(text: string): Outcome | undefined {
  const body = text.split('\n').at(-1) ?? '';
  if (body === SLACK_FINAL) return 'answer';
  if (/^:warning: .*busy/.test(body)) return 'busy';
  if (/^:warning: /.test(body)) return 'error';
  return undefined;
}

export async function runSoak(o: SoakOptions): Promise<SoakReport> {
  const log = o.log ?? (() => {});
  const r = rng(o.seed ?? 9);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(r() * list.length)];
  const between = ([a, b]: [number, number]) => a + Math.floor(r() * (b - a + 1));
  const work = await mkdtemp(join(tmpdir(), 'minigpt-soak-'));
  const t0 = Date.now();

  // ---- the platforms
  const discord = await new FakeDiscord().start();
  const nChannels = o.channels ?? 4;
  const { guildId, channelIds } = discord.addGuild(
    'Soak',
    Array.from({ length: nChannels }, (_, i) => `soak-${i}`),
  );
  const dUsers: ApiUser[] = Array.from({ length: o.users ?? 40 }, (_, i) => discord.user(`user${i}`));
  const slack = await FakeSlack.start();
  const sChannels = Array.from({ length: nChannels }, (_, i) => `CSOAK${i}`);
  const sUsers = Array.from({ length: o.users ?? 40 }, (_, i) => `U0USER${i}`);
  const dPng = await testPng(96, 72);
  const sPng = await squarePng(96, 72);
  // Slack's /describe finds the newest image of the channel: give every channel one.
  for (const c of sChannels)
    slack.addMessage(c, {
      user: sUsers[0],
      text: 'an image',
      files: [slack.addFile({ name: 'seed.png', data: sPng, mimetype: 'image/png' })],
    });

  // ---- the bot
  const config = await writeBotConfig(join(work, 'bot.yaml'), {
    model: { package: join(ROOT, 'models', 'demo'), max_new_tokens: 64, temperature: 0 },
    // o.runtime is YAML lines of that section
    runtime: { threads: 1, queue_size: o.queueSize, ...parse((o.runtime ?? []).join('\n')) },
  });
  const storeFile = join(work, 'soak.sqlite');
  const child: ChildProcess = fork(join(ROOT, 'scripts', 'soak-bot.mjs'), [], {
    cwd: work,
    execArgv: ['--expose-gc'],
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      MINIGPT_CONFIG: config,
      EXECUTION_PROVIDER: 'cpu',
      STORE_URL: `sqlite://${storeFile}`,
      MINIGPT_TEST_FORCED_ANSWER: FORCED,
      DISCORD_TOKEN: discord.token,
      DISCORD_API_URL: discord.apiUrl,
      // Every event must be answered: the per-user limit would silence a user's extra requests.
      DISCORD_RATE_LIMIT: '0',
      SLACK_RATE_LIMIT: '0',
      SLACK_BOT_TOKEN: slack.botToken,
      SLACK_SIGNING_SECRET: slack.signingSecret,
      SLACK_PORT: '0',
      SLACK_API_URL: slack.apiUrl,
      // glibc's per-thread malloc arenas (onnxruntime, libvips) grow RSS by fragmentation under load; the
      // recommended deployment caps them (docs/reliability.md). `env: { MALLOC_ARENA_MAX: '' }` measures without.
      MALLOC_ARENA_MAX: '2',
      ...o.env,
    },
  });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => {
    stderr += c.toString();
    if (stderr.length > 4_000_000) stderr = stderr.slice(-2_000_000);
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const reqs = new Map<string, { code?: string; queueMs?: number; totalMs?: number; ms: number }>();
  const memRaw: Array<{ at: number; rss: number; heap: number; external: number }> = [];
  let ready: { adapters: Array<{ name: string; url?: string }> } | undefined;
  let buf = '';
  child.stdout!.on('data', (c: Buffer) => {
    buf += c.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let m: any;
      try {
        m = JSON.parse(line);
      } catch {
        continue;
      }
      if (m.t === 'ready') ready = m;
      else if (m.t === 'mem') memRaw.push({ at: m.at, rss: m.rss, heap: m.heap, external: m.external });
      else if (m.t === 'req') reqs.set(String(m.id), m);
    }
  });

  const sent: Sent[] = [];
  const places: Place[] = [];
  const dThreads: Place[] = [];
  const sThreads: Place[] = [];
  /** per Slack thread, the last follow-up sent to it (the next one is sent once it is delivered) */
  const slackThreadSends = new Map<string, Promise<unknown>>();
  const mem: MemSample[] = [];
  let settled = 0;
  let sendMs = 0;
  let exitCode: number | null = null;

  /** The bot's Slack text messages by thread (`channel/ts`), and its top-level ones by channel, in one pass. */
  let slackIdx = { replies: new Map<string, FakeMessage[]>(), roots: new Map<string, FakeMessage[]>() };
  const indexSlack = () => {
    const replies = new Map<string, FakeMessage[]>();
    const roots = new Map<string, FakeMessage[]>();
    for (const m of slack.messages) {
      if (m.bot_id !== slack.botId || m.files) continue;
      const [map, k] = m.thread_ts && m.thread_ts !== m.ts ? [replies, `${m.channel}/${m.thread_ts}`] : [roots, m.channel];
      const list = map.get(k);
      if (list) list.push(m);
      else map.set(k, [m]);
    }
    slackIdx = { replies, roots };
  };
  const botIn = (channel: string) => discord.messagesIn(channel).filter((m) => m.author.id === discord.bot.id);
  const answers = (p: Place) => p.replies().filter((x) => x === 'answer').length;

  /** Records when each place's settled replies grew (for the latencies). */
  const check = () => {
    const now = Date.now();
    indexSlack();
    settled = 0;
    for (const p of places) {
      const n = Math.min(p.replies().filter(Boolean).length, p.sent.length);
      while (p.settleTimes.length < n) {
        p.sent[p.settleTimes.length].settledAt = now;
        p.settleTimes.push(now);
      }
      settled += n;
    }
  };

  try {
    const deadline = t0 + o.timeLimitMs;
    while (!ready) {
      if (child.exitCode !== null) throw new Error(`the bot exited: ${stderr.slice(-3000)}`);
      if (Date.now() > deadline) throw new Error('the bot did not start in time');
      await sleep(50);
    }
    const slackUrl = ready.adapters.find((a) => a.name === 'slack')?.url;
    if (!slackUrl) throw new Error(`no Slack adapter: ${JSON.stringify(ready)}`);
    slack.appUrl = slackUrl.replace('localhost', '127.0.0.1');
    while (!discord.connected) await sleep(20);
    log(`soak: bot ready (pid ${child.pid}); sending ${o.events} events in bursts of ${o.burst.join('-')}`);

    let checking = true;
    const checker = (async () => {
      while (checking) {
        check();
        await sleep(100);
      }
    })();
    let lastMemAt = 0;
    const sampleMem = () => {
      const m = memRaw.at(-1);
      if (!m || m.at === lastMemAt) return;
      lastMemAt = m.at;
      mem.push({ at: m.at - t0, settled, rssMb: m.rss / 1e6, heapMb: m.heap / 1e6, externalMb: m.external / 1e6 });
    };

    // ---- sending
    const sendStart = Date.now();
    let n = 0;
    let nextReport = Math.max(1, Math.floor(o.events / 10));
    while (n < o.events && Date.now() < deadline) {
      const burst = Math.min(o.events - n, between(o.burst));
      const sends: Array<Promise<unknown>> = [];
      // Users follow up in threads the bot has answered in (threads that exist, with an image).
      const dOpen = dThreads.filter((t) => answers(t) > 0);
      const sOpen = sThreads.filter((t) => answers(t) > 0);
      for (let i = 0; i < burst; ) {
        const roll = r();
        const id = n;
        const s: Sent = { kind: 'discord-mention', text: '', at: Date.now() };
        if (roll < 0.28) {
          const ch = pick(channelIds);
          s.text = `d${id} what is here?`;
          const msg: ApiMessage = discord.postMessage(ch, pick(dUsers), s.text, {
            attachments: [discord.addAttachment(`d${id}.png`, dPng, 'image/png')],
            mentionBot: true,
          });
          const p: Place = {
            label: `discord thread ${msg.id}`,
            sent: [s],
            settleTimes: [],
            replies: () => botIn(msg.id).map((m) => discordOutcome(m.content)),
            key: { platform: 'discord', workspace: guildId, channel: ch, thread: msg.id },
            discordThread: msg.id,
          };
          places.push(p);
          dThreads.push(p);
        } else if (roll < 0.5) {
          if (dOpen.length === 0) continue;
          const p = pick(dOpen);
          s.kind = 'discord-followup';
          s.text = `d${id} and then?`;
          p.sent.push(s);
          discord.postMessage(p.discordThread!, pick(dUsers), s.text);
        } else if (roll < 0.58) {
          const ch = pick(channelIds);
          const att = discord.addAttachment(`c${id}.png`, dPng, 'image/png');
          s.kind = 'discord-command';
          s.text = `d${id} cmd`;
          const { token } = discord.interact(ch, pick(dUsers), {
            id: '1',
            name: 'describe',
            type: 1,
            options: [
              { name: 'image', type: 11, value: att.id },
              { name: 'prompt', type: 3, value: s.text },
            ],
            resolved: { attachments: { [att.id]: att } },
          });
          places.push({
            label: `discord /describe ${s.text} in ${ch}`,
            sent: [s],
            settleTimes: [],
            replies: () => {
              const orig = discord.original(token);
              return orig ? [discordOutcome(orig.content)] : [];
            },
          });
        } else if (roll < 0.78) {
          const ch = pick(sChannels);
          const file: FakeFile = slack.addFile({ name: `s${id}.png`, data: sPng, mimetype: 'image/png' });
          s.kind = 'slack-mention';
          s.text = `s${id} what is here?`;
          const p: Place = { label: `slack thread ${ch}/?`, sent: [s], settleTimes: [], replies: () => [] };
          places.push(p);
          sends.push(
            slack
              .mention(ch, { user: pick(sUsers), text: `<@${slack.botUserId}> ${s.text}`, files: [file] })
              .then(({ msg }: { msg: FakeMessage }) => {
                p.label = `slack thread ${ch}/${msg.ts}`;
                p.slack = { channel: ch, ts: msg.ts };
                p.key = { platform: 'slack', workspace: slack.teamId, channel: ch, thread: msg.ts };
                p.replies = () => (slackIdx.replies.get(`${ch}/${msg.ts}`) ?? []).map((m) => slackOutcome(m.text));
                sThreads.push(p);
              }),
          );
        } else if (roll < 0.93) {
          if (sOpen.length === 0) continue;
          const p = pick(sOpen);
          s.kind = 'slack-followup';
          s.text = `s${id} and then?`;
          p.sent.push(s);
          // A thread's events are delivered one after another (each once the one before it is acknowledged),
          // so that send order is delivery order; events of different threads still go at once.
          const thread = `${p.slack!.channel}/${p.slack!.ts}`;
          const user = pick(sUsers);
          const send = (slackThreadSends.get(thread) ?? Promise.resolve()).then(() =>
            slack.reply(p.slack!.channel, p.slack!.ts, { user, text: s.text }),
          );
          slackThreadSends.set(thread, send);
          sends.push(send);
        } else {
          const ch = pick(sChannels);
          s.kind = 'slack-command';
          s.text = `s${id} cmd`;
          places.push({
            label: `slack /describe ${s.text} in ${ch}`,
            sent: [s],
            settleTimes: [],
            replies: () => {
              const root = (slackIdx.roots.get(ch) ?? []).find((m) => m.text.includes(`: ${s.text}\n`));
              return root ? [slackOutcome(root.text)] : [];
            },
          });
          sends.push(slack.sendCommand({ channel: ch, user: pick(sUsers), text: s.text }));
        }
        sent.push(s);
        i++;
        n++;
        if (n >= nextReport) {
          sampleMem();
          const m = mem.at(-1);
          log(
            `soak: ${n}/${o.events} sent, ${settled} settled, bot RSS ${m ? m.rssMb.toFixed(0) : '?'} MB, heap ${m ? m.heapMb.toFixed(0) : '?'} MB`,
          );
          nextReport += Math.max(1, Math.floor(o.events / 10));
        }
      }
      await Promise.all(sends);
      sampleMem();
      await sleep(between(o.pauseMs));
    }
    sendMs = Date.now() - sendStart;

    // ---- waiting for every reply to settle
    while (Date.now() < deadline && settled < sent.length) {
      sampleMem();
      await sleep(200);
    }
    await sleep(1500); // anything doubled would show by now
    checking = false;
    await checker;
    check();
    // One collection, then the last memory sample.
    child.send('gc');
    await sleep(500);
    sampleMem();

    // ---- verification: per place, as many settled replies as requests and no more
    const missing: string[] = [];
    const extra: string[] = [];
    let answered = 0;
    let busy = 0;
    let errors = 0;
    for (const p of places) {
      const replies = p.replies();
      const done = replies.filter(Boolean) as Outcome[];
      answered += done.filter((x) => x === 'answer').length;
      busy += done.filter((x) => x === 'busy').length;
      errors += done.filter((x) => x === 'error').length;
      if (done.length < p.sent.length)
        missing.push(`${p.label}: ${done.length} settled replies for ${p.sent.length} requests (${replies.length} replies in all)`);
      if (replies.length > p.sent.length) extra.push(`${p.label}: ${replies.length} replies for ${p.sent.length} requests`);
    }
    // Nothing where no request was made: Discord channels hold only /describe responses (mentions are answered
    // in threads), Slack channels only /describe roots.
    const dCmds = places.filter((p) => p.sent[0].kind === 'discord-command').length;
    const dInChannels = channelIds.reduce((a, ch) => a + botIn(ch).length, 0);
    if (dInChannels !== dCmds) extra.push(`discord channels: ${dInChannels} bot messages for ${dCmds} commands`);
    const sCmds = places.filter((p) => p.sent[0].kind === 'slack-command').length;
    const sRoots = sChannels.reduce((a, ch) => a + (slackIdx.roots.get(ch)?.length ?? 0), 0);
    if (sRoots !== sCmds) extra.push(`slack channels: ${sRoots} top-level bot messages for ${sCmds} commands`);
    const knownSlack = new Set(sThreads.map((t) => `${t.slack!.channel}/${t.slack!.ts}`));
    const strays = [...slackIdx.replies.keys()].filter(
      (k) => !knownSlack.has(k) && !(slackIdx.roots.get(k.split('/')[0]) ?? []).some((m) => `${m.channel}/${m.ts}` === k),
    );
    if (strays.length) extra.push(`slack: replies in threads with no request: ${strays.join(', ')}`);

    // Stop the bot (SIGTERM: it must flush the store and exit 0), then check every stored conversation: it holds
    // exactly as many turns as its thread got answers, all of them texts sent in that thread.
    child.kill('SIGTERM');
    exitCode = await Promise.race([exited, sleep(20_000).then(() => -1)]);
    const misrouted: string[] = [];
    let reordered = 0;
    const kv = await createStore(`sqlite://${storeFile}`);
    try {
      const repo = new ConversationStore(kv);
      for (const p of [...dThreads, ...sThreads]) {
        const state = await repo.getConversation(conversationId(p.key!));
        const n = answers(p);
        const users = state?.turns.map((t) => t.user) ?? [];
        const texts = p.sent.map((x) => x.text);
        const foreign = users.filter((u) => !texts.includes(u));
        if ((state?.droppedTurns ?? 0) + users.length !== n || foreign.length > 0) {
          misrouted.push(
            `${p.label}: ${n} answers, stored ${JSON.stringify(users)} (+${state?.droppedTurns ?? 0} dropped) of sent ${JSON.stringify(texts)}`,
          );
        }
        const order = users.map((u) => texts.indexOf(u));
        if (order.some((x, i) => i > 0 && x < order[i - 1])) reordered++;
      }
    } finally {
      await kv.disconnect();
    }

    const byKind: Record<string, number> = {};
    for (const x of sent) byKind[x.kind] = (byKind[x.kind] ?? 0) + 1;
    const answeredReqs = [...reqs.values()].filter((q) => q.queueMs !== undefined);
    const warm = mem.find((m) => m.settled >= sent.length * 0.25) ?? mem[0];
    const end = mem.at(-1) ?? warm;
    const half = mem.find((m) => m.settled >= sent.length * 0.5) ?? warm;
    // RSS growth from the sample `from` to the end, per 1000 events settled between them
    const perThousand = (from: MemSample | undefined) =>
      from && end ? ((end.rssMb - from.rssMb) * 1000) / Math.max(1, end.settled - from.settled) : NaN;
    return {
      events: sent.length,
      byKind,
      answered,
      busy,
      errors,
      missing,
      extra,
      misrouted,
      reordered,
      wallMs: Date.now() - t0,
      sendMs,
      latency: percentiles(sent.filter((x) => x.settledAt).map((x) => x.settledAt! - x.at)),
      latencyByPlatform: {
        discord: percentiles(sent.filter((x) => x.settledAt && x.kind.startsWith('discord')).map((x) => x.settledAt! - x.at)),
        slack: percentiles(sent.filter((x) => x.settledAt && x.kind.startsWith('slack')).map((x) => x.settledAt! - x.at)),
      },
      queueWait: percentiles(answeredReqs.map((q) => q.queueMs!)),
      processing: percentiles(answeredReqs.map((q) => q.totalMs!)),
      mem,
      rssAfterWarmupMb: warm?.rssMb ?? NaN,
      rssEndMb: end?.rssMb ?? NaN,
      rssGrowthPer1000Mb: perThousand(warm),
      rssSecondHalfPer1000Mb: perThousand(half),
      exitCode,
      platformCalls: { discord: discord.calls.length, slack: slack.calls.length },
      botStderrTail: stderr.slice(-4000),
    };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await discord.close();
    await slack.close();
    if (!o.keep) await rm(work, { recursive: true, force: true });
    else log(`soak: work folder kept: ${work}`);
  }
}

/** The report as Markdown (for docs/soak.md and the console). */
export function formatReport(rep: SoakReport, title = 'Soak run'): string {
  const p = (x: Percentiles) => `${x.p50.toFixed(0)} / ${x.p90.toFixed(0)} / ${x.p99.toFixed(0)} / ${x.max.toFixed(0)} (n=${x.n})`;
  const lines = [
    `### ${title}`,
    '',
    `- events: ${rep.events} (${Object.entries(rep.byKind)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')})`,
    `- outcomes: ${rep.answered} answered, ${rep.busy} busy, ${rep.errors} other errors; missing ${rep.missing.length}, extra/wrong-thread ${rep.extra.length}, misrouted in the store ${rep.misrouted.length}; threads answered out of send order: ${rep.reordered}`,
    `- wall time ${(rep.wallMs / 1000).toFixed(1)} s (sending ${(rep.sendMs / 1000).toFixed(1)} s); bot exit code after SIGTERM: ${rep.exitCode}`,
    `- latency, event to settled reply (ms, p50 / p90 / p99 / max): ${p(rep.latency)}; Discord ${p(rep.latencyByPlatform.discord)}; Slack ${p(rep.latencyByPlatform.slack)}`,
    `- queue wait in the manager (ms): ${p(rep.queueWait)}`,
    `- platform calls: Discord REST ${rep.platformCalls.discord} (${(rep.platformCalls.discord / Math.max(1, (rep.byKind['discord-mention'] ?? 0) + (rep.byKind['discord-followup'] ?? 0) + (rep.byKind['discord-command'] ?? 0))).toFixed(1)} per Discord event), Slack Web API ${rep.platformCalls.slack}`,
    `- processing in the manager (ms): ${p(rep.processing)}`,
    `- bot RSS: ${rep.rssAfterWarmupMb.toFixed(0)} MB after warm-up (25% of events), ${rep.rssEndMb.toFixed(0)} MB at the end (after a GC): ${signed(rep.rssGrowthPer1000Mb)} MB per 1000 events; over the second half ${signed(rep.rssSecondHalfPer1000Mb)} MB per 1000`,
    '',
    '| time (s) | events settled | RSS (MB) | JS heap (MB) | external (MB) |',
    '| ---: | ---: | ---: | ---: | ---: |',
  ];
  const step = Math.max(1, Math.ceil(rep.mem.length / 16));
  const rows = rep.mem.filter((_, i) => i % step === 0 || i === rep.mem.length - 1);
  for (const m of rows)
    lines.push(
      `| ${(m.at / 1000).toFixed(0)} | ${m.settled} | ${m.rssMb.toFixed(0)} | ${m.heapMb.toFixed(0)} | ${m.externalMb.toFixed(0)} |`,
    );
  for (const [label, list] of [
    ['missing', rep.missing],
    ['extra', rep.extra],
    ['misrouted', rep.misrouted],
  ] as const) {
    if (list.length) lines.push('', `${label} (first 10):`, ...list.slice(0, 10).map((l) => `- ${l}`));
  }
  return lines.join('\n');
}
