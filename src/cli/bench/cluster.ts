// `minigpt bench --cluster DIR`: the package served by 1, then 2, worker processes (`serve --role worker`, one
// intra-op thread each) behind one front end (`serve --role frontend`, the OpenAI-compatible API), all on one
// Redis (REDIS_URL, else a redis-server started on a free loopback port): 16 conversations at once, each a new
// image and a question, greedy; aggregate tok/s and p50 / p95 latency, request sent -> last token. docs/scaling.md.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { stringify } from 'yaml';
import type { BotConfig } from '../../config.js';
import { fmt, roundAll, stat } from './common.js';
import { freePort } from '../../util/net.js';

export interface ClusterRow {
  workers: number;
  conversations: number;
  wall_ms: number;
  tokens: number;
  aggregate_tok_s: number;
  latency_p50_ms: number;
  latency_p95_ms: number;
  identical_to_first_row: boolean;
}

export interface ClusterBenchResult {
  package: string;
  threads_per_worker: number;
  max_batch: number;
  max_new_tokens: number;
  rows: ClusterRow[];
}

/** bin/minigpt.js, from the source tree (src/cli/bench) or the build (dist/src/cli/bench). */
const BIN = [
  join(import.meta.dirname, '..', '..', '..', 'bin', 'minigpt.js'),
  join(import.meta.dirname, '..', '..', '..', '..', 'bin', 'minigpt.js'),
].find((f) => existsSync(f))!;

/** A child process and the first stderr line matching `re`. */
function child(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  ready: RegExp,
): Promise<{ proc: ChildProcess; match: RegExpExecArray }> {
  const proc = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${cmd} ${args.join(' ')} did not start: ${out}`)), 120_000);
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, match: m });
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} exited (${code}): ${out}`));
    });
  });
}

function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    proc.once('exit', () => resolve());
    proc.kill('SIGTERM');
  });
}

/** 16 different scenes: a shape of its own colour at its own place. */
async function images(n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const colour = { r: (i * 53) % 256, g: (i * 97 + 80) % 256, b: (i * 151 + 40) % 256 };
    const square = await sharp({ create: { width: 40 + i * 3, height: 40 + i * 2, channels: 3, background: colour } })
      .png()
      .toBuffer();
    const png = await sharp({ create: { width: 224, height: 224, channels: 3, background: { r: 200, g: 200, b: 200 } } })
      .composite([{ input: square, left: (i * 37) % 150, top: (i * 23) % 150 }])
      .png()
      .toBuffer();
    out.push(`data:image/png;base64,${png.toString('base64')}`);
  }
  return out;
}

