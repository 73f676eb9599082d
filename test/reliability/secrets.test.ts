// Secrets (issue 9): bot tokens, the Slack app token and signing secret, interaction tokens and signed file or
// upload URLs never appear in the logs or in a reply, whatever fails. Every error path that touches them is
// provoked (refused tokens, failing downloads of signed URLs, failing uploads to upload URLs, expired
// interactions, REST errors), then the captured logs and every message the bot posted are scanned.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager } from '../../src/conversation/index.js';
import { startSlackAdapter, type SlackAdapter } from '../../adapters/slack/index.js';
import { startDiscordAdapter } from '../../adapters/discord/index.js';
import { squarePng, textReplies, useSlackAdapter } from '../slack/helpers.js';
import { dispatchUnknownInteraction, testPng, useDiscordAdapter } from '../discord/helpers.js';
import { expectNoSecrets, FORCED, until } from './helpers.js';

const ROOT = join(import.meta.dirname, '..', '..');

let model: MiniGPT;
let manager: ConversationManager;

beforeAll(async () => {
  model = await MiniGPT.load(join(ROOT, 'models', 'demo'), { provider: 'cpu', threads: 1, forcedAnswer: FORCED });
  manager = new ConversationManager({ model, defaults: { maxNewTokens: 24, temperature: 0 } });
});

afterAll(async () => {
  await manager?.close();
  await model?.close();
});

describe('Slack', () => {
  const slack = useSlackAdapter(() => manager, { updateIntervalMs: 20, downloadTimeoutMs: 1000 });
  const { logs } = slack;

  it('failing downloads, uploads, API calls and refused tokens leak nothing', async () => {
    const { fake } = slack;
    const png = await squarePng(64, 48);
    // A file Slack cannot serve (404), one behind a sign-in page (no files:read), and a good one whose upload fails.
    const gone = fake.addFile({ name: 'gone.png', data: png, mimetype: 'image/png' });
    fake.files.delete(gone.id);
    const a = await fake.mention('CSEC', { text: `<@${fake.botUserId}> one`, files: [gone] });
    fake.scopes.delete('files:read');
    const b = await fake.mention('CSEC', {
      text: `<@${fake.botUserId}> two`,
      files: [fake.addFile({ name: 'x.png', data: png, mimetype: 'image/png' })],
    });
    await fake.waitFor(
      () => textReplies(fake, 'CSEC', a.msg.ts).length > 0 && textReplies(fake, 'CSEC', b.msg.ts).some((r) => /:warning:/.test(r.text)),
      20_000,
      'the refusals',
    );
    fake.scopes.add('files:read');
    fake.uploadFault = () => 500;
    let updates = 0;
    fake.apiFault = (method) => (method === 'chat.update' && updates++ < 1 ? { status: 503, body: '<html>unavailable</html>' } : undefined);
    const c = await fake.mention('CSEC', {
      text: `<@${fake.botUserId}> three`,
      files: [fake.addFile({ name: 'y.png', data: png, mimetype: 'image/png' })],
    });
    await fake.waitFor(() => textReplies(fake, 'CSEC', c.msg.ts).some((r) => /could not attach/.test(r.text)), 30_000, 'the upload note');
    fake.uploadFault = undefined;
    fake.apiFault = undefined;
    // A bad signature, an old timestamp.
    await fake.sendEvent({ type: 'app_mention', text: 'x', channel: 'CSEC', user: 'U1', ts: '1.1' }, { secret: 'wrong-secret-0123456789' });
    // A refused bot token and a refused app token at start.
    const bad = await startSlackAdapter({
      manager,
      botToken: 'xoxb-1111-2222-refusedrefusedrefused',
      signingSecret: fake.signingSecret,
      port: 0,
      host: '127.0.0.1',
      apiUrl: fake.apiUrl,
      log: (l) => logs.push(l),
    }).catch((e: unknown) => e);
    logs.push(String((bad as Error).message));
    const badApp = await startSlackAdapter({
      manager,
      botToken: fake.botToken,
      appToken: 'xapp-1-A0X-1-refusedrefusedrefused',
      apiUrl: fake.apiUrl,
      log: (l) => logs.push(l),
    }).catch((e: unknown) => e);
    if (badApp instanceof Error) logs.push(badApp.message);
    else await (badApp as SlackAdapter).close();

    const replies = fake.messages.filter((m) => m.bot_id === fake.botId).map((m) => m.text);
    expect(logs.length).toBeGreaterThan(5);
    for (const [what, texts] of [
      ['logs', logs],
      ['replies', replies],
    ] as const) {
      expectNoSecrets(texts, [fake.botToken, fake.appToken, fake.signingSecret, 'refusedrefusedrefused', 'wrong-secret-0123456789'], what);
      const all = texts.join('\n');
      expect(all, `${what}: a private file URL`).not.toContain('/files-pri/');
      expect(all, `${what}: an upload URL`).not.toMatch(/\/upload\/F0UP/);
    }
  });
});

