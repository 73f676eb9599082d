// The Discord adapter end to end: the real discord.js client against the fake Discord (REST, gateway, CDN on
// loopback), the real ConversationManager and the demo model package, whose answer is forced (through the
// real decoder and streaming) to a grounded answer with one box.
import { describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { gridToPixels } from '../../src/grounding/parse.js';
import { ANNOTATION_PALETTE, boxLineWidth } from '../../src/image/annotate.js';
import type { ApiMessage, RestCall } from './fake-discord.js';
import { answered, describeCommand, describeImageCommand, pixel, startAdapter, testPng, until, useStack } from './helpers.js';

const FORCED = '<p>red square</p> {<20><20><70><70>} on a grey background';
const FINAL = '**red square** on a grey background';
const BOX = { x1: 20, y1: 20, x2: 70, y2: 70 };
const RED = ANNOTATION_PALETTE[0];
const GREY: [number, number, number] = [0x88, 0x88, 0x88];
const SQUARE: [number, number, number] = [0xdd, 0x22, 0x22];

const s = useStack(FORCED);
const { logs } = s;

const botMessagesIn = (channelId: string): ApiMessage[] => s.fake.messagesIn(channelId).filter((m) => m.author.id === s.fake.bot.id);
const uploadsTo = (calls: RestCall[], pathRe: RegExp) => calls.filter((c) => pathRe.test(c.path) && c.files.length > 0);
const near = (a: readonly number[], b: readonly number[]) => a.every((v, i) => Math.abs(v - b[i]) <= 3);

/** The box of FORCED drawn on an image of that size: its edges red, its inside and outside not. */
async function expectBoxDrawn(png: Buffer, width: number, height: number, inside: readonly number[]): Promise<void> {
  const meta = await sharp(png).metadata();
  expect(meta.format).toBe('png');
  expect([meta.width, meta.height]).toEqual([width, height]);
  const b = gridToPixels(BOX, width, height);
  const t = boxLineWidth(width, height);
  const midY = b.top + (b.height >> 1);
  const midX = b.left + (b.width >> 1);
  for (let k = 0; k < t; k++) {
    expect(near(await pixel(png, b.left + k, midY), RED), `left edge +${k}`).toBe(true);
    expect(near(await pixel(png, b.left + b.width - 1 - k, midY), RED), `right edge -${k}`).toBe(true);
    expect(near(await pixel(png, midX, b.top + b.height - 1 - k), RED), `bottom edge -${k}`).toBe(true);
  }
  expect(near(await pixel(png, b.left - 1, midY), GREY), 'left of the box').toBe(true);
  expect(near(await pixel(png, b.left + b.width, midY), GREY), 'right of the box').toBe(true);
  expect(near(await pixel(png, midX, b.top + b.height), GREY), 'below the box').toBe(true);
  expect(near(await pixel(png, midX, midY), inside), 'inside the box').toBe(true);
}

describe('an @mention with an image in a channel', () => {
  let userMsg: ApiMessage;
  let threadId: string;
  let before: number;

  it('starts a thread on the message, types, streams the reply and attaches the PNG with the box at the right pixels', async () => {
    const png = await testPng(200, 150);
    const att = s.fake.addAttachment('photo.png', png, 'image/png', { width: 200, height: 150 });
    before = s.fake.calls.length;
    userMsg = s.fake.postMessage(s.w.general, s.w.alice, '  what is in   this picture? ', { attachments: [att], mentionBot: true });
    const line = await answered(logs, userMsg.id);
    expect(line).toMatch(/answered \(\d+ chars, annotated image\)/);
    const calls = s.fake.calls.slice(before);

    // The image came from the CDN.
    expect(s.fake.cdnHits.some((h) => att.url.includes(h.path))).toBe(true);
    // A thread on the user's message, named after the prompt (mention removed, spaces tidied).
    const threadCalls = calls.filter((c) => c.method === 'POST' && c.path === `/channels/${s.w.general}/messages/${userMsg.id}/threads`);
    expect(threadCalls).toHaveLength(1);
    expect(threadCalls[0].body.name).toBe('what is in this picture?');
    threadId = userMsg.id;
    expect(s.fake.channel(threadId)).toMatchObject({ type: 11, parent_id: s.w.general, owner_id: s.fake.bot.id });
    // Typing in the thread before the answer.
    const typing = calls.findIndex((c) => c.path === `/channels/${threadId}/typing`);
    const firstPost = calls.findIndex((c) => c.method === 'POST' && c.path === `/channels/${threadId}/messages`);
    expect(typing).toBeGreaterThanOrEqual(0);
    expect(firstPost).toBeGreaterThan(typing);
    // Nothing was posted in the channel itself.
    expect(calls.filter((c) => c.method === 'POST' && c.path === `/channels/${s.w.general}/messages`)).toHaveLength(0);

    // One reply in the thread, created once and edited to the final text; nobody can be pinged.
    const replies = botMessagesIn(threadId);
    expect(replies).toHaveLength(1);
    const reply = replies[0];
    expect(reply.content).toBe(FINAL);
    const writes = calls.filter((c) => c.path.startsWith(`/channels/${threadId}/messages`) && c.method !== 'GET');
    expect(writes[0].method).toBe('POST');
    expect(writes.slice(1).every((c) => c.method === 'PATCH' && c.path === `/channels/${threadId}/messages/${reply.id}`)).toBe(true);
    for (const c of writes) expect(c.body.allowed_mentions).toEqual({ parse: [], replied_user: false });
    // Streamed: the first write came before the answer was complete.
    expect(writes[0].body.content).not.toBe(FINAL);

    // The annotated PNG: uploaded with the final edit, box edges in the phrase colour exactly where the box is.
    const uploads = uploadsTo(calls, new RegExp(`^/channels/${threadId}/messages`));
    expect(uploads).toHaveLength(1);
    expect(uploads[0].body.content).toBe(FINAL);
    expect(uploads[0].files[0].filename).toBe('answer-boxes.png');
    expect(uploads[0].files[0].contentType).toBe('image/png');
    expect(reply.attachments).toHaveLength(1);
    await expectBoxDrawn(uploads[0].files[0].data, 200, 150, SQUARE);

    // The conversation is the thread's.
    const state = await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.general, thread: threadId });
    expect(state?.turns).toHaveLength(1);
    expect(state?.turns[0]).toMatchObject({ by: s.w.alice.id, task: 'chat', user: 'what is in this picture?' });
    expect(state?.image).toMatchObject({ width: 200, height: 150 });
  });

  it('answers every message in its thread as a follow-up (no mention) with the image and history kept', async () => {
    before = s.fake.calls.length;
    const follow = s.fake.postMessage(threadId, s.w.alice, 'and what colour is the background?');
    await answered(logs, follow.id);
    const calls = s.fake.calls.slice(before);
    expect(calls.filter((c) => c.path.endsWith('/threads'))).toHaveLength(0);
    expect(s.fake.cdnHits.filter((h) => h.at >= calls[0].at)).toHaveLength(0); // nothing downloaded
    const replies = botMessagesIn(threadId);
    expect(replies).toHaveLength(2);
    expect(replies[1].content).toBe(FINAL);
    const uploads = uploadsTo(calls, new RegExp(`^/channels/${threadId}/messages`));
    expect(uploads).toHaveLength(1);
    await expectBoxDrawn(uploads[0].files[0].data, 200, 150, SQUARE); // drawn on the thread's image
    const state = await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.general, thread: threadId });
    expect(state?.turns.map((t) => t.user)).toEqual(['what is in this picture?', 'and what colour is the background?']);
  });

  it('replaces the image when a new one is posted in the thread; an image alone asks for a caption', async () => {
    const png = await testPng(160, 120, '#888888');
    const att = s.fake.addAttachment('second.webp.png', png, 'image/png');
    before = s.fake.calls.length;
    const msg = s.fake.postMessage(threadId, s.w.alice, '', { attachments: [att] });
    await answered(logs, msg.id);
    const uploads = uploadsTo(s.fake.calls.slice(before), new RegExp(`^/channels/${threadId}/messages`));
    expect(uploads).toHaveLength(1);
    await expectBoxDrawn(uploads[0].files[0].data, 160, 120, SQUARE);
    const state = await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.general, thread: threadId });
    expect(state?.image).toMatchObject({ width: 160, height: 120 });
    expect(state?.turns).toHaveLength(1);
    expect(state?.turns[0].task).toBe('caption');
    expect(state?.turns[0].user).toMatch(/^\[caption\] /);
  });

  it('ignores messages in channels that do not mention it, and other bots', async () => {
    before = s.fake.calls.length;
    const png = await testPng();
    s.fake.postMessage(s.w.general, s.w.alice, 'just chatting', { attachments: [s.fake.addAttachment('a.png', png, 'image/png')] });
    s.fake.postMessage(threadId, { ...s.fake.user('otherbot'), bot: true }, 'I am another bot');
    // A marker message that is answered proves the two above were processed (events are handled in order).
    const marker = s.fake.postMessage(s.w.general, s.w.alice, 'hello', { mentionBot: true });
    await until(
      () => s.fake.messagesIn(s.w.general).some((m) => m.author.id === s.fake.bot.id && m.message_reference?.message_id === marker.id),
      'the help reply',
    );
    const calls = s.fake.calls.slice(before);
    expect(calls.filter((c) => c.method !== 'GET').map((c) => `${c.method} ${c.path}`)).toEqual([`POST /channels/${s.w.general}/messages`]);
    const help = botMessagesIn(s.w.general).at(-1)!;
    expect(help.content).toMatch(/Attach an image/);
  });
});

