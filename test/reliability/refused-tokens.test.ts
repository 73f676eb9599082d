// A refused platform token (issue 9: faults; README: `minigpt serve`): the real `bin/minigpt.js
// serve` process against the fake Discord / fake Slack on loopback. A token the platform refuses, at start or
// later (Discord closing the gateway with 4004 after a reconnect), ends the process within seconds with a
// non-zero exit code and one clear line that names the variable, never the token; it never runs on silently.
// With both platforms in one process, the one whose token is refused stops (and says so) and the other runs on.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, ROOT } from '../helpers/cli.js';
import { FakeDiscord } from '../discord/fake-discord.js';
import { FakeSlack } from '../slack/fake-slack.js';
import { FORCED, squarePng, textReplies, waitForAnswers } from '../slack/helpers.js';
import { until } from './helpers.js';

interface Proc {
  child: ChildProcess;
  stderr: () => string;
  /** exit code, or 'timeout' (then the process was killed) */
  exited: Promise<{ code: number | null | 'timeout'; ms: number }>;
}

const PLATFORM_VARS = [
  'DISCORD_TOKEN',
  'DISCORD_APP_ID',
  'DISCORD_API_URL',
  'SLACK_BOT_TOKEN',
  'SLACK_SIGNING_SECRET',
  'SLACK_APP_TOKEN',
  'SLACK_API_URL',
  'SLACK_PORT',
  'STORE_URL',
  'METRICS_PORT',
  'MINIGPT_TEST_FORCED_ANSWER',
];

/** `minigpt serve` with the demo package on the CPU and `env`; killed after `limitMs`. */
function serve(env: Record<string, string>, limitMs: number): Proc {
  const base: NodeJS.ProcessEnv = { ...process.env };
  for (const k of PLATFORM_VARS) delete base[k];
  const child = spawn(process.execPath, [BIN, 'serve'], {
    cwd: ROOT,
    env: { ...base, MINIGPT_CONFIG: join(ROOT, 'configs', 'demo.yaml'), EXECUTION_PROVIDER: 'cpu', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const t0 = Date.now();
  const exited = new Promise<{ code: number | null | 'timeout'; ms: number }>((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve({ code: 'timeout', ms: Date.now() - t0 });
    }, limitMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, ms: Date.now() - t0 });
    });
  });
  return { child, stderr: () => stderr, exited };
}

/** The lines that say what went wrong (not the model's start-up lines). */
const problemLines = (stderr: string) => stderr.split('\n').filter((l) => /refused|token|gateway|error|stopped/i.test(l));

