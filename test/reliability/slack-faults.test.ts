// Faults on the Slack side (issue 9): Socket Mode connections that drop or are refreshed while answers are in
// flight, Web API 429s with retry-after, and 5xx answers on the file upload. The real Bolt app against the fake
// Slack, the real conversation manager and the demo model; every request gets exactly one answer in its own
// thread, late perhaps, never lost and never doubled.
import { beforeAll, describe, expect, it } from 'vitest';
import { startSlackAdapter } from '../../adapters/slack/index.js';
import type { FakeMessage } from '../slack/fake-slack.js';
import { FORCED, fileReplies, squarePng, textReplies, useSlackStack } from '../slack/helpers.js';
import { expectNoSecrets, until } from './helpers.js';

const FINAL = '*green square* on a grey background';

const s = useSlackStack(FORCED, {
  threads: 1,
  defaults: { maxNewTokens: 64, temperature: 0 },
  // Socket Mode: the faults here are the socket's (drops, refreshes) besides the Web API's.
  async adapter(fake, manager, log) {
    fake.transport = 'socket';
    fake.socketAckTimeoutMs = 1500;
    const adapter = await startSlackAdapter({
      manager,
      botToken: fake.botToken,
      appToken: fake.appToken,
      apiUrl: fake.apiUrl,
      log,
      updateIntervalMs: 30,
      rateLimit: false,
    });
    await fake.waitFor(() => fake.socketConnected, 5000, 'the socket');
    return adapter;
  },
});
const { logs } = s;
let png: Buffer;

beforeAll(async () => {
  png = await squarePng(64, 48);
});

function mention(channel: string, text: string): Promise<{ msg: FakeMessage }> {
  const file = s.fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
  return s.fake.mention(channel, { text: `<@${s.fake.botUserId}> ${text}`, files: [file] });
}

/** One final answer (text + annotated image) in each message's thread, and nothing more after a settle. */
async function expectAnsweredOnce(msgs: readonly FakeMessage[]): Promise<void> {
  for (const m of msgs) {
    await s.fake.waitFor(
      () => fileReplies(s.fake, m.channel, m.ts).length >= 1 && textReplies(s.fake, m.channel, m.ts).some((r) => r.text === FINAL),
      60_000,
      `the answer in thread ${m.ts}`,
    );
  }
  await new Promise((r) => setTimeout(r, 500));
  for (const m of msgs) {
    expect(
      textReplies(s.fake, m.channel, m.ts).map((r) => r.text),
      `text replies in ${m.ts}`,
    ).toEqual([FINAL]);
    expect(fileReplies(s.fake, m.channel, m.ts), `image replies in ${m.ts}`).toHaveLength(1);
  }
}

describe('Slack Socket Mode reconnects', () => {
  // ('close' with a close frame behaves as 'terminate'; each reconnect costs the client's 5 s back-off)
  for (const how of ['terminate', 'refresh'] as const) {
    it(`${how}: answers in flight are delivered, events sent meanwhile arrive after the reconnect, once each`, async () => {
      const connections = s.fake.socketStats.connections;
      const first = await Promise.all(Array.from({ length: 4 }, (_, i) => mention(i % 2 ? 'CA' : 'CB', `before ${how} #${i}`)));
      await until(() => first.some(({ msg }) => textReplies(s.fake, msg.channel, msg.ts).length > 0), 'the first reply');
      s.fake.dropSocket(how);
      // Users go on writing: Slack holds the envelopes (and redelivers unacknowledged ones) until the app is back.
      const during = Promise.all(Array.from({ length: 3 }, (_, i) => mention('CA', `during ${how} #${i}`)));
      await until(() => s.fake.socketStats.connections > connections && s.fake.socketConnected, 'a new Socket Mode connection', 30_000);
      const after = await mention('CB', `after ${how}`);
      await expectAnsweredOnce([...first.map((x) => x.msg), ...(await during).map((x) => x.msg), after.msg]);
    });
  }

  it('an envelope delivered twice (retry after a lost ack) is answered once', async () => {
    const file = s.fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const msg = s.fake.addMessage('CD', { text: `<@${s.fake.botUserId}> twice`, files: [file] });
    const event = s.fake.messageEvent(msg, 'app_mention');
    await s.fake.sendEvent(event, { eventId: 'EvTWICE0001' });
    await s.fake.sendEvent(event, { eventId: 'EvTWICE0001', retryNum: 1, retryReason: 'timeout' });
    await expectAnsweredOnce([msg]);
  });
});

describe('Slack Web API faults', () => {
  it('429 with retry-after on chat.postMessage and chat.update: answers arrive after the wait, once each', async () => {
    const seen = new Map<string, number>();
    let limited = 0;
    s.fake.apiFault = (method, args) => {
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
      s.fake.apiFault = undefined;
    }
  });

  it('5xx on the upload URL and on files.completeUploadExternal: retried, one image each', async () => {
    const uploads = new Map<string, number>();
    let completes = 0;
    s.fake.uploadFault = (id) => {
      const n = (uploads.get(id) ?? 0) + 1;
      uploads.set(id, n);
      return n === 1 ? 503 : undefined;
    };
    s.fake.apiFault = (method) =>
      method === 'files.completeUploadExternal' && completes++ === 0 ? { status: 500, body: 'oops' } : undefined;
    try {
      const msgs = await Promise.all(['CU1', 'CU2'].map((c) => mention(c, 'upload fails once')));
      await expectAnsweredOnce(msgs.map((x) => x.msg));
      expect(s.fake.faulted.filter((f) => f.startsWith('upload ')).length).toBeGreaterThanOrEqual(2);
      expect(completes).toBeGreaterThanOrEqual(3);
    } finally {
      s.fake.uploadFault = undefined;
      s.fake.apiFault = undefined;
    }
  });

  it('an upload that keeps failing: the answer text is there, and a note says the image could not be attached', async () => {
    s.fake.uploadFault = () => 502;
    try {
      const { msg } = await mention('CU3', 'upload always fails');
      await s.fake.waitFor(() => textReplies(s.fake, 'CU3', msg.ts).some((r) => /could not attach/.test(r.text)), 60_000, 'the note');
      const texts = textReplies(s.fake, 'CU3', msg.ts).map((r) => r.text);
      expect(texts).toEqual([FINAL, '_I could not attach the image with the boxes._']);
      expect(fileReplies(s.fake, 'CU3', msg.ts)).toHaveLength(0);
    } finally {
      s.fake.uploadFault = undefined;
    }
  });

  it('logs no token, no signing secret, no file URL', () => {
    expectNoSecrets(logs, [s.fake.botToken, s.fake.appToken, s.fake.signingSecret]);
    expect(logs.join('\n')).not.toContain('/files-pri/');
  });
});