describe('image formats', () => {
  it('reads the first frame of an animated GIF, and JPEG and WebP images', async () => {
    const first = await testPng(200, 150);
    const second = await sharp({ create: { width: 200, height: 150, channels: 3, background: '#2222dd' } })
      .png()
      .toBuffer();
    const gif = await sharp([first, second], { join: { animated: true } })
      .gif()
      .toBuffer();
    expect((await sharp(gif).metadata()).pages).toBe(2);
    const m = s.fake.postMessage(s.w.general, s.w.alice, 'animated', {
      attachments: [s.fake.addAttachment('anim.gif', gif, 'image/gif')],
      mentionBot: true,
    });
    await answered(logs, m.id);
    const upload = s.fake.calls.filter((c) => c.path.startsWith(`/channels/${m.id}/messages`) && c.files.length > 0);
    expect(upload).toHaveLength(1);
    await expectBoxDrawn(upload[0].files[0].data, 200, 150, SQUARE); // the first frame, not the blue one
    for (const [name, data, mime] of [
      ['p.jpg', await sharp(first).jpeg({ quality: 95 }).toBuffer(), 'image/jpeg'],
      ['p.webp', await sharp(first).webp({ lossless: true }).toBuffer(), 'image/png'],
    ] as const) {
      const msg = s.fake.postMessage(s.w.general, s.w.alice, name, {
        attachments: [s.fake.addAttachment(name, data, name.endsWith('jpg') ? 'image/jpeg' : 'image/webp')],
        mentionBot: true,
      });
      expect(await answered(logs, msg.id)).toMatch(/annotated image/);
      const up = s.fake.calls.filter((c) => c.path.startsWith(`/channels/${msg.id}/messages`) && c.files.length > 0)[0];
      expect(up.files[0].contentType).toBe(mime);
      const meta = await sharp(up.files[0].data).metadata();
      expect([meta.width, meta.height]).toEqual([200, 150]);
    }
  });
});

