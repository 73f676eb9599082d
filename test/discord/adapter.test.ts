// The adapter's Discord-side behaviour against the fake Discord with the real discord.js client, driven by a
// scripted conversation manager (so timing, long answers and failures can be chosen): throttled edits,
// splitting, escaping, image sources, allowlists, the rate limit, failures that must not stop the bot,
// redacted logs and closing.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import Keyv from 'keyv';
import type { AnswerEvent, ConversationRequest, QuestionOutcome, ResetOutcome } from '../../src/conversation/index.js';
import { answerMarkdown, DISCORD_MESSAGE_LIMIT, type DiscordAdapter, type DiscordAdapterOptions } from '../../adapters/discord/index.js';
import type { ApiMessage } from './fake-discord.js';
import {
  answered,
  describeCommand,
  dispatchUnknownInteraction,
  sleep,
  startAdapter,
  startFake,
  testPng,
  until,
  type World,
} from './helpers.js';

type Script = (req: ConversationRequest) => AsyncIterable<AnswerEvent>;

class ScriptedManager {
  readonly requests: ConversationRequest[] = [];
  /** where the adapter keeps its own marks (which conversation an answer in a channel belongs to) */
  readonly store = new Keyv();
  constructor(public script: Script) {}
  handle(req: ConversationRequest): AsyncIterable<AnswerEvent> {
    this.requests.push(req);
    return this.script(req);
  }
  // (no stored conversations: /forget is tested end to end with the real manager)
  async reset(): Promise<ResetOutcome> {
    return 'forgotten';
  }
  async forgetQuestion(): Promise<QuestionOutcome> {
    return 'not_asked';
  }
  async history(): Promise<null> {
    return null;
  }
  async forgetWorkspace(): Promise<number> {
    return 0;
  }
}

/** An answer streamed in `pieces` pieces, `delayMs` apart, with an optional annotated image. */
function streamed(text: string, opts: { pieces?: number; delayMs?: number; image?: Buffer } = {}): Script {
  return async function* () {
    yield { type: 'queued', position: 0 };
    yield { type: 'started' };
    const n = opts.pieces ?? 4;
    const size = Math.ceil(text.length / n);
    for (let i = 0; i < text.length; i += size) {
      if (opts.delayMs) await sleep(opts.delayMs);
      yield { type: 'text', text: text.slice(i, i + size) };
    }
    yield { type: 'final', text, entities: [], finishReason: 'stop' };
    if (opts.image) yield { type: 'image', data: opts.image, mime: 'image/png' };
    yield { type: 'timings', timings: {} };
  };
}

/** Where this process opened TCP connections (to show the adapter talks only to the configured loopback URLs). */
const connections = new Set<string>();
const realConnect = net.Socket.prototype.connect;
function recordConnect(this: net.Socket, ...args: unknown[]): net.Socket {
  const a = Array.isArray(args[0]) ? args[0][0] : args[0];
  const host =
    typeof a === 'object' && a !== null
      ? ((a as { host?: string; path?: string }).host ?? (a as { path?: string }).path ?? 'localhost')
      : typeof a === 'number'
        ? String(args[1] ?? 'localhost')
        : String(a);
  connections.add(host);
  return (realConnect as (...x: unknown[]) => net.Socket).apply(this, args);
}

let w: World;
const logs: string[] = [];
let adapter: DiscordAdapter | undefined;
let manager: ScriptedManager;
let png: Buffer;

beforeAll(async () => {
  net.Socket.prototype.connect = recordConnect as typeof net.Socket.prototype.connect;
  w = await startFake();
  png = await testPng(64, 48);
});
afterEach(async () => {
  await adapter?.close();
  adapter = undefined;
});
afterAll(async () => {
  net.Socket.prototype.connect = realConnect;
  await w?.fake.close();
});

async function start(script: Script, extra: Partial<DiscordAdapterOptions> = {}): Promise<void> {
  manager = new ScriptedManager(script);
  adapter = await startAdapter(w.fake, manager, logs, extra);
}