async function ask(apiUrl: string, image: string, maxTokens: number): Promise<{ ms: number; tokens: number; text: string }> {
  const t0 = performance.now();
  const res = await fetch(`${apiUrl}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'bench',
      temperature: 0,
      max_tokens: maxTokens,
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: '[grounding] describe this image in detail' },
            { type: 'image_url', image_url: { url: image } },
          ],
        },
      ],
    }),
  });
  const body = (await res.json()) as {
    choices?: { message: { content: string } }[];
    usage?: { completion_tokens: number };
    error?: { message: string };
  };
  if (!res.ok || !body.choices) throw new Error(`API answered ${res.status}: ${body.error?.message}`);
  return { ms: performance.now() - t0, tokens: body.usage!.completion_tokens, text: body.choices[0].message.content };
}

export async function benchCluster(
  dir: string,
  o: { workers: readonly number[]; conversations: number; maxNewTokens: number; maxBatch: number },
  log: (s: string) => void,
): Promise<ClusterBenchResult> {
  const work = await mkdtemp(join(tmpdir(), 'minigpt-bench-cluster-'));
  const procs: ChildProcess[] = [];
  try {
    let redisUrl = process.env.REDIS_URL?.trim();
    if (!redisUrl) {
      const port = await freePort();
      const r = await child(
        'redis-server',
        ['--port', String(port), '--bind', '127.0.0.1', '--dir', work, '--save', '', '--appendonly', 'no'],
        {},
        /Ready to accept connections/,
      );
      procs.push(r.proc);
      redisUrl = `redis://127.0.0.1:${port}`;
    }
    const config = join(work, 'bench.yaml');
    const settings = {
      model: { arch: 'minigpt_v2', package: dir, temperature: 0, max_new_tokens: o.maxNewTokens },
      runtime: { execution_provider: 'cpu', threads: 1, max_batch: o.maxBatch, queue_size: o.conversations * 2 },
    } satisfies { model: Partial<BotConfig['model']>; runtime: Partial<BotConfig['runtime']> };
    await writeFile(config, stringify(settings));
    const env = {
      MINIGPT_CONFIG: config,
      REDIS_URL: redisUrl,
      API_PORT: '0',
      API_MODEL_ID: 'bench',
      WEB_PORT: '0',
      DISCORD_TOKEN: '',
      SLACK_BOT_TOKEN: '',
      STORE_URL: '',
    };
    const front = await child(process.execPath, [BIN, 'serve', '--role', 'frontend'], env, /OpenAI-compatible API on (http:\S+)/);
    procs.push(front.proc);
    const apiUrl = front.match[1];
    const scenes = await images(o.conversations);
    const rows: ClusterRow[] = [];
    let first: string[] | undefined;
    for (const n of o.workers) {
      const workers: ChildProcess[] = [];
      for (let i = 0; i < n; i++) {
        const w = await child(process.execPath, [BIN, 'serve', '--role', 'worker'], env, /worker \S+ takes jobs/);
        workers.push(w.proc);
        procs.push(w.proc);
      }
      // warm-up: every worker has run the model once
      await Promise.all(workers.map(() => ask(apiUrl, scenes[0], 4)));
      log(`[bench cluster] ${n} worker(s): ${o.conversations} conversations at once`);
      const t0 = performance.now();
      const results = await Promise.all(scenes.map((img) => ask(apiUrl, img, o.maxNewTokens)));
      const wall = performance.now() - t0;
      const tokens = results.reduce((a, r) => a + r.tokens, 0);
      const lat = stat(results.map((r) => r.ms));
      const texts = results.map((r) => r.text);
      first ??= texts;
      rows.push({
        workers: n,
        conversations: o.conversations,
        wall_ms: wall,
        tokens,
        aggregate_tok_s: tokens / (wall / 1000),
        latency_p50_ms: lat.median,
        latency_p95_ms: lat.p95,
        identical_to_first_row: texts.every((t, i) => t === first![i]),
      });
      log(`[bench cluster]   ${Math.round(wall)} ms, ${tokens} tokens, p50 ${Math.round(lat.median)} ms, p95 ${Math.round(lat.p95)} ms`);
      await Promise.all(workers.map(stop));
    }
    return { package: dir, threads_per_worker: 1, max_batch: o.maxBatch, max_new_tokens: o.maxNewTokens, rows };
  } finally {
    await Promise.all(procs.reverse().map(stop));
    await rm(work, { recursive: true, force: true });
  }
}

export function clusterMarkdown(r: ClusterBenchResult): string {
  return [
    `\`${r.package}\`: ${r.rows[0]?.conversations} conversations at once (each a new image and a grounding question, greedy, at most ${r.max_new_tokens} tokens) through one front end (the OpenAI-compatible API); workers with ${r.threads_per_worker} intra-op thread and max_batch ${r.max_batch} each.`,
    '',
    '| workers | wall time | tokens | aggregate tok/s | latency p50 | latency p95 | answers as with 1 worker |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (x) =>
        `| ${x.workers} | ${fmt(x.wall_ms / 1000, ' s')} | ${x.tokens} | **${fmt(x.aggregate_tok_s)}** | ${fmt(x.latency_p50_ms, ' ms')} | ${fmt(x.latency_p95_ms, ' ms')} | ${x.identical_to_first_row ? 'yes' : 'NO'} |`,
    ),
    '',
    '```json',
    JSON.stringify(roundAll(r)),
    '```',
  ].join('\n');
}