describe('a bad attachment', () => {
  it('gets a short clear reply, no thread, and the bot goes on answering', async () => {
    const before = s.fake.calls.length;
    const txt = s.fake.addAttachment('notes.txt', Buffer.from('hello, not an image'), 'text/plain; charset=utf-8');
    const bad = s.fake.postMessage(s.w.general, s.w.bob, 'what is this?', { attachments: [txt], mentionBot: true });
    await until(
      () => botMessagesIn(s.w.general).some((m) => m.message_reference?.message_id === bad.id),
      `the error reply ${logs.join('\n')}`,
      5000,
    );
    const reply = botMessagesIn(s.w.general).find((m) => m.message_reference?.message_id === bad.id)!;
    expect(reply.content).toBe('⚠️ I can only read images (PNG, JPEG, WebP or GIF), and `notes.txt` is not one.');

    // Claims to be a PNG but is not one: refused after download, before any thread.
    const fakePng = s.fake.addAttachment('photo.png', Buffer.from('GIF? no: plain text'), 'image/png');
    const bad2 = s.fake.postMessage(s.w.general, s.w.bob, 'and this?', { attachments: [fakePng], mentionBot: true });
    await until(() => botMessagesIn(s.w.general).some((m) => m.message_reference?.message_id === bad2.id), 'the second error reply');
    expect(botMessagesIn(s.w.general).find((m) => m.message_reference?.message_id === bad2.id)!.content).toMatch(/`photo\.png` is not one/);

    // A download that fails (the attachment is gone from the CDN).
    const gone = {
      ...s.fake.addAttachment('gone.png', Buffer.alloc(10), 'image/png'),
      url: `${s.fake.origin}/attachments/0/0/gone.png?ex=1&hm=ff`,
    };
    const bad3 = s.fake.postMessage(s.w.general, s.w.bob, 'and this one?', { attachments: [gone], mentionBot: true });
    await until(() => botMessagesIn(s.w.general).some((m) => m.message_reference?.message_id === bad3.id), 'the third error reply');
    expect(botMessagesIn(s.w.general).find((m) => m.message_reference?.message_id === bad3.id)!.content).toBe(
      "⚠️ I couldn't download the image (HTTP 404); please upload it again.",
    );
    expect(s.fake.calls.slice(before).filter((c) => c.path.endsWith('/threads'))).toHaveLength(0);

    // A PNG signature on broken data: the model cannot read it; the answer in the thread says so.
    const broken = Buffer.concat([(await testPng()).subarray(0, 60), Buffer.alloc(40, 7)]);
    const bad4 = s.fake.postMessage(s.w.general, s.w.bob, 'broken', {
      attachments: [s.fake.addAttachment('broken.png', broken, 'image/png')],
      mentionBot: true,
    });
    const line = await answered(logs, bad4.id);
    expect(line).toMatch(/error bad_image/);
    expect(botMessagesIn(bad4.id)[0].content).toMatch(/^⚠️ .*(corrupt|decode|image)/i);

    // Still alive: a good request is answered.
    const ok = s.fake.postMessage(s.w.general, s.w.bob, 'this one works', {
      attachments: [s.fake.addAttachment('ok.png', await testPng(), 'image/png')],
      mentionBot: true,
    });
    expect(await answered(logs, ok.id)).toMatch(/answered/);
    // The logs never show a token or an attachment signature.
    const all = logs.join('\n');
    expect(all).not.toContain(s.fake.token);
    expect(all).not.toMatch(/hm=|ex=/);
  });
});