describe('minigpt serve with a Discord token that Discord refuses', () => {
  let fake: FakeDiscord;
  beforeAll(async () => {
    fake = await new FakeDiscord().start();
  });
  afterAll(() => fake?.close());

  it('at login (HTTP 401 on GET /gateway/bot): exits 1 within seconds, one clear line, no token', async () => {
    const bad = 'NOT.the-right-token.0123456789abcdef';
    const p = serve({ DISCORD_TOKEN: bad, DISCORD_API_URL: fake.apiUrl }, 30_000);
    const { code, ms } = await p.exited;
    expect(code, p.stderr()).toBe(1);
    expect(ms).toBeLessThan(15_000);
    expect(problemLines(p.stderr())).toEqual([
      'minigpt: Discord refused DISCORD_TOKEN (HTTP 401 Unauthorized): check the bot token (Discord Developer Portal > your application > Bot > Reset Token)',
    ]);
    expect(p.stderr()).not.toContain(bad);
    expect(fake.callsTo('GET', /^\/gateway\/bot$/).some((c) => !c.authorized)).toBe(true);
  });

  it('at login (the gateway closes with 4004 on IDENTIFY): exits 1 within seconds, one clear line, no token', async () => {
    fake.refuseIdentify = true;
    try {
      const p = serve({ DISCORD_TOKEN: fake.token, DISCORD_API_URL: fake.apiUrl }, 30_000);
      const { code, ms } = await p.exited;
      expect(code, p.stderr()).toBe(1);
      expect(ms).toBeLessThan(15_000);
      expect(problemLines(p.stderr())).toEqual([
        expect.stringMatching(/^minigpt: Discord refused DISCORD_TOKEN \(gateway close 4004: authentication failed\): check the bot token/),
      ]);
      expect(p.stderr()).not.toContain(fake.token);
    } finally {
      fake.refuseIdentify = false;
    }
  });

  /** `minigpt serve` on the fake Discord, once it is connected. */
  async function servingDiscord(): Promise<Proc> {
    const p = serve({ DISCORD_TOKEN: fake.token, DISCORD_API_URL: fake.apiUrl }, 60_000);
    await until(() => /discord: connected as/.test(p.stderr()) || p.child.exitCode !== null, 'the bot to connect', 30_000);
    expect(p.child.exitCode, p.stderr()).toBeNull();
    return p;
  }

  it('after a reconnect (the token was reset while the bot ran): exits 1 within seconds instead of running offline', async () => {
    const p = await servingDiscord();
    try {
      // The session ends (4007: a new IDENTIFY is needed) and the new IDENTIFY is refused (4004).
      fake.refuseIdentify = true;
      const at = Date.now();
      fake.dropGateway(4007);
      const { code } = await p.exited;
      expect(code, p.stderr()).toBe(1);
      expect(Date.now() - at).toBeLessThan(15_000);
      expect(fake.gatewayStats.identifies).toBeGreaterThanOrEqual(2);
      expect(problemLines(p.stderr())).toEqual([
        expect.stringMatching(
          /^minigpt: discord adapter stopped: Discord refused DISCORD_TOKEN \(gateway close 4004: authentication failed\): check the bot token/,
        ),
      ]);
      expect(p.stderr()).not.toContain(fake.token);
    } finally {
      fake.refuseIdentify = false;
      p.child.kill('SIGKILL');
    }
  });

  it('reset while the bot runs (HTTP 401 on a REST call, the gateway still up): exits 1 within seconds, one clear line', async () => {
    const { channelIds } = fake.addGuild('Reset server', ['general']);
    const alice = fake.user('alice');
    const p = await servingDiscord();
    try {
      fake.restTokenRefused = true;
      const at = Date.now();
      fake.postMessage(channelIds[0]!, alice, 'what is this?', { mentionBot: true });
      const { code } = await p.exited;
      expect(code, p.stderr()).toBe(1);
      expect(Date.now() - at).toBeLessThan(15_000);
      expect(p.stderr().trim().split('\n').at(-1)).toMatch(
        /^minigpt: discord adapter stopped: Discord refused DISCORD_TOKEN \(HTTP 401 on (POST|PATCH|GET) \/channels\/:id\/[a-z/:]+\): check the bot token/,
      );
      expect(p.stderr()).not.toContain(fake.token);
    } finally {
      fake.restTokenRefused = false;
      p.child.kill('SIGKILL');
    }
  });
});

