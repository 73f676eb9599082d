// The Slack adapter end to end: the real Bolt app (HTTP mode, signatures verified) against the fake Slack on
// loopback, the real conversation manager and the demo model package (answers forced to a known grounded
// text through the real generator, so that the boxes are known).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager, createStore } from '../../src/conversation/index.js';
import { gridToPixels } from '../../src/grounding/parse.js';
import { startSlackAdapter, type SlackAdapter, type SlackConversationManager } from '../../adapters/slack/index.js';
import { FakeSlack } from './fake-slack.js';
import {
  FORCED,
  FORCED_BOX,
  fileReplies,
  noisePng,
  pixels,
  sha256,
  sleep,
  solidPng,
  squarePng,
  startSlack,
  startSlackSocket,
  textReplies,
  waitForAnswers,
  waitForText,
} from './helpers.js';

const ROOT = join(import.meta.dirname, '..', '..');
const MAX_FILE = 256 * 1024;
const BOX_COLOUR: [number, number, number] = [230, 25, 75]; // ANNOTATION_PALETTE[0]

let model: MiniGPT;
let manager: ConversationManager;
let fake: FakeSlack;
let adapter: SlackAdapter;
let png: Buffer;
let blue: Buffer;
const logs: string[] = [];
const others: Array<{ close(): Promise<void> }> = [];

function slackKey(channel: string, thread: string) {
  return { platform: 'slack' as const, workspace: fake.teamId, channel, thread };
}

/**
 * The real manager with its text deltas spaced `ms` apart: the answer then always spans several update
 * intervals, so the streamed edits the test asserts do not depend on how loaded the machine is.
 */
function paced(inner: ConversationManager, ms: number): SlackConversationManager {
  return {
    store: inner.store,
    history: (key) => inner.history(key),
    reset: (key) => inner.reset(key),
    forgetQuestion: (key, asked) => inner.forgetQuestion(key, asked),
    forgetWorkspace: (platform, workspace, channel) => inner.forgetWorkspace(platform, workspace, channel),
    async *handle(req) {
      for await (const ev of inner.handle(req)) {
        if (ev.type === 'text') await sleep(ms);
        yield ev;
      }
    },
  };
}

beforeAll(async () => {
  model = await MiniGPT.load(join(ROOT, 'models', 'demo'), { provider: 'cpu', forcedAnswer: FORCED });
  manager = new ConversationManager({ model, defaults: { maxNewTokens: 64 } });
  fake = await FakeSlack.start();
  adapter = await startSlack(fake, paced(manager, 40), { log: (l) => logs.push(l), updateIntervalMs: 30, maxFileBytes: MAX_FILE });
  png = await squarePng(200, 150);
  blue = await solidPng(64, 48, '#2040c0');
});

afterAll(async () => {
  if (process.env.SLACK_TEST_LOG_FILE) (await import('node:fs')).writeFileSync(process.env.SLACK_TEST_LOG_FILE, logs.join('\n'));
  await adapter?.close();
  for (const o of others.reverse()) await o.close().catch(() => {});
  await fake?.close();
  await manager?.close();
  await model?.close();
});