describe('two users at once', () => {
  it('answer in parallel threads without cross-talk', async () => {
    const pa = await testPng(200, 150);
    const pb = await testPng(120, 90);
    const before = s.fake.calls.length;
    const a = s.fake.postMessage(s.w.general, s.w.alice, 'alice asks', {
      attachments: [s.fake.addAttachment('a.png', pa, 'image/png')],
      mentionBot: true,
    });
    const b = s.fake.postMessage(s.w.other, s.w.bob, 'bob asks', {
      attachments: [s.fake.addAttachment('b.png', pb, 'image/png')],
      mentionBot: true,
    });
    await Promise.all([answered(logs, a.id), answered(logs, b.id)]);
    const calls = s.fake.calls.slice(before);
    const ua = uploadsTo(calls, new RegExp(`^/channels/${a.id}/messages`));
    const ub = uploadsTo(calls, new RegExp(`^/channels/${b.id}/messages`));
    expect(ua).toHaveLength(1);
    expect(ub).toHaveLength(1);
    await expectBoxDrawn(ua[0].files[0].data, 200, 150, SQUARE);
    await expectBoxDrawn(ub[0].files[0].data, 120, 90, SQUARE);
    // Each thread holds exactly one bot reply; each conversation only its own user's turn.
    expect(botMessagesIn(a.id)).toHaveLength(1);
    expect(botMessagesIn(b.id)).toHaveLength(1);
    const sa = await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.general, thread: a.id });
    const sb = await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.other, thread: b.id });
    expect(sa?.turns.map((t) => [t.by, t.user])).toEqual([[s.w.alice.id, 'alice asks']]);
    expect(sb?.turns.map((t) => [t.by, t.user])).toEqual([[s.w.bob.id, 'bob asks']]);
    expect(sa?.image.width).toBe(200);
    expect(sb?.image.width).toBe(120);

    // Follow-ups at the same time, each in its own thread.
    const fa = s.fake.postMessage(a.id, s.w.alice, 'alice again');
    const fb = s.fake.postMessage(b.id, s.w.bob, 'bob again');
    await Promise.all([answered(logs, fa.id), answered(logs, fb.id)]);
    expect(botMessagesIn(a.id)).toHaveLength(2);
    expect(botMessagesIn(b.id)).toHaveLength(2);
    const sa2 = await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.general, thread: a.id });
    const sb2 = await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.other, thread: b.id });
    expect(sa2?.turns.map((t) => t.user)).toEqual(['alice asks', 'alice again']);
    expect(sb2?.turns.map((t) => t.user)).toEqual(['bob asks', 'bob again']);
  });
});

