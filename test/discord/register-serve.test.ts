// `minigpt register-commands` against the fake Discord, and `minigpt serve` starting the Discord adapter
// when DISCORD_TOKEN is set (with the demo model, the answer forced to one with a box).
import { describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { serve } from '../../src/serve.js';
import { commandDefinitions } from '../../adapters/discord/index.js';
import { answered, testPng, useFakeDiscord } from './helpers.js';

const w = useFakeDiscord();

async function runCli(args: string[], env: Record<string, string | undefined>): Promise<{ code: number; stderr: string }> {
  const saved = { ...process.env };
  const out: string[] = [];
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out.push(String(chunk));
    return true;
  });
  try {
    for (const k of ['DISCORD_TOKEN', 'DISCORD_APP_ID', 'DISCORD_GUILD_ID', 'DISCORD_API_URL']) delete process.env[k];
    Object.assign(process.env, env);
    const code = await main(['node', 'minigpt', ...args]);
    return { code, stderr: out.join('') };
  } finally {
    spy.mockRestore();
    process.env = saved;
  }
}

describe('minigpt register-commands', () => {
  it('registers /describe, "Describe image" and /forget globally, or for DISCORD_GUILD_ID', async () => {
    const env = { DISCORD_TOKEN: w.fake.token, DISCORD_APP_ID: w.fake.appId, DISCORD_API_URL: w.fake.apiUrl };
    const g = await runCli(['register-commands'], env);
    expect(g.code, g.stderr).toBe(0);
    expect(g.stderr).toContain(`registered /describe, "Describe image", /forget for application ${w.fake.appId} globally`);
    const put = w.fake.calls.filter((c) => c.method === 'PUT' && c.path === `/applications/${w.fake.appId}/commands`);
    expect(put).toHaveLength(1);
    expect(put[0].authorized).toBe(true);
    expect(put[0].body).toEqual(commandDefinitions());
    const describeCmd = w.fake.commands.get('global')!.find((c) => c.name === 'describe')!;
    expect(describeCmd.options.map((o: { name: string; type: number }) => [o.name, o.type])).toEqual([
      ['image', 11],
      ['prompt', 3],
      ['task', 3],
      ['temperature', 10],
    ]);
    expect(describeCmd.options[2].choices.map((c: { value: string }) => c.value)).toEqual([
      'chat',
      'grounding',
      'refer',
      'detection',
      'identify',
      'vqa',
      'caption',
    ]);
    expect(w.fake.commands.get('global')!.find((c) => c.name === 'Describe image')).toMatchObject({ type: 3 });

    // Guild scope; the application id asked from Discord when DISCORD_APP_ID is not set.
    const r = await runCli(['register-commands'], {
      DISCORD_TOKEN: w.fake.token,
      DISCORD_API_URL: w.fake.apiUrl,
      DISCORD_GUILD_ID: w.guildId,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`in guild ${w.guildId}`);
    expect(w.fake.calls.some((c) => c.method === 'GET' && c.path === '/applications/@me')).toBe(true);
    expect(w.fake.commands.get(w.guildId)?.map((c) => c.name)).toEqual(['describe', 'Describe image', 'forget']);
    expect(g.stderr + r.stderr).not.toContain(w.fake.token);
  });

  it('fails clearly without a token, or with a refused one (the token not shown)', async () => {
    const none = await runCli(['register-commands'], { DISCORD_API_URL: w.fake.apiUrl });
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/DISCORD_TOKEN is not set/);
    const bad = await runCli(['register-commands'], {
      DISCORD_TOKEN: 'NOT.the-token.0123456789abcdef',
      DISCORD_APP_ID: w.fake.appId,
      DISCORD_API_URL: w.fake.apiUrl,
    });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/registering the Discord commands failed: .*401/);
    expect(bad.stderr).not.toContain('NOT.the-token.0123456789abcdef');
  });
});

describe('minigpt serve with DISCORD_TOKEN', () => {
  it('starts the Discord adapter (not the web demo) and answers a mention through the real stack', async () => {
    const logs: string[] = [];
    const bot = await serve({
      env: { DISCORD_TOKEN: w.fake.token, DISCORD_APP_ID: w.fake.appId, DISCORD_API_URL: w.fake.apiUrl },
      config: 'configs/demo.yaml',
      log: (l) => logs.push(l),
      load: { provider: 'cpu', forcedAnswer: '<p>red square</p> {<20><20><70><70>} on a grey background' },
    });
    try {
      expect(bot.adapters.map((a) => a.name)).toEqual(['discord']);
      expect(bot.webUrl).toBeUndefined();
      const msg = w.fake.postMessage(w.general, w.alice, 'hi from serve', {
        mentionBot: true,
        attachments: [w.fake.addAttachment('s.png', await testPng(), 'image/png')],
      });
      expect(await answered(logs, msg.id)).toMatch(/annotated image/);
      expect(w.fake.messagesIn(msg.id).find((m) => m.author.id === w.fake.bot.id)?.content).toBe('**red square** on a grey background');
    } finally {
      await bot.close();
    }
    expect(logs.join('\n')).not.toContain(w.fake.token);
  });
});