const botMessagesIn = (channelId: string): ApiMessage[] => w.fake.messagesIn(channelId).filter((m) => m.author.id === w.fake.bot.id);
const repliesTo = (channelId: string, id: string) => botMessagesIn(channelId).filter((m) => m.message_reference?.message_id === id);
const mention = (channel: string, text: string, withImage = true, user = w.alice) =>
  w.fake.postMessage(channel, user, text, {
    mentionBot: true,
    attachments: withImage ? [w.fake.addAttachment('p.png', png, 'image/png')] : [],
  });

describe('streaming', () => {
  it('throttles edits: never two writes to the reply closer than editIntervalMs, the last one the final text', async () => {
    const text = 'The quick brown fox jumps over the lazy dog. '.repeat(6).trim();
    await start(streamed(text, { pieces: 30, delayMs: 40 }), { editIntervalMs: 300 });
    const before = w.fake.calls.length;
    const msg = mention(w.general, 'stream please');
    await answered(logs, msg.id);
    const writes = w.fake.calls.slice(before).filter((c) => c.path.startsWith(`/channels/${msg.id}/messages`) && c.method !== 'GET');
    expect(writes[0].method).toBe('POST');
    // 30 pieces over ~1.2 s: a handful of writes, not one per piece.
    expect(writes.length).toBeGreaterThanOrEqual(3);
    expect(writes.length).toBeLessThanOrEqual(12);
    // measured where the fake platform receives them (the interval runs from the reply to one write to the start
    // of the next, so however late a write arrived the next is an interval behind it); the last write, the final
    // text, goes out as soon as the answer ends
    for (let i = 1; i < writes.length - 1; i++) expect(writes[i].at - writes[i - 1].at).toBeGreaterThanOrEqual(300);
    // Each streamed write shows more of the answer than the one before, marked as still being written.
    for (let i = 1; i < writes.length - 1; i++)
      expect(writes[i].body.content.length).toBeGreaterThanOrEqual(writes[i - 1].body.content.length);
    for (const c of writes.slice(0, -1)) expect(c.body.content.endsWith(' …')).toBe(true);
    expect(writes.at(-1)!.body.content).toBe(text);
    expect(botMessagesIn(msg.id)).toHaveLength(1);
    expect(botMessagesIn(msg.id)[0].content).toBe(text);
  });

  it('a short answer appears whole in one write, as soon as it ends (no first word alone, no wait for the edit interval)', async () => {
    const text = 'A red square on a grey background.';
    await start(streamed(text, { pieces: 4, delayMs: 40 }), { editIntervalMs: 1500, firstTextWaitMs: 600 });
    const before = w.fake.calls.length;
    const t0 = Date.now();
    const msg = mention(w.general, 'what is this?');
    await answered(logs, msg.id);
    const writes = w.fake.calls.slice(before).filter((c) => c.path.startsWith(`/channels/${msg.id}/messages`) && c.method !== 'GET');
    expect(writes.map((c) => [c.method, c.body.content])).toEqual([['POST', text]]);
    // 4 pieces 40 ms apart end in ~160 ms: written then, not after the 600 ms wait or the 1.5 s edit interval
    expect(writes[0].at - t0).toBeLessThan(1400);
    expect(botMessagesIn(msg.id).map((m) => m.content)).toEqual([text]);
  });

  it('a longer answer is shown after the first wait, marked as still being written, then final at once', async () => {
    const text = 'The quick brown fox jumps over the lazy dog. '.repeat(3).trim();
    await start(streamed(text, { pieces: 12, delayMs: 100 }), { editIntervalMs: 5000, firstTextWaitMs: 300 });
    const before = w.fake.calls.length;
    const msg = mention(w.general, 'tell me');
    await answered(logs, msg.id);
    const writes = w.fake.calls.slice(before).filter((c) => c.path.startsWith(`/channels/${msg.id}/messages`) && c.method !== 'GET');
    // the first text waited ~300 ms for more (not its first word alone), the final replaced it without waiting 5 s
    expect(writes).toHaveLength(2);
    expect(writes[0].body.content.endsWith(' …')).toBe(true);
    expect(writes[0].body.content.split(' ').length).toBeGreaterThan(3);
    expect(writes[1].body.content).toBe(text);
    expect(writes[1].at - writes[0].at).toBeLessThan(4000);
  });

  it('a restart (another worker answers again) replaces the text shown so far: one message, the new answer', async () => {
    const old = 'The first worker had written this much before it died';
    const fresh = 'A different answer from the worker that took over.';
    await start(
      async function* () {
        yield { type: 'queued', position: 0 };
        yield { type: 'started' };
        for (const word of old.split(' ')) {
          await sleep(30);
          yield { type: 'text', text: `${word} ` };
        }
        yield { type: 'restart' };
        for (const word of fresh.split(' ')) {
          await sleep(30);
          yield { type: 'text', text: `${word} ` };
        }
        yield { type: 'final', text: fresh, entities: [], finishReason: 'stop' };
        yield { type: 'timings', timings: {} };
      },
      { editIntervalMs: 100, firstTextWaitMs: 0 },
    );
    const before = w.fake.calls.length;
    const msg = mention(w.general, 'tell me');
    await answered(logs, msg.id);
    const writes = w.fake.calls.slice(before).filter((c) => c.path.startsWith(`/channels/${msg.id}/messages`) && c.method !== 'GET');
    // the old text was on screen, then replaced (not appended to) in the same message
    expect(writes.some((c) => String(c.body.content ?? '').startsWith('The first worker'))).toBe(true);
    expect(botMessagesIn(msg.id)).toHaveLength(1);
    expect(botMessagesIn(msg.id)[0].content).toBe(fresh);
    expect(writes.every((c) => !String(c.body.content ?? '').includes('died A different'))).toBe(true);
  });

  it('splits answers over 2000 characters cleanly, bold kept, the image on the last message', async () => {
    const para = (i: number) =>
      `Paragraph ${i}: <p>a red square</p> {<10><10><50><50>} sits next to <p>a very long and winding phrase that goes on</p> {<1><2><3><4>} and more words follow here. `.repeat(
        3,
      );
    const text = Array.from({ length: 12 }, (_, i) => para(i)).join('\n\n');
    const md = answerMarkdown(text);
    expect(md.length).toBeGreaterThan(2 * DISCORD_MESSAGE_LIMIT);
    await start(streamed(text, { pieces: 5, image: png }));
    const msg = mention(w.general, 'long please');
    expect(await answered(logs, msg.id)).toMatch(/annotated image/);
    const msgs = botMessagesIn(msg.id);
    expect(msgs.length).toBeGreaterThanOrEqual(3);
    for (const m of msgs) {
      expect(m.content.length).toBeLessThanOrEqual(DISCORD_MESSAGE_LIMIT);
      // every piece renders on its own: balanced bold markers
      expect((m.content.match(/\*\*/g) ?? []).length % 2).toBe(0);
    }
    // Nothing lost or added but whitespace at the cuts.
    expect(
      msgs
        .map((m) => m.content)
        .join('')
        .replace(/\s+/g, ''),
    ).toBe(md.replace(/\s+/g, ''));
    // Cut at paragraph breaks: no piece starts or ends in the middle of a word.
    for (const m of msgs.slice(0, -1)) expect(m.content).toMatch(/[.!?]$/);
    expect(msgs.map((m) => m.attachments.length)).toEqual([...msgs.slice(1).map(() => 0), 1]);
    // While streaming, the reply never went over the limit either.
    for (const c of w.fake.calls.filter((c) => c.path.startsWith(`/channels/${msg.id}/messages`) && c.body?.content)) {
      expect(c.body.content.length).toBeLessThanOrEqual(DISCORD_MESSAGE_LIMIT);
    }
  });

  it("escapes the model's Markdown, bolds grounded phrases, and never pings", async () => {
    const text =
      '# Heading\n-# small\n*stars* _under_ `code` ~~strike~~ ||spoiler|| [link](https://example.com) <@123> @everyone <p>the cat</p> {<1><2><3><4>}';
    await start(streamed(text));
    const msg = mention(w.general, 'markdown');
    await answered(logs, msg.id);
    const m = botMessagesIn(msg.id)[0];
    expect(m.content).toBe(
      '\\# Heading\n\\-# small\n\\*stars\\* \\_under\\_ \\`code\\` \\~\\~strike\\~\\~ \\|\\|spoiler\\|\\| \\[link\\](https://example.com) \\<@123\\> @everyone **the cat**',
    );
    const posts = w.fake.calls.filter((c) => c.path.startsWith(`/channels/${msg.id}/messages`) && c.method !== 'GET');
    for (const c of posts) expect(c.body.allowed_mentions).toEqual({ parse: [], replied_user: false });
  });

  it('shows the place in the queue, and answers "busy" and other errors clearly', async () => {
    await start(
      async function* (req) {
        if (req.text === 'busy') {
          yield { type: 'error', code: 'busy', message: 'The bot is busy (3 requests waiting): please try again in a moment.' };
          return;
        }
        // told again as the queue moves (each long enough apart to be written: editIntervalMs is 150 ms)
        for (const position of [2, 1, 0]) {
          yield { type: 'queued', position };
          await sleep(250);
        }
        yield { type: 'started' };
        await sleep(250);
        yield { type: 'text', text: 'fine' };
        yield { type: 'final', text: 'fine', entities: [], finishReason: 'stop' };
      },
      { queueUpdateMs: 100, placeAfterMs: 0, firstTextWaitMs: 50 },
    );
    const b = mention(w.general, 'busy');
    expect(await answered(logs, b.id)).toMatch(/error busy/);
    expect(botMessagesIn(b.id)[0].content).toBe('⚠️ The bot is busy (3 requests waiting): please try again in a moment.');
    const q = mention(w.general, 'queue');
    await answered(logs, q.id);
    const writes = w.fake.calls.filter((c) => c.path.startsWith(`/channels/${q.id}/messages`) && c.method !== 'GET');
    expect(writes.slice(0, 4).map((c) => c.body.content)).toEqual([
      '-# Waiting in line (2 ahead of you)…',
      '-# Waiting in line (1 ahead of you)…',
      '-# Next in line…',
      '-# Thinking…',
    ]);
    expect(botMessagesIn(q.id)).toHaveLength(1);
    expect(botMessagesIn(q.id)[0].content).toBe('fine');
    // (waiting in line shows the place, not "typing…")
    expect(w.fake.calls.filter((c) => c.path === `/channels/${q.id}/typing`)).toEqual([]);
  });

  it('a wait in line of a moment costs no message of its own; a longer one shows the place, then the answer, in two writes', async () => {
    const waits: Record<string, number> = { short: 300, long: 1500 };
    await start(
      async function* (req) {
        yield { type: 'queued', position: 3 };
        await sleep(waits[req.text]! / 2);
        yield { type: 'queued', position: 1 };
        await sleep(waits[req.text]! / 2);
        yield { type: 'started' };
        await sleep(100);
        yield { type: 'text', text: 'the answer' };
        yield { type: 'final', text: 'the answer', entities: [], finishReason: 'stop' };
      },
      { firstTextWaitMs: 600 },
    );
    const callsIn = (id: string) => w.fake.calls.filter((c) => c.path.startsWith(`/channels/${id}/`) && c.method !== 'GET');
    const short = mention(w.general, 'short');
    await answered(logs, short.id);
    // "typing…" once the answer starts, then the answer in one message
    expect(callsIn(short.id).map((c) => [c.method, c.path.split('/')[3], c.body?.content])).toEqual([
      ['POST', 'typing', undefined],
      ['POST', 'messages', 'the answer'],
    ]);
    const long = mention(w.general, 'long');
    await answered(logs, long.id);
    // its place after a second (the place it had then), no typing; "Thinking…" not shown, the text following at once
    expect(callsIn(long.id).map((c) => [c.method, c.path.split('/')[3], c.body?.content])).toEqual([
      ['POST', 'messages', '-# Waiting in line (1 ahead of you)…'],
      ['PATCH', 'messages', 'the answer'],
    ]);
  });
});