describe('/describe', () => {
  it('defers within 3 s, edits the original response with the answer and the image, and opens a thread on it', async () => {
    const png = await testPng(200, 150);
    const att = s.fake.addAttachment('cmd.png', png, 'image/png', { width: 200, height: 150 });
    const before = s.fake.calls.length;
    const sentAt = Date.now();
    const { id, token } = s.fake.interact(
      s.w.general,
      s.w.alice,
      describeCommand({ image: att, prompt: 'where is the red square?', task: 'grounding', temperature: 0 }),
    );
    await answered(logs, id);
    await until(() => s.fake.calls.some((c) => c.path.endsWith('/threads') && c.at >= sentAt), 'the thread on the reply');
    const calls = s.fake.calls.slice(before);

    const cb = calls.find((c) => c.path === `/interactions/${id}/${token}/callback`)!;
    expect(cb.body).toMatchObject({ type: 5 });
    expect(cb.at - sentAt).toBeLessThan(3000);
    // The callback came before the image was downloaded.
    expect(s.fake.cdnHits.find((h) => att.url.includes(h.path))!.at).toBeGreaterThanOrEqual(cb.at);

    const edits = calls.filter((c) => c.method === 'PATCH' && c.path === `/webhooks/${s.fake.appId}/${token}/messages/@original`);
    expect(edits.length).toBeGreaterThanOrEqual(1);
    const last = edits.at(-1)!;
    expect(last.body.content).toBe(FINAL);
    expect(last.files).toHaveLength(1);
    await expectBoxDrawn(last.files[0].data, 200, 150, SQUARE);
    const original = s.fake.original(token)!;
    expect(original.content).toBe(FINAL);

    const thread = calls.find((c) => c.path === `/channels/${s.w.general}/messages/${original.id}/threads`);
    expect(thread?.body.name).toBe('where is the red square?');
    const state = await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.general, thread: original.id });
    expect(state?.turns).toHaveLength(1);
    expect(state?.turns[0]).toMatchObject({ task: 'grounding', by: s.w.alice.id });
    expect(state?.turns[0].user).toBe('[grounding] where is the red square?');

    // A follow-up message in that thread keeps the image.
    const follow = s.fake.postMessage(original.id, s.w.alice, 'thanks, anything else?');
    await answered(logs, follow.id);
    expect(
      (await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.general, thread: original.id }))?.turns,
    ).toHaveLength(2);

    // /describe without an image inside that bot thread uses the thread's image; no new thread.
    const before2 = s.fake.calls.length;
    const again = s.fake.interact(original.id, s.w.alice, describeCommand({ prompt: 'one more' }));
    await answered(logs, again.id);
    const calls2 = s.fake.calls.slice(before2);
    expect(calls2.filter((c) => c.path.endsWith('/threads'))).toHaveLength(0);
    const edit2 = calls2.filter((c) => c.method === 'PATCH' && c.path.includes(again.token)).at(-1)!;
    expect(edit2.body.content).toBe(FINAL);
    await expectBoxDrawn(edit2.files[0].data, 200, 150, SQUARE);
    expect(
      (await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.general, thread: original.id }))?.turns,
    ).toHaveLength(3);
  });

  it('without an image outside a bot thread explains how to use it', async () => {
    const { id, token } = s.fake.interact(s.w.general, s.w.bob, describeCommand({ prompt: 'hi' }));
    await until(() => s.fake.original(token)?.content !== undefined && s.fake.original(token)!.content !== '', 'the edited reply');
    expect(s.fake.interaction(token)?.callback?.type).toBe(5);
    expect(s.fake.original(token)!.content).toMatch(/Add an image with the `image` option/);
    expect(
      s.fake.calls.filter((c) => c.path.includes(`/${id}/`) || c.path.endsWith(`/messages/${s.fake.original(token)!.id}/threads`)),
    ).toHaveLength(1);
  });
});

describe('"Describe image" on a message', () => {
  it("describes the message's image (caption task) and opens a thread on the answer", async () => {
    const png = await testPng(200, 150);
    const target = s.fake.postMessage(s.w.other, s.w.bob, 'look at my picture', {
      attachments: [s.fake.addAttachment('pic.png', png, 'image/png')],
    });
    const { id, token } = s.fake.interact(s.w.other, s.w.alice, describeImageCommand(target));
    await answered(logs, id);
    const original = s.fake.original(token)!;
    expect(original.content).toBe(FINAL);
    expect(original.attachments).toHaveLength(1);
    await until(() => s.fake.channel(original.id)?.type === 11, 'the thread');
    const state = await s.manager.history({ platform: 'discord', workspace: s.w.guildId, channel: s.w.other, thread: original.id });
    expect(state?.turns[0].task).toBe('caption');
  });
});