describe('Discord', () => {
  const discord = useDiscordAdapter(() => manager, { editIntervalMs: 30, rateLimit: false, downloadTimeoutMs: 800 });
  const { logs } = discord;

  it('failing downloads of signed URLs, expired interactions, REST errors and refused tokens leak nothing', async () => {
    const { w } = discord;
    const { fake } = w;
    const png = await testPng(64, 48);
    const sig = '?ex=65f00000&is=65e00000&hm=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef&';
    const cases = [
      { ...fake.addAttachment('gone.png', png, 'image/png'), url: `${fake.origin}/attachments/1/2/gone.png${sig}` },
      { ...fake.addAttachment('slow.png', png, 'image/png'), url: `${fake.origin}/slow${sig}` },
      {
        ...fake.addAttachment('moved.png', png, 'image/png'),
        url: `${fake.origin}/redirect${sig}to=${encodeURIComponent(`https://evil.example/x.png${sig}`)}`,
      },
    ];
    const msgs = cases.map((att) => fake.postMessage(w.general, w.alice, 'look', { attachments: [att], mentionBot: true }));
    await until(
      () => msgs.every((m) => fake.messagesIn(w.general).some((x) => x.message_reference?.message_id === m.id)),
      'the refusals',
      20_000,
    );
    // An interaction whose token Discord no longer knows, and a REST failure mid-answer.
    const token = 'aW50ZXJhY3Rpb246c2VjcmV0LXRva2VuLXZhbHVlLTEyMzQ1Njc4OTA';
    dispatchUnknownInteraction(w, token);
    await until(() => logs.some((l) => /Unknown interaction/.test(l)), 'the interaction failure');
    // A REST error whose body echoes the token (a 401 would make discord.js drop its token for good).
    fake.restFault = (call) =>
      call.method === 'PATCH'
        ? { status: 400, body: { message: `Invalid Form Body (Authorization: Bot ${fake.token})`, code: 50035 } }
        : undefined;
    const m = fake.postMessage(w.general, w.alice, 'patch fails', {
      attachments: [fake.addAttachment('p.png', png, 'image/png')],
      mentionBot: true,
    });
    await until(() => logs.some((l) => l.includes(` ${m.id} (`) && /(answered|error|failed)/.test(l)), 'the end of that answer');
    fake.restFault = undefined;
    // A refused token at start.
    const bad = await startDiscordAdapter({
      manager,
      token: 'REFUSED.discord-token.0123456789abcdef',
      apiUrl: fake.apiUrl,
      log: (l) => logs.push(l),
      readyTimeoutMs: 5000,
    }).catch((e: unknown) => e);
    logs.push(String((bad as Error).message));

    const replies = [...fake.messagesIn(w.general), ...msgs.flatMap((x) => fake.messagesIn(x.id)), ...fake.messagesIn(m.id)]
      .filter((x) => x.author.id === fake.bot.id)
      .map((x) => x.content);
    expect(logs.length).toBeGreaterThan(5);
    for (const [what, texts] of [
      ['logs', logs],
      ['replies', replies],
    ] as const) {
      expectNoSecrets(texts, [fake.token, token, 'REFUSED.discord-token.0123456789abcdef', '0123456789abcdef0123456789abcdef'], what);
    }
  });
});