describe('slack: mentions', () => {
  it('answers a mention with an image in its thread: posted, edited to the final text, then the boxes uploaded', async () => {
    expect(adapter.mode).toBe('http');
    expect(adapter.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/slack\/events$/);
    const file = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const { msg, statuses } = await fake.mention('C1', { text: `<@${fake.botUserId}> [grounding] what is this?`, files: [file] });
    expect(statuses).toEqual([200, 200]);
    const [share] = await waitForAnswers(fake, 'C1', msg.ts, 1);

    // One text reply (app_mention and message were both delivered), in the mention's thread.
    const replies = textReplies(fake, 'C1', msg.ts);
    expect(replies).toHaveLength(1);
    const reply = replies[0];
    expect(reply.thread_ts).toBe(msg.ts);
    expect(reply.versions[0]).toBe('_Looking at the image…_');
    expect(reply.versions.length).toBeGreaterThanOrEqual(3); // status, streamed text, final
    expect(reply.versions.slice(1, -1).some((v) => v.endsWith(' …'))).toBe(true);
    expect(reply.text).toBe('*green square* on a grey background');
    const posts = fake.callsOf('chat.postMessage').filter((c) => c.args.channel === 'C1');
    expect(posts).toHaveLength(1);
    expect(posts[0].args.thread_ts).toBe(msg.ts);
    expect(fake.callsOf('chat.update').filter((c) => c.args.channel === 'C1').length).toBe(reply.versions.length - 1);

    // The file was fetched once, with the bot token.
    expect(fake.downloads.filter((d) => d.fileId === file.id)).toEqual([{ fileId: file.id, authorized: true }]);

    // files.uploadV2: getUploadURLExternal -> upload -> completeUploadExternal into the thread.
    const get = fake.callsOf('files.getUploadURLExternal').at(-1)!;
    const complete = fake.callsOf('files.completeUploadExternal').at(-1)!;
    expect(complete.args.channel_id).toBe('C1');
    expect(complete.args.thread_ts).toBe(msg.ts);
    expect(share.thread_ts).toBe(msg.ts);
    const uploaded = share.files![0];
    expect(uploaded.mimetype).toBe('image/png');
    expect(uploaded.data.byteLength).toBe(Number(get.args.length));

    // The box at the right pixels.
    const p = await pixels(uploaded.data);
    expect([p.width, p.height]).toEqual([200, 150]);
    const box = gridToPixels(FORCED_BOX, 200, 150);
    expect(box).toEqual({ left: 40, top: 30, width: 100, height: 75 });
    const midY = box.top + Math.floor(box.height / 2);
    const midX = box.left + Math.floor(box.width / 2);
    expect(p.at(box.left, midY)).toEqual(BOX_COLOUR); // left edge
    expect(p.at(box.left + box.width - 1, midY)).toEqual(BOX_COLOUR); // right edge
    expect(p.at(midX, box.top + box.height - 1)).toEqual(BOX_COLOUR); // bottom edge
    expect(p.at(box.left - 1, midY)).toEqual([128, 128, 128]); // outside: the grey background
    expect(p.at(box.left + box.width, midY)).toEqual([128, 128, 128]);
    expect(p.at(midX, midY)).toEqual([0x2a, 0x7f, 0x3a]); // inside: the green square

    // The conversation: keyed by the thread, with the image.
    const state = await manager.history(slackKey('C1', msg.ts));
    expect(state?.turns).toHaveLength(1);
    expect(state?.turns[0].task).toBe('grounding');
    expect(state?.turns[0].by).toBe('U0ALICE');
    expect(state?.image.hash).toBe(sha256(png));
  });

  it('follow-ups in the thread need no mention and keep the image; bots, link previews and deletions are ignored; a new image replaces it', async () => {
    const file = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const { msg } = await fake.mention('C2', { text: `<@${fake.botUserId}> describe`, files: [file] });
    await waitForAnswers(fake, 'C2', msg.ts, 1);

    // Not requests: another bot, a change that leaves the text as it was (a link preview; edits: edits.test.ts), a
    // deletion, a top-level message without mention, a bot_message.
    await fake.reply('C2', msg.ts, { user: 'U0OTHERBOT', bot_id: 'B0OTHER', text: 'I am a bot' });
    await fake.reply('C2', msg.ts, { user: 'U0ALICE', text: 'hello', subtype: 'bot_message', bot_id: 'B0OTHER' });
    await fake.sendEvent({
      type: 'message',
      subtype: 'message_changed',
      channel: 'C2',
      hidden: true,
      ts: fake.nextTs(),
      message: {
        type: 'message',
        user: 'U0ALICE',
        text: msg.text,
        ts: msg.ts,
        thread_ts: msg.ts,
        attachments: [{ title: 'a preview', from_url: 'https://example.com/' }],
      },
      previous_message: { type: 'message', user: 'U0ALICE', text: msg.text, ts: msg.ts, thread_ts: msg.ts },
    });
    await fake.sendEvent({
      type: 'message',
      subtype: 'message_deleted',
      channel: 'C2',
      hidden: true,
      ts: fake.nextTs(),
      deleted_ts: msg.ts,
      thread_ts: msg.ts,
    });
    const top = fake.addMessage('C2', { text: 'just chatting' });
    await fake.sendEvent(fake.messageEvent(top));

    // A follow-up without mention.
    const { msg: follow } = await fake.reply('C2', msg.ts, { user: 'U0BOB', text: 'and what colour is the background?' });
    await waitForAnswers(fake, 'C2', msg.ts, 2);
    await sleep(200);
    expect(textReplies(fake, 'C2', msg.ts)).toHaveLength(2);
    expect(textReplies(fake, 'C2', top.ts).filter((m) => m.thread_ts === top.ts)).toHaveLength(0);
    const state = await manager.history(slackKey('C2', msg.ts));
    expect(state?.turns.map((t) => t.by)).toEqual(['U0ALICE', 'U0BOB']);
    expect(state?.turns[1].user).toContain('what colour is the background?');
    expect(state?.image.hash).toBe(sha256(png));
    expect(fake.downloads.filter((d) => d.fileId === file.id)).toHaveLength(1);
    expect(follow.ts).not.toBe(msg.ts);

    // A new image in the thread replaces the conversation's image.
    const other = fake.addFile({ name: 'blue.png', data: blue, mimetype: 'image/png' });
    await fake.reply('C2', msg.ts, { text: 'what about this one?', files: [other] });
    await waitForAnswers(fake, 'C2', msg.ts, 3);
    const after = await manager.history(slackKey('C2', msg.ts));
    expect(after?.image.hash).toBe(sha256(blue));
    expect(after?.turns).toHaveLength(1);
  });

  it('a mention in a thread without a file uses the image posted earlier in that thread', async () => {
    const file = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const root = fake.addMessage('C2b', { user: 'U0BOB', text: 'my picture', files: [file] });
    await fake.sendEvent(fake.messageEvent(root)); // not for the bot: no mention, no bot thread
    await sleep(100);
    expect(fake.botMessages('C2b')).toHaveLength(0);
    const { msg } = await fake.mention('C2b', { text: `<@${fake.botUserId}> what is this?`, thread_ts: root.ts });
    await waitForAnswers(fake, 'C2b', root.ts, 1);
    expect(textReplies(fake, 'C2b', root.ts)[0].thread_ts).toBe(root.ts);
    expect(fake.callsOf('conversations.replies').some((c) => c.args.channel === 'C2b' && c.args.ts === root.ts)).toBe(true);
    const state = await manager.history(slackKey('C2b', root.ts));
    expect(state?.image.hash).toBe(sha256(png));
    expect(msg.thread_ts).toBe(root.ts);
  });

  it('a retried event (same event id, x-slack-retry-num) gets one answer', async () => {
    const file = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const msg = fake.addMessage('C3', { text: `<@${fake.botUserId}> hi`, files: [file] });
    const event = fake.messageEvent(msg, 'app_mention');
    const first = await fake.sendEvent(event, { eventId: 'EvRETRY00001' });
    const retries = await Promise.all([
      fake.sendEvent(event, { eventId: 'EvRETRY00001', retryNum: 1, retryReason: 'http_timeout' }),
      fake.sendEvent(event, { eventId: 'EvRETRY00001', retryNum: 2, retryReason: 'http_error' }),
    ]);
    expect([first, ...retries].map((r) => r.status)).toEqual([200, 200, 200]);
    await waitForAnswers(fake, 'C3', msg.ts, 1);
    await fake.sendEvent(event, { eventId: 'EvRETRY00001', retryNum: 3 });
    await sleep(300);
    expect(textReplies(fake, 'C3', msg.ts)).toHaveLength(1);
    expect(fileReplies(fake, 'C3', msg.ts)).toHaveLength(1);
    expect(logs.some((l) => /event EvRETRY00001 \(app_mention\) already handled \(retry \d, http_/.test(l))).toBe(true);
  });

  it('rejects requests with a bad signature or an old timestamp', async () => {
    const file = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const msg = fake.addMessage('C5', { text: `<@${fake.botUserId}> hi`, files: [file] });
    const bad = await fake.sendEvent(fake.messageEvent(msg, 'app_mention'), { secret: 'not-the-signing-secret' });
    expect(bad.status).toBe(401);
    const old = await fake.sendEvent(fake.messageEvent(msg, 'app_mention'), { timestamp: Math.floor(Date.now() / 1000) - 3600 });
    expect(old.status).toBe(401);
    const cmd = await fake.sendCommand({ text: 'hi', channel: 'C5' }, { secret: 'nope' });
    expect(cmd.status).toBe(401);
    await sleep(300);
    expect(fake.botMessages('C5')).toHaveLength(0);
    expect(fake.ephemerals.filter((e) => e.channel === 'C5')).toHaveLength(0);
    expect(fake.downloads.filter((d) => d.fileId === file.id)).toHaveLength(0);
  });
});

describe('slack: bad input gets a clear reply', () => {
  it('a file that is not an image', async () => {
    const pdf = fake.addFile({
      name: 'report.pdf',
      data: Buffer.from('%PDF-1.4 not an image'),
      mimetype: 'application/pdf',
      filetype: 'pdf',
    });
    const { msg } = await fake.mention('C6', { text: `<@${fake.botUserId}> what is this?`, files: [pdf] });
    const reply = await waitForText(fake, 'C6', msg.ts, /not an image/);
    expect(reply.thread_ts).toBe(msg.ts);
    expect(reply.text).toBe(':warning: That file (report.pdf, PDF) is not an image. Attach a PNG, JPEG, WebP or GIF image and ask again.');
    expect(fake.downloads.filter((d) => d.fileId === pdf.id)).toHaveLength(0);
    await sleep(100);
    expect(textReplies(fake, 'C6', msg.ts)).toHaveLength(1);
  });

  it('image bytes that do not decode', async () => {
    const broken = fake.addFile({ name: 'broken.png', data: Buffer.from('this is not really a png'), mimetype: 'image/png' });
    const { msg } = await fake.mention('C6b', { files: [broken] });
    const reply = await waitForText(fake, 'C6b', msg.ts, /:warning:/);
    expect(reply.text).toMatch(/not an image|unsupported image format|could not be decoded/i);
  });

  it('a mention without an image in a new thread', async () => {
    const { msg } = await fake.mention('C6c', { text: `<@${fake.botUserId}> hello there` });
    const reply = await waitForText(fake, 'C6c', msg.ts, /:warning:/);
    expect(reply.text).toMatch(/no image in this conversation yet/);
  });

  it('too large (by its size, and by its bytes when the size was wrong)', async () => {
    const big = await noisePng(400, 300); // ~360 KB
    expect(big.byteLength).toBeGreaterThan(MAX_FILE);
    const f1 = fake.addFile({ name: 'big.png', data: big, mimetype: 'image/png' });
    const { msg: m1 } = await fake.mention('C7', { files: [f1] });
    const r1 = await waitForText(fake, 'C7', m1.ts, /too large/);
    expect(r1.text).toMatch(/The image big\.png is too large \(\d+\.\d KB; the limit is 256\.0 KB\)/);
    expect(fake.downloads.filter((d) => d.fileId === f1.id)).toHaveLength(0);

    // The size in the metadata is wrong: the content-length tells, or (chunked) the bytes do.
    const f2 = fake.addFile({ name: 'liar.png', data: big, mimetype: 'image/png', size: 1000 });
    const { msg: m2 } = await fake.mention('C7', { files: [f2] });
    const r2 = await waitForText(fake, 'C7', m2.ts, /too large/);
    expect(r2.text).toMatch(/liar\.png is too large \(\d+\.\d KB; the limit is 256\.0 KB\)/);
    const f3 = fake.addFile({ name: 'chunked.png', data: big, mimetype: 'image/png', size: 1000, chunked: true });
    const { msg: m3 } = await fake.mention('C7', { files: [f3] });
    const r3 = await waitForText(fake, 'C7', m3.ts, /too large/);
    expect(r3.text).toBe(':warning: The image chunked.png is too large (the limit is 256.0 KB).');
  });

  it("a file stored outside Slack is not downloaded (the token goes to Slack's file hosts only)", async () => {
    const f = fake.addFile({ name: 'elsewhere.png', data: png, mimetype: 'image/png', url: 'https://files.example.com/elsewhere.png' });
    const before = fake.requests.length;
    const { msg } = await fake.mention('C8', { files: [f] });
    const reply = await waitForText(fake, 'C8', msg.ts, /stored elsewhere/);
    expect(reply.text).toContain('I can only download files stored by Slack');
    expect(fake.requests.slice(before).some((r) => r.includes('files-pri'))).toBe(false);
  });

  it('a download refused for lack of the files:read scope', async () => {
    fake.scopes.delete('files:read');
    try {
      const f = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
      const { msg } = await fake.mention('C9', { files: [f] });
      const reply = await waitForText(fake, 'C9', msg.ts, /files:read/);
      expect(reply.text).toContain('the app needs the `files:read` scope');
      expect(fake.downloads.filter((d) => d.fileId === f.id)).toEqual([{ fileId: f.id, authorized: false }]);
      // Only the id in the event: files.info says missing_scope.
      const g = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
      const msg2 = fake.addMessage('C9', { text: `<@${fake.botUserId}>` });
      await fake.sendEvent({
        ...fake.messageEvent(msg2, 'app_mention'),
        files: [{ id: g.id, mode: 'file_access', file_access: 'check_file_info' }],
      });
      await waitForText(fake, 'C9', msg2.ts, /files:read/);
    } finally {
      fake.scopes.add('files:read');
    }
  });

  it('a file given by id only is looked up with files.info and answered', async () => {
    const g = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const msg = fake.addMessage('C9b', { text: `<@${fake.botUserId}>` });
    await fake.sendEvent({
      ...fake.messageEvent(msg, 'app_mention'),
      files: [{ id: g.id, mode: 'file_access', file_access: 'check_file_info' }],
    });
    await waitForAnswers(fake, 'C9b', msg.ts, 1);
    expect(fake.callsOf('files.info').some((c) => c.args.file === g.id)).toBe(true);
  });

  it('one failing event does not stop the app', async () => {
    fake.brokenChannels.add('C10');
    const f = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    await fake.mention('C10', { files: [f] });
    // Junk the app cannot use.
    await fake.sendEvent({ type: 'app_mention', channel: 'C10', user: 'U0ALICE', ts: fake.nextTs(), files: 'nonsense', text: 42 });
    await fake.sendEvent({ type: 'app_mention' });
    await fake.waitFor(
      () => logs.some((l) => /mention in C10 thread [\d.]+: could not post the reply: channel_not_found/.test(l)),
      5000,
      'the failure log',
    );
    const g = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const { msg } = await fake.mention('C10b', { files: [g] });
    await waitForAnswers(fake, 'C10b', msg.ts, 1);
  });
});

describe('slack: /describe and the message shortcut', () => {
  it("/describe acks at once and answers about the channel's newest image in a new thread", async () => {
    const old = fake.addFile({ name: 'old-blue.png', data: blue, mimetype: 'image/png' });
    fake.addMessage('C4', { text: 'an old picture', files: [old] });
    const recent = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    fake.addMessage('C4', { text: 'a newer picture', files: [recent] });
    const doc = fake.addFile({ name: 'notes.txt', data: Buffer.from('hello'), mimetype: 'text/plain', filetype: 'text' });
    fake.addMessage('C4', { text: 'some notes', files: [doc] });
    fake.addMessage('C4', { text: 'just text, the newest message' });

    const res = await fake.sendCommand({ text: '[grounding] what is in the picture?', channel: 'C4' });
    expect(res.status).toBe(200);
    expect(res.ms).toBeLessThan(3000);
    const root = await fake.waitFor(() => textReplies(fake, 'C4').find((m) => !m.thread_ts), 20_000, 'the /describe answer');
    await waitForAnswers(fake, 'C4', root.ts, 1);
    expect(root.text).toBe('<@U0ALICE> asked: [grounding] what is in the picture?\n*green square* on a grey background');
    const state = await manager.history(slackKey('C4', root.ts));
    expect(state?.image.hash).toBe(sha256(png));
    expect(state?.turns[0].task).toBe('grounding');
    expect(state?.turns[0].user).toBe('[grounding] what is in the picture?');

    // The answer is a thread for follow-ups.
    await fake.reply('C4', root.ts, { text: 'thanks, and the background?' });
    await waitForAnswers(fake, 'C4', root.ts, 2);
    expect((await manager.history(slackKey('C4', root.ts)))?.turns).toHaveLength(2);
  });

  it('/describe with a link to a file uses that file', async () => {
    const f = fake.addFile({ name: 'blue.png', data: blue, mimetype: 'image/png' });
    fake.addMessage('C4b', { text: 'newest', files: [fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' })] });
    await fake.sendCommand({ text: `caption ${f.permalink}`, channel: 'C4b' });
    const root = await fake.waitFor(() => textReplies(fake, 'C4b').find((m) => !m.thread_ts), 20_000, 'the answer');
    await waitForAnswers(fake, 'C4b', root.ts, 1);
    expect(root.text.split('\n')[0]).toBe('<@U0ALICE> asked: [caption]');
    const state = await manager.history(slackKey('C4b', root.ts));
    expect(state?.image.hash).toBe(sha256(blue));
    expect(state?.turns[0].task).toBe('caption');
  });

  it('/describe errors go back as ephemeral messages', async () => {
    fake.addMessage('C4c', { text: 'no pictures here' });
    await fake.sendCommand({ text: 'what is this', channel: 'C4c', user: 'U0CAROL' });
    const e1 = await fake.waitFor(() => fake.ephemerals.find((e) => e.channel === 'C4c'), 5000, 'an ephemeral');
    expect(e1.user).toBe('U0CAROL');
    expect(e1.text).toMatch(/I found no image in the last 100 messages of this channel/);

    fake.foreignChannels.add('C4d');
    await fake.sendCommand({ text: 'what is this', channel: 'C4d' });
    const e2 = await fake.waitFor(() => fake.ephemerals.find((e) => e.channel === 'C4d'), 5000, 'an ephemeral');
    expect(e2.text).toContain('invite me first (`/invite @minigpt`)');

    const pdf = fake.addFile({ name: 'a.pdf', data: Buffer.from('%PDF'), mimetype: 'application/pdf', filetype: 'pdf' });
    await fake.sendCommand({ text: pdf.permalink, channel: 'C4e' });
    const e3 = await fake.waitFor(() => fake.ephemerals.find((e) => e.channel === 'C4e'), 5000, 'an ephemeral');
    expect(e3.text).toContain('is not an image');
    expect(fake.botMessages('C4c').length + fake.botMessages('C4d').length + fake.botMessages('C4e').length).toBe(0);
  });

  it('the "Describe image" shortcut answers in the message\'s thread', async () => {
    const f = fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const msg = fake.addMessage('C11', { user: 'U0BOB', text: 'look at this', files: [f] });
    const res = await fake.sendShortcut(msg, { user: 'U0CAROL' });
    expect(res.status).toBe(200);
    await waitForAnswers(fake, 'C11', msg.ts, 1);
    const [reply] = textReplies(fake, 'C11', msg.ts);
    expect(reply.thread_ts).toBe(msg.ts);
    expect(reply.text).toBe('<@U0CAROL> asked me to describe this image:\n*green square* on a grey background');
    const state = await manager.history(slackKey('C11', msg.ts));
    expect(state?.turns[0].by).toBe('U0CAROL');

    const plain = fake.addMessage('C11', { text: 'no image' });
    await fake.sendShortcut(plain);
    const e = await fake.waitFor(() => fake.ephemerals.find((x) => x.channel === 'C11'), 5000, 'an ephemeral');
    expect(e.text).toBe('That message has no image to describe.');
  });
});

describe('slack: more adapters on their own fakes', () => {
  it('a restart (another worker answers again) replaces the streamed text in the same reply', async () => {
    const f2 = await FakeSlack.start();
    others.push(f2);
    const old = 'the first worker had written this much';
    const fresh = 'a different answer from the worker that took over';
    const scripted: SlackConversationManager = {
      store: manager.store,
      history: async () => null,
      reset: async () => 'forgotten' as const,
      forgetQuestion: async () => 'not_asked' as const,
      forgetWorkspace: async () => 0,
      async *handle() {
        yield { type: 'queued', position: 0 };
        yield { type: 'started' };
        for (const w of old.split(' ')) {
          await sleep(25);
          yield { type: 'text', text: `${w} ` };
        }
        yield { type: 'restart' };
        for (const w of fresh.split(' ')) {
          await sleep(25);
          yield { type: 'text', text: `${w} ` };
        }
        yield { type: 'final', text: fresh, entities: [], finishReason: 'stop' };
        yield { type: 'timings', timings: {} };
      },
    };
    const a2 = await startSlack(f2, scripted, { log: (l) => logs.push(l), updateIntervalMs: 20 });
    others.push(a2);
    const file = f2.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const { msg } = await f2.mention('CR', { files: [file] });
    await waitForText(f2, 'CR', msg.ts, /^a different answer from the worker that took over$/);
    const replies = textReplies(f2, 'CR', msg.ts);
    expect(replies).toHaveLength(1);
    expect(replies[0].text).toBe(fresh);
    expect(replies[0].versions.some((v) => v.startsWith('the first worker'))).toBe(true); // it was shown, then replaced
    expect(replies[0].versions.every((v) => !v.includes('much a different'))).toBe(true); // never appended to
  });

  it('splits a long answer into several messages within the limit', async () => {
    const f2 = await FakeSlack.start();
    others.push(f2);
    const a2 = await startSlack(f2, manager, { log: (l) => logs.push(l), updateIntervalMs: 10, maxMessageChars: 24 });
    others.push(a2);
    const file = f2.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const { msg } = await f2.mention('CS', { files: [file] });
    await waitForAnswers(f2, 'CS', msg.ts, 1);
    const parts = textReplies(f2, 'CS', msg.ts);
    expect(parts.length).toBeGreaterThanOrEqual(2);
    for (const p of parts) {
      expect(p.thread_ts).toBe(msg.ts);
      expect(p.text.length).toBeLessThanOrEqual(24);
    }
    expect(parts.map((p) => p.text).join(' ')).toBe('*green square* on a grey background');
  });

  it('remembers handled events across a restart when the store persists (sqlite)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'minigpt-slack-'));
    try {
      const f3 = await FakeSlack.start();
      others.push(f3);
      const start = (store: Awaited<ReturnType<typeof createStore>>) =>
        startSlack(f3, manager, { store, log: (l) => logs.push(l), updateIntervalMs: 10 });
      const url = `sqlite://${join(dir, 'bot.sqlite')}`;
      const s1 = await createStore(url);
      const a1 = await start(s1);
      const file = f3.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
      const msg = f3.addMessage('CP', { text: `<@${f3.botUserId}>`, files: [file] });
      const event = f3.messageEvent(msg, 'app_mention');
      await f3.sendEvent(event, { eventId: 'EvPERSIST0001' });
      await waitForAnswers(f3, 'CP', msg.ts, 1);
      await a1.close();
      await s1.disconnect();

      const s2 = await createStore(url);
      const a2 = await start(s2);
      try {
        await f3.sendEvent(event, { eventId: 'EvPERSIST0001', retryNum: 1, retryReason: 'http_timeout' });
        // the message itself (a second delivery under another event id) is remembered too
        await f3.sendEvent(f3.messageEvent(msg, 'app_mention'));
        const other = f3.addMessage('CP', { text: `<@${f3.botUserId}>`, files: [file] });
        await f3.sendEvent(f3.messageEvent(other, 'app_mention'));
        await waitForAnswers(f3, 'CP', other.ts, 1);
        await sleep(200);
        expect(textReplies(f3, 'CP', msg.ts)).toHaveLength(1);
      } finally {
        await a2.close();
        await s2.disconnect();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('Socket Mode: connects with the app token and answers events sent over the socket', async () => {
    const f4 = await FakeSlack.start();
    others.push(f4);
    f4.transport = 'socket';
    const a4 = await startSlackSocket(f4, manager, { log: (l) => logs.push(l), updateIntervalMs: 10 });
    others.push(a4);
    expect(a4.mode).toBe('socket');
    expect(a4.url).toBeUndefined();
    await f4.waitFor(() => f4.socketConnected, 5000, 'the socket');
    const file = f4.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const { msg } = await f4.mention('CW', { files: [file] });
    await waitForAnswers(f4, 'CW', msg.ts, 1);
    expect(textReplies(f4, 'CW', msg.ts)).toHaveLength(1);
    expect(textReplies(f4, 'CW', msg.ts)[0].text).toBe('*green square* on a grey background');
  });

  it('refuses to start with a bad token or without a signing secret / app token', async () => {
    await expect(
      startSlackAdapter({
        manager,
        botToken: 'xoxb-wrong-token',
        signingSecret: fake.signingSecret,
        port: 0,
        host: '127.0.0.1',
        apiUrl: fake.apiUrl,
        log: (l) => logs.push(l),
      }),
    ).rejects.toThrow(/Slack refused SLACK_BOT_TOKEN \(auth\.test: invalid_auth\)/);
    await expect(startSlackAdapter({ manager, botToken: fake.botToken, apiUrl: fake.apiUrl })).rejects.toThrow(
      /neither SLACK_SIGNING_SECRET .* nor SLACK_APP_TOKEN/,
    );
  });
});

describe('slack: logs', () => {
  it('never contain tokens, the signing secret or file URLs', () => {
    expect(logs.length).toBeGreaterThan(10);
    const all = logs.join('\n');
    for (const secret of [fake.botToken, fake.appToken, fake.signingSecret]) expect(all).not.toContain(secret);
    expect(all).not.toMatch(/xox[bp]-\d/);
    expect(all).not.toMatch(/xapp-\d/);
    expect(all).not.toContain('/files-pri/');
  });
});