describe('commands', () => {
  it("/describe outlasting its interaction's token (Discord's 15 minutes): the answer is finished through the channel", async () => {
    // two messages' worth: the first written while the token is good, finished after it expired; the rest sent after
    const text = Array.from({ length: 420 }, (_, k) => `word${k}`).join(' ');
    await start(streamed(text, { pieces: 40, delayMs: 40 }), { editIntervalMs: 100 });
    const att = w.fake.addAttachment('p.png', png, 'image/png');
    const { id, token } = w.fake.interact(w.general, w.alice, describeCommand({ image: att, prompt: 'at length' }));
    await until(() => w.fake.original(token)?.content.endsWith(' …') === true, 'the answer being written');
    w.fake.expireInteraction(token);
    expect(await answered(logs, id)).toMatch(/: answered/);
    const original = w.fake.message(w.general, w.fake.original(token)!.id)!;
    const rest = botMessagesIn(w.general).filter((m) => m.id > original.id);
    expect(rest.length).toBeGreaterThanOrEqual(1);
    expect([original, ...rest].map((m) => m.content).join(' ')).toBe(text);
    expect(original.content.endsWith(' …')).toBe(false);
    // (the expired interaction's 401 is not the bot token refused: the adapter goes on)
    expect(await Promise.race([adapter!.fatal.then((e) => e.message), sleep(50).then(() => 'running')])).toBe('running');
  });

  it('/describe passes prompt, task, temperature and image to the manager; bad option values are dropped', async () => {
    await start(streamed('ok'));
    const att = w.fake.addAttachment('c.png', png, 'image/png');
    const { id } = w.fake.interact(
      w.general,
      w.bob,
      describeCommand({ image: att, prompt: '  where is it?  ', task: 'refer', temperature: 0.3 }),
    );
    await answered(logs, id);
    const req = manager.requests.at(-1)!;
    expect(req).toMatchObject({
      user: w.bob.id,
      text: 'where is it?',
      task: 'refer',
      generation: { temperature: 0.3 },
      requestId: `discord-${id}`,
    });
    expect(Buffer.from(req.image!)).toEqual(png);
    expect(req.key).toMatchObject({ platform: 'discord', workspace: w.guildId, channel: w.general });
    const { id: id2 } = w.fake.interact(w.general, w.bob, describeCommand({ image: att, task: 'hack' }));
    await answered(logs, id2);
    // no text and no valid task: a caption
    expect(manager.requests.at(-1)).toMatchObject({ text: '', task: 'caption' });
    expect(manager.requests.at(-1)!.generation).toBeUndefined();
  });
});