describe('minigpt serve with a Slack token that Slack refuses', () => {
  let fake: FakeSlack;
  beforeAll(async () => {
    fake = await FakeSlack.start();
  });
  afterAll(() => fake?.close());

  it('SLACK_BOT_TOKEN refused by auth.test (invalid_auth): exits 1 within seconds, one clear line, no token', async () => {
    const bad = 'xoxb-1111-2222-notthetokennotthetoken';
    const p = serve(
      { SLACK_BOT_TOKEN: bad, SLACK_SIGNING_SECRET: fake.signingSecret, SLACK_PORT: '0', SLACK_API_URL: fake.apiUrl },
      30_000,
    );
    const { code, ms } = await p.exited;
    expect(code, p.stderr()).toBe(1);
    expect(ms).toBeLessThan(15_000);
    expect(problemLines(p.stderr())).toEqual(['minigpt: Slack refused SLACK_BOT_TOKEN (auth.test: invalid_auth)']);
    expect(p.stderr()).not.toContain(bad);
    expect(p.stderr()).not.toContain(fake.signingSecret);
  });

  it('SLACK_APP_TOKEN (Socket Mode) refused by apps.connections.open: exits 1 within seconds, no token', async () => {
    const bad = 'xapp-1-A0FAKE-3333-notthetokennotthetoken';
    const p = serve({ SLACK_BOT_TOKEN: fake.botToken, SLACK_APP_TOKEN: bad, SLACK_API_URL: fake.apiUrl }, 30_000);
    const { code, ms } = await p.exited;
    expect(code, p.stderr()).toBe(1);
    expect(ms).toBeLessThan(15_000);
    expect(p.stderr().trim().split('\n').at(-1)).toBe('minigpt: Slack refused SLACK_APP_TOKEN (apps.connections.open: invalid_auth)');
    expect(p.stderr()).not.toContain(bad);
    expect(p.stderr()).not.toContain(fake.botToken);
  });

  /** `minigpt serve` on the fake Slack (HTTP mode), once it is taking events: the fake sends them to it. */
  async function servingSlack(): Promise<Proc> {
    const p = serve(
      { SLACK_BOT_TOKEN: fake.botToken, SLACK_SIGNING_SECRET: fake.signingSecret, SLACK_PORT: '0', SLACK_API_URL: fake.apiUrl },
      60_000,
    );
    await until(
      () => /slack: HTTP mode, events on (\S+)/.test(p.stderr()) || p.child.exitCode !== null,
      'the Slack adapter to start',
      30_000,
    );
    expect(p.child.exitCode, p.stderr()).toBeNull();
    fake.appUrl = /slack: HTTP mode, events on (\S+)/.exec(p.stderr())![1]!.replace('localhost', '127.0.0.1');
    return p;
  }

  it('SLACK_BOT_TOKEN revoked while the bot runs (token_revoked on its next call): exits 1 within seconds, one clear line', async () => {
    const p = await servingSlack();
    try {
      fake.botTokenRefusal = 'token_revoked';
      const at = Date.now();
      await fake.mention('C1', { text: 'what is this?' });
      const { code } = await p.exited;
      expect(code, p.stderr()).toBe(1);
      expect(Date.now() - at).toBeLessThan(15_000);
      expect(p.stderr().trim().split('\n').at(-1)).toMatch(
        /^minigpt: slack adapter stopped: Slack refused SLACK_BOT_TOKEN \(token_revoked on chat\.postMessage\): the token was revoked, the app removed, or the workspace deactivated: reinstall the app/,
      );
      expect(p.stderr()).not.toContain(fake.botToken);
      expect(p.stderr()).not.toContain(fake.signingSecret);
    } finally {
      fake.botTokenRefusal = undefined;
      p.child.kill('SIGKILL');
    }
  });

  it("the bot's token revoked (tokens_revoked event): the workspace is forgotten, then exits 1 with one clear line", async () => {
    const p = await servingSlack();
    try {
      const at = Date.now();
      expect((await fake.sendEvent({ type: 'tokens_revoked', tokens: { bot: [fake.botUserId] } })).status).toBe(200);
      const { code } = await p.exited;
      expect(code, p.stderr()).toBe(1);
      expect(Date.now() - at).toBeLessThan(15_000);
      expect(p.stderr()).toContain(`slack: the bot's token was revoked in workspace ${fake.teamId}`);
      expect(p.stderr().trim().split('\n').at(-1)).toBe(
        `minigpt: slack adapter stopped: Slack revoked SLACK_BOT_TOKEN (tokens_revoked in workspace ${fake.teamId}): reinstall the app and set its new Bot User OAuth Token`,
      );
    } finally {
      p.child.kill('SIGKILL');
    }
  });
});