describe('direct messages', () => {
  it('work like a thread: no mention needed, the image is kept for follow-ups', async () => {
    const dm = s.fake.addDm(s.w.alice);
    const png = await testPng(200, 150);
    const first = s.fake.postMessage(dm, s.w.alice, 'hello there', { attachments: [s.fake.addAttachment('dm.png', png, 'image/png')] });
    await answered(logs, first.id);
    const follow = s.fake.postMessage(dm, s.w.alice, 'tell me more');
    await answered(logs, follow.id);
    const replies = botMessagesIn(dm);
    expect(replies.map((m) => m.content)).toEqual([FINAL, FINAL]);
    expect(replies.every((m) => m.attachments.length === 1)).toBe(true);
    const state = await s.manager.history({ platform: 'discord', workspace: '@me', channel: dm, thread: dm });
    expect(state?.turns.map((t) => t.user)).toEqual(['hello there', 'tell me more']);
    // /describe in the DM without an image asks about the DM's image; no thread in a DM.
    const before = s.fake.calls.length;
    const { id, token } = s.fake.interact(dm, s.w.alice, describeCommand({ prompt: 'and now?' }));
    await answered(logs, id);
    expect(s.fake.original(token)?.content).toBe(FINAL);
    expect(s.fake.calls.slice(before).filter((c) => c.path.endsWith('/threads'))).toHaveLength(0);
    const after = await s.manager.history({ platform: 'discord', workspace: '@me', channel: dm, thread: dm });
    expect(after?.turns.map((t) => t.user)).toEqual(['hello there', 'tell me more', 'and now?']);
  });
});