describe('where images come from', () => {
  let other: Server;
  let otherHits = 0;
  let otherUrl = '';
  beforeAll(async () => {
    other = createServer((_req, res) => {
      otherHits++;
      res.writeHead(200, { 'content-type': 'image/png' }).end(png);
    });
    await new Promise<void>((r) => other.listen(0, '127.0.0.1', r));
    otherUrl = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => other.close(() => r())));

  it('takes JPEG, WebP and GIF attachments, image embeds, CDN links and the replied-to message; nothing from other hosts', async () => {
    const sharp = (await import('sharp')).default;
    await start(streamed('ok'));
    const seen = () => manager.requests.at(-1)!;
    const variants: Array<[string, Buffer, string]> = [
      ['p.jpg', await sharp(png).jpeg().toBuffer(), 'image/jpeg'],
      ['p.webp', await sharp(png).webp().toBuffer(), 'image/webp'],
      ['p.gif', await sharp(png).gif().toBuffer(), 'image/gif'],
      ['noext', png, ''],
    ];
    for (const [name, data, type] of variants) {
      const m = w.fake.postMessage(w.general, w.alice, `file ${name}`, {
        mentionBot: true,
        attachments: [w.fake.addAttachment(name, data, type || undefined)],
      });
      if (type) {
        await answered(logs, m.id);
        expect(Buffer.from(seen().image!)).toEqual(data);
      } else {
        // no content type and no image extension: refused as not an image
        await until(() => repliesTo(w.general, m.id).length === 1, 'the refusal');
        expect(repliesTo(w.general, m.id)[0].content).toMatch(/`noext` is not one/);
      }
    }
    // An image embed and a link on the (fake) CDN host.
    const embedUrl = w.fake.addCdnFile('/attachments/9/9/embedded.png', png, 'image/png');
    const e = w.fake.postMessage(w.general, w.alice, 'embed', {
      mentionBot: true,
      embeds: [{ type: 'image', url: embedUrl, thumbnail: { url: embedUrl, proxy_url: embedUrl, width: 64, height: 48 } }],
    });
    await answered(logs, e.id);
    expect(Buffer.from(seen().image!)).toEqual(png);
    const linkUrl = w.fake.addCdnFile('/attachments/9/9/linked.png', png, 'image/png');
    const l = w.fake.postMessage(w.general, w.alice, `look: ${linkUrl}?ex=1&hm=2.`, { mentionBot: true });
    await answered(logs, l.id);
    expect(seen().text).toContain('look:');
    expect(Buffer.from(seen().image!)).toEqual(png);
    // A reply (with a mention) to someone's message with an image uses that image.
    const pic = w.fake.postMessage(w.general, w.bob, 'my picture', { attachments: [w.fake.addAttachment('bob.png', png, 'image/png')] });
    const r = w.fake.postMessage(w.general, w.alice, 'what is in it?', { mentionBot: true, replyTo: pic.id });
    await answered(logs, r.id);
    expect(seen().text).toBe('what is in it?');
    expect(Buffer.from(seen().image!)).toEqual(png);
    // A link to any other host is not an image source: the bot asks for one.
    const n = manager.requests.length;
    const x = w.fake.postMessage(w.general, w.alice, `this one ${otherUrl}/cat.png`, { mentionBot: true });
    await until(() => repliesTo(w.general, x.id).length === 1, 'the help reply');
    expect(repliesTo(w.general, x.id)[0].content).toMatch(/^Attach an image/);
    expect(manager.requests.length).toBe(n);
    // A CDN URL that redirects elsewhere is not followed.
    const red = w.fake.postMessage(
      w.general,
      w.alice,
      `redirected ${w.fake.origin}/redirect?to=${encodeURIComponent(`${otherUrl}/cat.png`)}`,
      { mentionBot: true },
    );
    await until(() => repliesTo(w.general, red.id).length === 1, 'the refusal');
    expect(repliesTo(w.general, red.id)[0].content).toBe(
      "⚠️ I only download images from Discord itself (attachments, or links to Discord's CDN).",
    );
    expect(otherHits).toBe(0);
    expect(manager.requests.length).toBe(n);
  });

  it("refuses images over the size cap (by Discord's size, then while downloading) and slow downloads", async () => {
    await start(streamed('ok'), { maxImageBytes: 1000, downloadTimeoutMs: 300 });
    const big = w.fake.postMessage(w.general, w.alice, 'big', {
      mentionBot: true,
      attachments: [w.fake.addAttachment('big.png', Buffer.concat([png, Buffer.alloc(2000)]), 'image/png')],
    });
    await until(() => repliesTo(w.general, big.id).length === 1, 'the refusal');
    expect(repliesTo(w.general, big.id)[0].content).toMatch(/^⚠️ That image is too large \(\d+\.\d KB\); the limit is 1000 bytes\.$/);
    // Discord said it was small; the CDN sends more.
    const lying = { ...w.fake.addAttachment('lying.png', Buffer.concat([png, Buffer.alloc(2000)]), 'image/png'), size: 500 };
    const l = w.fake.postMessage(w.general, w.alice, 'lying', { mentionBot: true, attachments: [lying] });
    await until(() => repliesTo(w.general, l.id).length === 1, 'the refusal');
    expect(repliesTo(w.general, l.id)[0].content).toMatch(/too large/);
    const slow = { ...w.fake.addAttachment('slow.png', png, 'image/png'), url: `${w.fake.origin}/slow` };
    const s = w.fake.postMessage(w.general, w.alice, 'slow', { mentionBot: true, attachments: [slow] });
    await until(() => repliesTo(w.general, s.id).length === 1, 'the refusal');
    expect(repliesTo(w.general, s.id)[0].content).toBe('⚠️ Downloading the image took too long; please try again.');
    expect(manager.requests).toHaveLength(0);
  });
});

