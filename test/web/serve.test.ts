// `minigpt serve` / `npm start`: config -> model package -> manager -> the web demo when no chat platform
// credentials are set; a clear message when the package is missing; SIGTERM closes everything, exit 0.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, ServeError, type PlatformAdapterSpec } from '../../src/serve.js';
import { buildTinyPackage, postChat, randomConversation, readEvents, ROOT, testPng } from './helpers.js';
import { writeBotConfig } from '../helpers/bot-config.js';

let work: string;
let pkg: string;
let config: string;

const writeConfig = (path: string, packagePath: string) =>
  writeBotConfig(path, { model: { package: packagePath, max_new_tokens: 16 }, runtime: { queue_size: 4 } });

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-serve-'));
  pkg = await buildTinyPackage(work);
  await mkdir(join(work, 'configs'));
  config = await writeConfig(join(work, 'configs', 'tiny.yaml'), pkg);
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('serve()', () => {
  it('starts the web demo when no platform credentials are set, and closes cleanly', async () => {
    const logs: string[] = [];
    const bot = await serve({ env: { MINIGPT_CONFIG: config, WEB_PORT: '0' }, log: (l) => logs.push(l) });
    try {
      expect(bot.adapters.map((a) => a.name)).toEqual(['web']);
      expect(bot.webUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
      expect(logs.filter((l) => l.includes(bot.webUrl!))).toHaveLength(1);
      // a server reads the embedding table's file into the page cache in the background, and says so
      expect(await bot.model.tableRead).toBe((await stat(join(pkg, 'embed.onnx.data'))).size);
      expect(logs.filter((l) => /^embedding table in the page cache: [\d.]+ MiB read in [\d.]+ s$/.test(l))).toHaveLength(1);
      const info = (await (await fetch(new URL('/api/info', bot.webUrl))).json()) as {
        model: { name: string; notice?: string };
        defaults: { maxNewTokens: number };
      };
      expect(info.model.name).toBe(bot.model.meta.name);
      expect(info.model.notice).toBeUndefined(); // not models/demo
      expect(info.defaults.maxNewTokens).toBe(16);
      const evs = await readEvents(
        await postChat(bot.webUrl!, { conversation: randomConversation(), text: 'hello', image: await testPng() }),
      );
      expect(evs.filter((e) => e.type === 'error')).toEqual([]);
      expect(evs.some((e) => e.type === 'final')).toBe(true);
    } finally {
      await bot.close();
    }
    await expect(fetch(bot.webUrl!)).rejects.toThrow();
  });

  it('warms the model up before the adapters start where runtime.warm_up says (auto: not on the CPU)', async () => {
    const warm = await writeBotConfig(join(work, 'configs', 'warm.yaml'), {
      model: { package: pkg, max_new_tokens: 16 },
      runtime: { queue_size: 4, warm_up: true, max_batch: 2 },
    });
    for (const [cfg, warmed] of [
      [warm, true],
      [config, false],
    ] as const) {
      const logs: string[] = [];
      const bot = await serve({ env: { MINIGPT_CONFIG: cfg, WEB_PORT: '0' }, log: (l) => logs.push(l) });
      try {
        const at = logs.findIndex((l) => /^warmed up on cpu: an image \d+ ms, an answer \d+ ms, 2 at once \d+ ms$/.test(l));
        expect(at >= 0, logs.join('\n')).toBe(warmed);
        if (warmed) {
          expect(at).toBeLessThan(logs.findIndex((l) => l.includes(bot.webUrl!)));
          // its two answers decoded together, before any request
          expect(bot.model.engine.stats.maxRows).toBe(2);
        }
      } finally {
        await bot.close();
      }
    }
  });

  it("shows the embedded demo package with the final test split's scores PROVENANCE.json records (not the selection split's)", async () => {
    const record = JSON.parse(await readFile(join(ROOT, 'models/demo/PROVENANCE.json'), 'utf8')) as {
      heldout: { eval: Record<string, { accuracy: number }> };
      test: { eval: Record<string, { accuracy: number }> };
    };
    const demoConfig = await writeConfig(join(work, 'configs', 'demo.yaml'), join(ROOT, 'models/demo'));
    const bot = await serve({ env: { MINIGPT_CONFIG: demoConfig, WEB_PORT: '0' }, log: () => {} });
    const pct = (v: number) => `${Math.round(v * 100)}%`;
    try {
      const info = (await (await fetch(new URL('/api/info', bot.webUrl))).json()) as { model: { name: string; notice?: string } };
      expect(info.model.name).toBe('minigpt-v2-demo'); // not the temp folder publish.mjs converted it in
      expect(info.model.notice).toContain('trained from scratch on synthetic scenes');
      expect(info.model.notice).toContain(`boxes the object asked for ${pct(record.test.eval.refer.accuracy)} of the time`);
      expect(info.model.notice).toContain(`names a boxed object ${pct(record.test.eval.identify.accuracy)}`);
      expect(info.model.notice).toContain(`answers ${pct(record.test.eval.vqa.accuracy)} of questions`);
      // the selection split's vqa score rounds differently: the notice is not quoting it
      expect(pct(record.heldout.eval.vqa.accuracy)).not.toBe(pct(record.test.eval.vqa.accuracy));
    } finally {
      await bot.close();
    }
  });

  it('starts the platform adapters whose credentials are set instead of the web demo, and only those', async () => {
    const logs: string[] = [];
    let closed = false;
    let slackStarted = false;
    const adapters: PlatformAdapterSpec[] = [
      {
        name: 'discord',
        credentials: ['DISCORD_TOKEN'],
        start: async () => ({ name: 'discord', close: async () => void (closed = true) }),
      },
      {
        name: 'slack',
        credentials: ['SLACK_BOT_TOKEN'],
        start: async () => {
          slackStarted = true;
          return { name: 'slack', close: async () => {} };
        },
      },
    ];
    const bot = await serve({
      env: { MINIGPT_CONFIG: config, DISCORD_TOKEN: 'x', SLACK_BOT_TOKEN: '  ' },
      adapters,
      log: (l) => logs.push(l),
    });
    try {
      expect(bot.adapters.map((a) => a.name)).toEqual(['discord']);
      expect(slackStarted).toBe(false); // its variable is blank
      expect(bot.webUrl).toBeUndefined();
      expect(logs.join('\n')).toMatch(/minigpt: discord adapter started/);
    } finally {
      await bot.close();
    }
    expect(closed).toBe(true);
  });

  it('names the missing model.json and the command that builds it', async () => {
    const demoLike = join(work, 'repo');
    await mkdir(join(demoLike, 'configs'), { recursive: true });
    const cfg = await writeConfig(join(demoLike, 'configs', 'demo.yaml'), 'models/demo');
    const err = await serve({ env: { MINIGPT_CONFIG: cfg, WEB_PORT: '0' }, log: () => {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ServeError);
    expect((err as Error).message).toContain(join(demoLike, 'models', 'demo', 'model.json'));
    expect((err as Error).message).toContain('git checkout -- models/demo');

    const other = await writeConfig(join(demoLike, 'configs', 'other.yaml'), 'models/minigptv2');
    const err2 = await serve({ env: { MINIGPT_CONFIG: other }, log: () => {} }).catch((e: unknown) => e);
    expect((err2 as Error).message).toMatch(/minigpt convert .*--out/);
  });

  it('rejects a bad WEB_PORT and a remote WEB_HOST without WEB_ALLOW_REMOTE', async () => {
    await expect(serve({ env: { MINIGPT_CONFIG: config, WEB_PORT: 'eighty' }, log: () => {} })).rejects.toThrow(/WEB_PORT/);
    await expect(serve({ env: { MINIGPT_CONFIG: config, WEB_PORT: '0', WEB_HOST: '0.0.0.0' }, log: () => {} })).rejects.toThrow(
      /WEB_ALLOW_REMOTE/,
    );
  });
});

describe('minigpt serve (the binary)', () => {
  it('logs the URL, serves the page, and exits 0 on SIGTERM', async () => {
    const child = spawn(process.execPath, [join(ROOT, 'bin', 'minigpt.js'), 'serve'], {
      cwd: work,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, MINIGPT_CONFIG: config, WEB_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await expect.poll(() => /web demo on (http:\/\/\S+)/.exec(stderr)?.[1], { timeout: 30_000 }).toBeTruthy();
      const url = /web demo on (http:\/\/\S+)/.exec(stderr)![1];
      const res = await fetch(url);
      expect(res.status).toBe(200);
      expect(await res.text()).toContain('MiniGPT-v2 demo');
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stderr).toContain('SIGTERM, shutting down');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