describe('minigpt serve with Discord and Slack in one process', () => {
  let discord: FakeDiscord;
  let slack: FakeSlack;
  beforeAll(async () => {
    discord = await new FakeDiscord().start();
    slack = await FakeSlack.start();
  });
  afterAll(async () => {
    await discord?.close();
    await slack?.close();
  });

  it("Discord's token reset while it runs: Discord stops, Slack answers on (/readyz and the metrics say so); Slack's revoked too: exits 1", async () => {
    const { channelIds } = discord.addGuild('Both server', ['general']);
    const p = serve(
      {
        DISCORD_TOKEN: discord.token,
        DISCORD_API_URL: discord.apiUrl,
        SLACK_BOT_TOKEN: slack.botToken,
        SLACK_SIGNING_SECRET: slack.signingSecret,
        SLACK_PORT: '0',
        SLACK_API_URL: slack.apiUrl,
        METRICS_PORT: '0',
        MINIGPT_TEST_FORCED_ANSWER: FORCED,
      },
      90_000,
    );
    try {
      const events = /slack: HTTP mode, events on (\S+)/;
      await until(
        () => (/discord: connected as/.test(p.stderr()) && events.test(p.stderr())) || p.child.exitCode !== null,
        'both adapters to start',
        30_000,
      );
      expect(p.child.exitCode, p.stderr()).toBeNull();
      slack.appUrl = events.exec(p.stderr())![1]!.replace('localhost', '127.0.0.1');
      const metricsUrl = /minigpt: metrics on (\S+)\/metrics/.exec(p.stderr())![1]!;

      // The token reset while the gateway is up: the next REST call is refused.
      discord.restTokenRefused = true;
      discord.postMessage(channelIds[0]!, discord.user('alice'), 'what is this?', { mentionBot: true });
      await until(() => /discord adapter stopped/.test(p.stderr()) || p.child.exitCode !== null, 'Discord to stop', 15_000);
      expect(problemLines(p.stderr())).toEqual([
        expect.stringMatching(
          /^minigpt: discord adapter stopped: Discord refused DISCORD_TOKEN \(HTTP 401 on [A-Z]+ \/channels\/[^)]+\): check the bot token.* \(slack runs on; restart once it is fixed\)$/,
        ),
      ]);
      // The stopped adapter is closed: its gateway connection too.
      await until(() => !discord.connected, 'the Discord client to disconnect', 10_000);

      // Slack still answers, from the same process.
      const file = slack.addFile({ name: 'square.png', data: await squarePng(), mimetype: 'image/png' });
      const { msg } = await slack.mention('CBOTH', { files: [file] });
      await waitForAnswers(slack, 'CBOTH', msg.ts, 1);
      expect(textReplies(slack, 'CBOTH', msg.ts).map((m) => m.text)).toEqual(['*green square* on a grey background']);
      expect(p.child.exitCode).toBeNull();

      const ready = await fetch(`${metricsUrl}/readyz`);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toEqual({
        ready: true,
        stopped: [expect.stringMatching(/^discord adapter stopped: Discord refused DISCORD_TOKEN/)],
      });
      expect(await (await fetch(`${metricsUrl}/metrics`)).text()).toMatch(/^minigpt_adapters_stopped 1$/m);

      // The last platform gone, the process ends.
      slack.botTokenRefusal = 'token_revoked';
      await slack.mention('CBOTH', { text: 'and now?' });
      const { code } = await p.exited;
      expect(code, p.stderr()).toBe(1);
      expect(p.stderr().trim().split('\n').at(-1)).toMatch(
        /^minigpt: slack adapter stopped: Slack refused SLACK_BOT_TOKEN \(token_revoked on /,
      );
      expect(p.stderr()).not.toContain(discord.token);
      expect(p.stderr()).not.toContain(slack.botToken);
    } finally {
      discord.restTokenRefused = false;
      slack.botTokenRefusal = undefined;
      p.child.kill('SIGKILL');
    }
  });
});