describe('who may use it', () => {
  it('answers only in allowed channels (threads count as their channel) and guilds', async () => {
    await start(streamed('ok'), { allowedChannels: [w.general] });
    const before = w.fake.calls.length;
    w.fake.postMessage(w.other, w.alice, 'here?', { mentionBot: true, attachments: [w.fake.addAttachment('p.png', png, 'image/png')] });
    const { token } = w.fake.interact(w.other, w.alice, { id: '1', name: 'describe', type: 1, options: [] });
    const ok = mention(w.general, 'and here?');
    await answered(logs, ok.id);
    // In the thread (child of an allowed channel) follow-ups work.
    const f = w.fake.postMessage(ok.id, w.alice, 'follow');
    await answered(logs, f.id);
    await until(() => w.fake.interaction(token)?.callback !== undefined, 'the refusal');
    expect(w.fake.calls.slice(before).filter((c) => c.path.includes(w.other) && c.method !== 'GET')).toHaveLength(0);
    expect(w.fake.interaction(token)?.callback?.type).toBe(4);
    const cb = w.fake.calls.find((c) => c.path.includes(`/${token}/callback`))!;
    expect(cb.body.data).toMatchObject({ content: "I'm not enabled in this server or channel.", flags: 64 });
    expect(manager.requests.map((r) => r.text)).toEqual(['and here?', 'follow']);

    await adapter!.close();
    await start(streamed('ok'), { allowedGuilds: ['123456789012345678'], allowDMs: false });
    const n = w.fake.calls.length;
    const g = mention(w.general, 'guild?');
    const dm = w.fake.addDm(w.bob);
    const d = w.fake.postMessage(dm, w.bob, 'dm?', { attachments: [w.fake.addAttachment('p.png', png, 'image/png')] });
    // processed in order: a later event that is answered (a DM is not, so use an interaction's refusal)
    const { token: t2 } = w.fake.interact(w.general, w.alice, { id: '1', name: 'describe', type: 1, options: [] });
    await until(() => w.fake.interaction(t2)?.callback !== undefined, 'the refusal');
    expect(
      w.fake.calls
        .slice(n)
        .filter((c) => c.method !== 'GET' && !c.path.includes(t2))
        .map((c) => c.path),
    ).toEqual([]);
    expect([g.id, d.id].every((id) => !logs.some((l) => l.includes(id)))).toBe(true);
  });

  it('limits requests per user with one polite reply per window', async () => {
    await start(streamed('ok'), { rateLimit: { max: 2, windowMs: 60_000 } });
    const a = mention(w.general, 'one');
    await answered(logs, a.id);
    const b = mention(w.general, 'two');
    await answered(logs, b.id);
    const c = mention(w.general, 'three');
    await until(() => repliesTo(w.general, c.id).length === 1, 'the polite reply');
    expect(repliesTo(w.general, c.id)[0].content).toMatch(
      /^You're sending requests a bit fast: please wait \d+ seconds? before asking again\.$/,
    );
    // Over the limit again: no second reply in the channel in the same window; a command gets a private note.
    const d = mention(w.general, 'four');
    const bob = mention(w.general, 'bob is fine', true, w.bob);
    await answered(logs, bob.id);
    expect(repliesTo(w.general, d.id)).toHaveLength(0);
    const { token } = w.fake.interact(w.general, w.alice, describeCommand({ prompt: 'five' }));
    await until(() => w.fake.interaction(token)?.callback !== undefined, 'the private note');
    const cb = w.fake.calls.find((c) => c.path.includes(`/${token}/callback`))!;
    expect(cb.body).toMatchObject({ type: 4, data: { flags: 64 } });
    expect(cb.body.data.content).toMatch(/^You're sending requests a bit fast/);
    expect(manager.requests.map((r) => r.text)).toEqual(['one', 'two', 'bob is fine']);
  });
});

describe('robustness', () => {
  it('survives a failing manager, a failing Discord call and an unknown interaction, and logs no secrets', async () => {
    await start((req) => {
      if (req.text === 'explode') throw new Error('boom');
      if (req.text === 'broken stream') {
        return (async function* (): AsyncGenerator<AnswerEvent> {
          yield { type: 'text', text: 'partial' };
          throw new Error('stream broke');
        })();
      }
      return streamed('fine')(req);
    });
    const x = mention(w.general, 'explode');
    await until(() => repliesTo(w.general, x.id).length === 1, 'the apology');
    expect(repliesTo(w.general, x.id)[0].content).toBe('⚠️ Sorry, something went wrong on my side while handling that. Please try again.');
    const y = mention(w.general, 'broken stream');
    await until(() => logs.some((l) => l.includes(y.id) && l.includes('stream broke')), 'the failure log');
    // An interaction Discord does not know (expired): the callback fails; the error is logged without its token.
    const token = 'aW50ZXJhY3Rpb246c2VjcmV0LXRva2VuLXZhbHVl';
    dispatchUnknownInteraction(w, token);
    await until(() => logs.some((l) => l.includes('Unknown interaction')), 'the callback failure');
    // Still answering.
    const ok = mention(w.general, 'still there?');
    expect(await answered(logs, ok.id)).toMatch(/answered/);
    const all = logs.join('\n');
    expect(all).not.toContain(token);
    expect(all).not.toContain(w.fake.token);
    expect(all).toMatch(/\/interactions\/\d+\/\[token\]\/callback/);
  });

  it('close() cancels the answers in progress and disconnects', async () => {
    let aborted = false;
    await start(async function* (req) {
      yield { type: 'queued', position: 0 };
      yield { type: 'started' };
      yield { type: 'text', text: 'thinking' };
      await new Promise<void>((r) => req.signal!.addEventListener('abort', () => r(), { once: true }));
      aborted = true;
      yield { type: 'error', code: 'cancelled', message: 'The request was cancelled.' };
    });
    const m = mention(w.general, 'long job');
    await until(() => botMessagesIn(m.id).length === 1, 'the first text');
    const t0 = Date.now();
    await adapter!.close();
    adapter = undefined;
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(aborted).toBe(true);
    expect(botMessagesIn(m.id)[0].content).toBe('⚠️ The bot is restarting; please ask again in a moment.');
    await until(() => !w.fake.connected, 'the gateway to close');
  });

  it('fails to start with a clear error (no token in it) when the token is refused', async () => {
    await expect(
      startAdapter(w.fake, new ScriptedManager(streamed('x')), logs, { token: 'WRONG.token.value-1234567890', readyTimeoutMs: 10_000 }),
    ).rejects.toThrow(/^Discord refused DISCORD_TOKEN \(HTTP 401 Unauthorized\): check the bot token (?!.*WRONG\.token)/);
  });

  it('connected to nothing but the fake Discord on 127.0.0.1 (REST, gateway, CDN) in all of the above', () => {
    expect(connections.size).toBeGreaterThan(0);
    expect([...connections]).toEqual(['127.0.0.1']);
  });
});