describe('missing permissions', () => {
  it('without Create Public Threads: answers in the channel, says why, and replies to the answer follow up', async () => {
    s.fake.denyThreads.add(s.w.other);
    try {
      const msg = s.fake.postMessage(s.w.other, s.w.alice, 'no threads here', {
        attachments: [s.fake.addAttachment('p.png', await testPng(), 'image/png')],
        mentionBot: true,
      });
      await answered(logs, msg.id);
      const reply = botMessagesIn(s.w.other).find((m) => m.message_reference?.message_id === msg.id)!;
      expect(reply.content).toMatch(/^-# I couldn't start a thread here \(I need the Create Public Threads permission\)/);
      expect(reply.content.endsWith(FINAL)).toBe(true);
      expect(reply.attachments).toHaveLength(1);
      const follow = s.fake.postMessage(s.w.other, s.w.alice, 'more please', { mentionBot: true, replyTo: reply.id });
      await answered(logs, follow.id);
      const state = await s.manager.history({
        platform: 'discord',
        workspace: s.w.guildId,
        channel: s.w.other,
        thread: `message:${msg.id}`,
      });
      expect(state?.turns.map((t) => t.user)).toEqual(['no threads here', 'more please']);
    } finally {
      s.fake.denyThreads.delete(s.w.other);
    }
  });

  it('without Attach Files: the answer goes without the image and says why', async () => {
    const msg = s.fake.postMessage(s.w.general, s.w.alice, 'attach?', {
      attachments: [s.fake.addAttachment('p.png', await testPng(), 'image/png')],
      mentionBot: true,
    });
    s.fake.denyAttachments.add(msg.id); // the thread will have the message's id
    try {
      const line = await answered(logs, msg.id);
      expect(line).toMatch(/answered \(\d+ chars\)/);
      const reply = botMessagesIn(msg.id)[0];
      expect(reply.content).toBe(
        `${FINAL}\n-# I couldn't attach the image with the boxes here: I need the **Attach Files** permission in this channel.`,
      );
      expect(reply.attachments).toHaveLength(0);
    } finally {
      s.fake.denyAttachments.delete(msg.id);
    }
  });
});

describe('/forget', () => {
  const forget = { id: '1', name: 'forget', type: 1 };
  /** runs /forget in `channel` as `user`; the private reply's text */
  async function runForget(channel: string, user = s.w.alice, permissions?: string): Promise<string> {
    const { token } = s.fake.interact(channel, user, forget, permissions);
    await until(() => (s.fake.original(token)?.content ?? '') !== '', 'the reply to /forget');
    const reply = s.fake.original(token)!;
    expect(reply.flags! & 64).toBe(64); // only the user sees it
    return reply.content;
  }

  it("deletes a bot thread's image and history for someone who took part (not for others); elsewhere says where it works", async () => {
    const msg = s.fake.postMessage(s.w.general, s.w.alice, 'remember this', {
      attachments: [s.fake.addAttachment('f.png', await testPng(123, 77), 'image/png')], // (an image no other test sends)
      mentionBot: true,
    });
    await answered(logs, msg.id);
    const key = { platform: 'discord' as const, workspace: s.w.guildId, channel: s.w.general, thread: msg.id };
    const hash = (await s.manager.history(key))!.image.hash;
    expect(await s.manager.store.get(`img:${hash}`)).toBeDefined();

    // bob did not take part and is no moderator: refused, nothing deleted
    expect(await runForget(msg.id, s.w.bob, '0')).toBe(
      'Only someone who took part in this conversation, or a moderator (Manage Messages), can make me forget it.',
    );
    expect(await s.manager.history(key)).not.toBeNull();
    // outside a bot thread: where it works
    expect(await runForget(s.w.general)).toBe('Use /forget inside a thread I started (or in a DM with me): it deletes that conversation.');

    // alice, who asked: image and history gone from the store
    expect(await runForget(msg.id, s.w.alice, '0')).toBe(
      "Forgotten: this conversation's image and history are deleted. Send an image to start again.",
    );
    expect(await s.manager.history(key)).toBeNull();
    expect(await s.manager.store.get(`img:${hash}`)).toBeUndefined();
    expect(await runForget(msg.id)).toBe('I have nothing stored for this conversation.');
    // a follow-up in the thread now has no image
    const follow = s.fake.postMessage(msg.id, s.w.alice, 'and now?');
    expect(await answered(logs, follow.id)).toMatch(/error no_image/);
  });

  it('is done after the requests sent before it (a follow-up sent just before is answered, then forgotten); a moderator may', async () => {
    const msg = s.fake.postMessage(s.w.general, s.w.alice, 'remember this too', {
      attachments: [s.fake.addAttachment('g.png', await testPng(91, 67), 'image/png')],
      mentionBot: true,
    });
    await answered(logs, msg.id);
    const key = { platform: 'discord' as const, workspace: s.w.guildId, channel: s.w.general, thread: msg.id };
    const follow = s.fake.postMessage(msg.id, s.w.alice, 'and the colours?');
    // bob may manage messages (1 << 13)
    expect(await runForget(msg.id, s.w.bob, String(1 << 13))).toBe(
      "Forgotten: this conversation's image and history are deleted. Send an image to start again.",
    );
    expect(await answered(logs, follow.id)).not.toMatch(/error/);
    expect(await s.manager.history(key)).toBeNull();
  });
});

describe('the bot removed from a server', () => {
  const keyOf = (guild: string, channel: string, thread: string) => ({ platform: 'discord' as const, workspace: guild, channel, thread });
  const removal = (guildId: string) => logs.find((l) => l.startsWith('discord: removed from server') && l.includes(`(${guildId})`));

  it("forgets that server's conversations at once; not on an outage, not another server's", async () => {
    const other = s.fake.joinGuild('second', ['chat']);
    const chat = other.channelIds[0];
    const there = s.fake.postMessage(chat, s.w.alice, 'in the second server', {
      attachments: [s.fake.addAttachment('h.png', await testPng(83, 61), 'image/png')],
      mentionBot: true,
    });
    expect(await answered(logs, there.id)).not.toMatch(/error/);
    const thereKey = keyOf(other.guildId, chat, there.id);
    const hash = (await s.manager.history(thereKey))!.image.hash;
    const home = s.fake.postMessage(s.w.general, s.w.alice, 'in the first server', {
      attachments: [s.fake.addAttachment('i.png', await testPng(71, 53), 'image/png')],
      mentionBot: true,
    });
    expect(await answered(logs, home.id)).not.toMatch(/error/);
    const homeKey = keyOf(s.w.guildId, s.w.general, home.id);

    // an outage (GUILD_DELETE with unavailable: true) and the server back: the thread goes on with its image
    s.fake.removeGuild(other.guildId, { outage: true });
    s.fake.available(other.guildId);
    const follow = s.fake.postMessage(there.id, s.w.alice, 'still there?');
    expect(await answered(logs, follow.id)).not.toMatch(/error/);
    expect(removal(other.guildId)).toBeUndefined();
    expect(await s.manager.history(thereKey)).not.toBeNull();

    // removed: its conversation and image go; the first server's stay
    s.fake.removeGuild(other.guildId);
    await until(() => removal(other.guildId) !== undefined, 'the removal to be handled');
    expect(removal(other.guildId)).toBe(`discord: removed from server second (${other.guildId}): 1 conversation forgotten`);
    expect(await s.manager.history(thereKey)).toBeNull();
    expect(await s.manager.store.get(`img:${hash}`)).toBeUndefined();
    expect(await s.manager.history(homeKey)).not.toBeNull();
  });

  it("removed while the bot was offline: that server's conversations go at the next start; other servers' and DMs' stay", async () => {
    const third = s.fake.joinGuild('third', ['talk']);
    const talk = third.channelIds[0]!;
    const ask = async (channel: string, name: string, mention = true) => {
      const msg = s.fake.postMessage(channel, s.w.alice, `about ${name}`, {
        attachments: [s.fake.addAttachment(`${name}.png`, await testPng(97, 41), 'image/png')],
        mentionBot: mention,
      });
      expect(await answered(logs, msg.id)).not.toMatch(/error/);
      return msg.id;
    };
    const thereKey = keyOf(third.guildId, talk, await ask(talk, 'there'));
    const homeKey = keyOf(s.w.guildId, s.w.general, await ask(s.w.general, 'home'));
    const dm = s.fake.addDm(s.w.alice);
    await ask(dm, 'dm', false);
    const dmKey = { platform: 'discord' as const, workspace: '@me', channel: dm, thread: dm };
    expect(await s.manager.history(dmKey)).not.toBeNull();

    await s.adapter.close();
    s.fake.removeGuild(third.guildId); // (nobody connected to hear it)
    s.adapter = await startAdapter(s.fake, s.manager, logs);
    await s.adapter.swept;
    expect(logs.filter((l) => l.includes('while offline'))).toEqual([
      'discord: removed from servers while offline: 1 conversation forgotten',
    ]);
    expect(await s.manager.history(thereKey)).toBeNull();
    expect(await s.manager.history(homeKey)).not.toBeNull();
    expect(await s.manager.history(dmKey)).not.toBeNull();
  });
});

describe('a bot thread or a channel deleted', () => {
  const keyOf = (guild: string, channel: string, thread: string) => ({ platform: 'discord' as const, workspace: guild, channel, thread });
  let width = 150; // (each conversation an image of its own)
  async function conversation(channel: string, name: string, guild = s.w.guildId) {
    const msg = s.fake.postMessage(channel, s.w.alice, `about ${name}`, {
      attachments: [s.fake.addAttachment(`${name}.png`, await testPng(width++, 45), 'image/png')],
      mentionBot: true,
    });
    expect(await answered(logs, msg.id)).not.toMatch(/error/);
    const key = keyOf(guild, channel, msg.id);
    return { thread: msg.id, key, hash: (await s.manager.history(key))!.image.hash };
  }

  it('a deleted bot thread takes its conversation and image with it', async () => {
    const c = await conversation(s.w.general, 'gone');
    const other = await conversation(s.w.general, 'kept');
    s.fake.deleteChannel(c.thread);
    await until(() => logs.includes(`discord: thread ${c.thread} was deleted: its conversation forgotten`), 'the deletion to be handled');
    expect(await s.manager.history(c.key)).toBeNull();
    expect(await s.manager.store.get(`img:${c.hash}`)).toBeUndefined();
    expect(await s.manager.history(other.key)).not.toBeNull();
  });

  it("a deleted channel takes the conversations of its threads; the server's other channels keep theirs", async () => {
    const server = s.fake.joinGuild('third', ['deleted', 'kept']);
    const [deleted, kept] = server.channelIds as [string, string];
    const a = await conversation(deleted, 'first', server.guildId);
    const b = await conversation(deleted, 'second', server.guildId);
    const c = await conversation(kept, 'third', server.guildId);
    s.fake.deleteChannel(deleted);
    await until(() => logs.includes(`discord: channel ${deleted} was deleted: 2 conversations forgotten`), 'the deletion to be handled');
    expect(await s.manager.history(a.key)).toBeNull();
    expect(await s.manager.history(b.key)).toBeNull();
    expect(await s.manager.history(c.key)).not.toBeNull();
  });
});
