// `minigpt serve` with Slack credentials in the environment: the Slack adapter starts (HTTP mode on SLACK_PORT,
// Web API at SLACK_API_URL) instead of the web demo, answers a mention, and closes with the bot.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { serve } from '../../src/serve.js';
import { FakeSlack } from './fake-slack.js';
import { FORCED, squarePng, textReplies, waitForAnswers } from './helpers.js';

const ROOT = join(import.meta.dirname, '..', '..');
let fake: FakeSlack;

beforeAll(async () => {
  fake = await FakeSlack.start();
});

afterAll(async () => {
  await fake?.close();
});

describe('serve() with SLACK_* set', () => {
  it('starts the Slack adapter from the environment and answers a mention', async () => {
    const logs: string[] = [];
    const bot = await serve({
      env: {
        MINIGPT_CONFIG: join(ROOT, 'configs', 'demo.yaml'),
        EXECUTION_PROVIDER: 'cpu',
        SLACK_BOT_TOKEN: fake.botToken,
        SLACK_SIGNING_SECRET: fake.signingSecret,
        SLACK_PORT: '0',
        SLACK_API_URL: fake.apiUrl,
      },
      load: { forcedAnswer: FORCED },
      log: (l) => logs.push(l),
    });
    try {
      expect(bot.adapters.map((a) => a.name)).toEqual(['slack']);
      expect(bot.webUrl).toBeUndefined();
      const slack = bot.adapters[0];
      expect(slack.url).toMatch(/^http:\/\/localhost:\d+\/slack\/events$/);
      fake.appUrl = slack.url!.replace('localhost', '127.0.0.1');
      const file = fake.addFile({ name: 'square.png', data: await squarePng(), mimetype: 'image/png' });
      const { msg } = await fake.mention('CSERVE', { files: [file] });
      await waitForAnswers(fake, 'CSERVE', msg.ts, 1);
      expect(textReplies(fake, 'CSERVE', msg.ts).map((m) => m.text)).toEqual(['*green square* on a grey background']);
    } finally {
      await bot.close();
    }
    await expect(fetch(fake.appUrl!, { method: 'POST', body: '{}' })).rejects.toThrow();
    const all = logs.join('\n');
    expect(all).toMatch(/minigpt: slack adapter started/);
    expect(all).not.toContain(fake.botToken);
    expect(all).not.toContain(fake.signingSecret);
  });

  it('fails to start with a clear message when neither a signing secret nor an app token is set', async () => {
    const err = await serve({
      env: {
        MINIGPT_CONFIG: join(ROOT, 'configs', 'demo.yaml'),
        EXECUTION_PROVIDER: 'cpu',
        SLACK_BOT_TOKEN: fake.botToken,
        SLACK_API_URL: fake.apiUrl,
      },
      log: () => {},
    }).catch((e: unknown) => e);
    expect(String(err)).toMatch(/SLACK_BOT_TOKEN is set but neither SLACK_SIGNING_SECRET .* nor SLACK_APP_TOKEN/);
  });
});
