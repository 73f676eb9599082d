// Faults on the Slack side (issue 9): Socket Mode connections that drop or are refreshed while answers are in
// flight, Web API 429s with retry-after, and 5xx answers on the file upload. The real Bolt app against the fake
// Slack, the real conversation manager and the demo model; every request gets exactly one answer in its own
// thread, late perhaps, never lost and never doubled.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager } from '../../src/conversation/index.js';
import { startSlackAdapter, type SlackAdapter } from '../../adapters/slack/index.js';
import { FakeSlack, type FakeMessage } from '../slack/fake-slack.js';
import { FORCED, fileReplies, squarePng, textReplies } from '../slack/helpers.js';
import { expectNoSecrets, until } from './helpers.js';

const ROOT = join(import.meta.dirname, '..', '..');
const FINAL = '*green square* on a grey background';

let model: MiniGPT;
let manager: ConversationManager;
let fake: FakeSlack;
let adapter: SlackAdapter;
let png: Buffer;
const logs: string[] = [];

beforeAll(async () => {
  model = await MiniGPT.load(join(ROOT, 'models', 'demo'), { provider: 'cpu', threads: 1, forcedAnswer: FORCED });
  manager = new ConversationManager({ model, defaults: { maxNewTokens: 64, temperature: 0 } });
  fake = await FakeSlack.start();
  fake.transport = 'socket';
  fake.socketAckTimeoutMs = 1500;
  adapter = await startSlackAdapter({
    manager,
    botToken: fake.botToken,
    appToken: fake.appToken,
    apiUrl: fake.apiUrl,
    log: (l) => logs.push(l),
    updateIntervalMs: 30,
  });
  await fake.waitFor(() => fake.socketConnected, 5000, 'the socket');
  png = await squarePng(64, 48);
});

afterAll(async () => {
  await adapter?.close();
  await fake?.close();
  await manager?.close();
  await model?.close();
});

function mention(channel: string, text: string): Promise<{ msg: FakeMessage }> {
  const file = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
  return fake.mention(channel, { text: `<@${fake.botUserId}> ${text}`, files: [file] });
}

/** One final answer (text + annotated image) in each message's thread, and nothing more after a settle. */
async function expectAnsweredOnce(msgs: readonly FakeMessage[]): Promise<void> {
  for (const m of msgs) {
    await fake.waitFor(
      () => fileReplies(fake, m.channel, m.ts).length >= 1 && textReplies(fake, m.channel, m.ts).some((r) => r.text === FINAL),
      60_000,
      `the answer in thread ${m.ts}`,
    );
  }
  await new Promise((r) => setTimeout(r, 500));
  for (const m of msgs) {
    expect(
      textReplies(fake, m.channel, m.ts).map((r) => r.text),
      `text replies in ${m.ts}`,
    ).toEqual([FINAL]);
    expect(fileReplies(fake, m.channel, m.ts), `image replies in ${m.ts}`).toHaveLength(1);
  }
}

describe('Slack Socket Mode reconnects', () => {
  // ('close' with a close frame behaves as 'terminate'; each reconnect costs the client's 5 s back-off)
  for (const how of ['terminate', 'refresh'] as const) {
    it(`${how}: answers in flight are delivered, events sent meanwhile arrive after the reconnect, once each`, async () => {
      const connections = fake.socketStats.connections;
      const first = await Promise.all(Array.from({ length: 4 }, (_, i) => mention(i % 2 ? 'CA' : 'CB', `before ${how} #${i}`)));
      await until(() => first.some(({ msg }) => textReplies(fake, msg.channel, msg.ts).length > 0), 'the first reply');
      fake.dropSocket(how);
      // Users go on writing: Slack holds the envelopes (and redelivers unacknowledged ones) until the app is back.
      const during = Promise.all(Array.from({ length: 3 }, (_, i) => mention('CA', `during ${how} #${i}`)));
      await until(() => fake.socketStats.connections > connections && fake.socketConnected, 'a new Socket Mode connection', 30_000);
      const after = await mention('CB', `after ${how}`);
      await expectAnsweredOnce([...first.map((x) => x.msg), ...(await during).map((x) => x.msg), after.msg]);
    });
  }

  it('an envelope delivered twice (retry after a lost ack) is answered once', async () => {
    const file = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const msg = fake.addMessage('CD', { text: `<@${fake.botUserId}> twice`, files: [file] });
    const event = fake.messageEvent(msg, 'app_mention');
    await fake.sendEvent(event, { eventId: 'EvTWICE0001' });
    await fake.sendEvent(event, { eventId: 'EvTWICE0001', retryNum: 1, retryReason: 'timeout' });
    await expectAnsweredOnce([msg]);
  });
});

describe('Slack Web API faults', () => {
  it('429 with retry-after on chat.postMessage and chat.update: answers arrive after the wait, once each', async () => {
    const seen = new Map<string, number>();
    let limited = 0;
    fake.apiFault = (method, args) => {
      if (method !== 'chat.postMessage' && method !== 'chat.update') return undefined;
      const k = `${method} ${String(args.channel)}`;
      const n = (seen.get(k) ?? 0) + 1;
      seen.set(k, n);
      if (n > 1) return undefined;
      limited++;
      return { status: 429, headers: { 'retry-after': '1' }, body: JSON.stringify({ ok: false, error: 'ratelimited' }) };
    };
    try {
      const t0 = Date.now();
      const msgs = await Promise.all(['CR1', 'CR2', 'CR3'].map((c) => mention(c, 'rate limited')));
      await expectAnsweredOnce(msgs.map((x) => x.msg));
      expect(limited).toBeGreaterThanOrEqual(3);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1000); // the wait was honoured
    } finally {
      fake.apiFault = undefined;
    }
  });

  it('5xx on the upload URL and on files.completeUploadExternal: retried, one image each', async () => {
    const uploads = new Map<string, number>();
    let completes = 0;
    fake.uploadFault = (id) => {
      const n = (uploads.get(id) ?? 0) + 1;
      uploads.set(id, n);
      return n === 1 ? 503 : undefined;
    };
    fake.apiFault = (method) =>
      method === 'files.completeUploadExternal' && completes++ === 0 ? { status: 500, body: 'oops' } : undefined;
    try {
      const msgs = await Promise.all(['CU1', 'CU2'].map((c) => mention(c, 'upload fails once')));
      await expectAnsweredOnce(msgs.map((x) => x.msg));
      expect(fake.faulted.filter((f) => f.startsWith('upload ')).length).toBeGreaterThanOrEqual(2);
      expect(completes).toBeGreaterThanOrEqual(3);
    } finally {
      fake.uploadFault = undefined;
      fake.apiFault = undefined;
    }
  });

  it('an upload that keeps failing: the answer text is there, and a note says the image could not be attached', async () => {
    fake.uploadFault = () => 502;
    try {
      const { msg } = await mention('CU3', 'upload always fails');
      await fake.waitFor(() => textReplies(fake, 'CU3', msg.ts).some((r) => /could not attach/.test(r.text)), 60_000, 'the note');
      const texts = textReplies(fake, 'CU3', msg.ts).map((r) => r.text);
      expect(texts).toEqual([FINAL, '_I could not attach the image with the boxes._']);
      expect(fileReplies(fake, 'CU3', msg.ts)).toHaveLength(0);
    } finally {
      fake.uploadFault = undefined;
    }
  });

  it('logs no token, no signing secret, no file URL', () => {
    expectNoSecrets(logs, [fake.botToken, fake.appToken, fake.signingSecret]);
    expect(logs.join('\n')).not.toContain('/files-pri/');
  });
});
