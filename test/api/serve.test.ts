// `minigpt serve` with API_PORT: the OpenAI-compatible API beside the web demo (which is unchanged), its
// settings checked before the model loads, and closed with the bot.
import { describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import OpenAI from 'openai';
import { serve, ServeError } from '../../src/serve.js';
import { renderExamples } from '../../adapters/web/examples.js';
import { postChat, randomConversation, readEvents } from '../web/helpers.js';
import { useBotConfig } from '../helpers/shared.js';

const ROOT = join(import.meta.dirname, '..', '..');
const files = useBotConfig('minigpt-api-serve-', 'demo.yaml', {
  model: { package: join(ROOT, 'models', 'demo'), max_new_tokens: 24, temperature: 0 },
});

describe('serve() with API_PORT', () => {
  it('starts the API beside the web demo; both answer the same question the same way', async () => {
    const logs: string[] = [];
    const bot = await serve({ env: { MINIGPT_CONFIG: files.config, WEB_PORT: '0', API_PORT: '0' }, log: (l) => logs.push(l) });
    try {
      expect(bot.adapters.map((a) => a.name)).toEqual(['web', 'api']);
      expect(bot.apiUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/);
      expect(logs.some((l) => l.includes(bot.apiUrl!) && l.includes('model id "demo"') && l.includes('loopback only'))).toBe(true);
      const client = new OpenAI({ baseURL: bot.apiUrl, apiKey: 'local', maxRetries: 0 });
      const models = await client.models.list();
      expect(models.data.map((m) => m.id)).toEqual(['demo']);
      const ex = await renderExamples({ count: 2 });
      const e = ex.list[0];
      const png = ex.png(e.id)!;
      const r = await client.chat.completions.create({
        model: 'demo',
        messages: [
          {
            role: 'user',
            content: [
              { type: 'text', text: e.prompt },
              { type: 'image_url', image_url: { url: `data:image/png;base64,${png.toString('base64')}` } },
            ],
          },
        ],
      });
      const web = await readEvents(await postChat(bot.webUrl!, { conversation: randomConversation(), text: e.prompt, image: png }));
      const final = web.find((ev) => ev.type === 'final') as { text: string } | undefined;
      expect(final?.text).toBeTruthy();
      expect(r.choices[0].message.content).toBe(final!.text); // config temperature 0: greedy on both
    } finally {
      await bot.close();
    }
    await expect(fetch(`${bot.apiUrl}/models`)).rejects.toThrow();
  });

  it('refuses a non-loopback API_HOST without MINIGPT_API_KEYS, and a bad API_PORT, before looking for the model', async () => {
    // a config whose package does not exist: the settings error must come first
    const missing = join(files.work, 'missing.yaml');
    await writeFile(
      missing,
      ['model:', '  arch: minigpt_v2', `  package: ${JSON.stringify(join(files.work, 'no-such-package'))}`, ''].join('\n'),
    );
    await expect(serve({ env: { MINIGPT_CONFIG: missing }, log: () => {} })).rejects.toThrow(/model package not found/);
    const refused = serve({ env: { MINIGPT_CONFIG: missing, API_PORT: '0', API_HOST: '0.0.0.0' }, log: () => {} });
    await expect(refused).rejects.toThrow(ServeError);
    await expect(refused).rejects.toThrow(/API_HOST=0\.0\.0\.0 without MINIGPT_API_KEYS/);
    await expect(serve({ env: { MINIGPT_CONFIG: missing, API_PORT: 'eighty' }, log: () => {} })).rejects.toThrow(/API_PORT=eighty/);
    await expect(serve({ env: { MINIGPT_CONFIG: missing, API_PORT: '0', API_RATE_LIMIT: 'lots' }, log: () => {} })).rejects.toThrow(
      /API_RATE_LIMIT=lots: expected N\/SECONDS/,
    );
    await expect(serve({ env: { MINIGPT_CONFIG: missing, API_PORT: '0', API_MAX_CONCURRENT: '-1' }, log: () => {} })).rejects.toThrow(
      /API_MAX_CONCURRENT=-1: expected a whole number/,
    );
    await expect(serve({ env: { MINIGPT_CONFIG: missing, API_PORT: '0', API_CORS_ORIGINS: '*' }, log: () => {} })).rejects.toThrow(
      /API_CORS_ORIGINS=\* without MINIGPT_API_KEYS/,
    );
  });

  it('limits each key as API_RATE_LIMIT says, lets in the pages of API_CORS_ORIGINS, and says so at start', async () => {
    const logs: string[] = [];
    const bot = await serve({
      env: {
        MINIGPT_CONFIG: files.config,
        API_PORT: '0',
        MINIGPT_API_KEYS: 'k-1,k-2',
        API_RATE_LIMIT: '1/60',
        API_MAX_CONCURRENT: '2',
        API_CORS_ORIGINS: 'http://localhost:3000',
      },
      log: (l) => logs.push(l),
    });
    try {
      expect(logs.find((l) => l.includes('OpenAI-compatible API on'))).toMatch(
        /; per key: 1 requests per 60 s, 2 at once; pages from http:\/\/localhost:3000\)$/,
      );
      const ask = (key: string) =>
        new OpenAI({ baseURL: bot.apiUrl, apiKey: key, maxRetries: 0 }).chat.completions.create({
          model: 'demo',
          messages: [{ role: 'user', content: 'hello' }],
          max_tokens: 2,
        });
      expect((await ask('k-1')).choices[0].message.content).toBeDefined();
      await expect(ask('k-1')).rejects.toBeInstanceOf(OpenAI.RateLimitError);
      expect((await ask('k-2')).choices[0].message.content).toBeDefined();
      const models = await fetch(`${bot.apiUrl}/models`, { headers: { origin: 'http://localhost:3000', authorization: 'Bearer k-1' } });
      expect(models.headers.get('access-control-allow-origin')).toBe('http://localhost:3000');
    } finally {
      await bot.close();
    }
  });

  it('says on the page and in /v1/models when the test hook forces the answers', async () => {
    const bot = await serve({
      env: { MINIGPT_CONFIG: files.config, WEB_PORT: '0', API_PORT: '0' },
      load: { forcedAnswer: 'forced text' },
      log: () => {},
    });
    try {
      const info = (await (await fetch(new URL('/api/info', bot.webUrl))).json()) as { model: { notice?: string } };
      expect(info.model.notice).toContain('forced by the test hook MINIGPT_TEST_FORCED_ANSWER');
      const models = (await (await fetch(`${bot.apiUrl}/models`)).json()) as { data: { minigpt: { forced_answer?: boolean } }[] };
      expect(models.data[0].minigpt.forced_answer).toBe(true);
    } finally {
      await bot.close();
    }
    const plain = await serve({ env: { MINIGPT_CONFIG: files.config, WEB_PORT: '0', API_PORT: '0' }, log: () => {} });
    try {
      const models = (await (await fetch(`${plain.apiUrl}/models`)).json()) as { data: { minigpt: { forced_answer?: boolean } }[] };
      expect(models.data[0].minigpt.forced_answer).toBeUndefined();
    } finally {
      await plain.close();
    }
  });

  it('takes the model id from API_MODEL_ID and requires the keys it is given', async () => {
    const bot = await serve({
      env: { MINIGPT_CONFIG: files.config, WEB_PORT: '0', API_PORT: '0', API_MODEL_ID: 'minigpt-v2-demo', MINIGPT_API_KEYS: 'k-1, k-2' },
      log: () => {},
    });
    try {
      const as = (key: string) => new OpenAI({ baseURL: bot.apiUrl, apiKey: key, maxRetries: 0 });
      expect((await as('k-2').models.list()).data[0].id).toBe('minigpt-v2-demo');
      await expect(as('k-3').models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    } finally {
      await bot.close();
    }
  });
});
