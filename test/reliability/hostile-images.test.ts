// Hostile images (issue 9): decompression bombs in every accepted format, truncated and corrupt files,
// animations, CMYK and 16-bit, wrong content types, zero bytes, SVGs that reference the network. Each gets a
// clear reply (an answer, or one sentence that says what is wrong), within a time and memory bound, and nothing
// is ever fetched. First through the conversation manager with the demo model, then through the Slack adapter
// (which trusts the file type Slack reports) and the Discord adapter (which sniffs the bytes).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import sharp from 'sharp';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager, type AnswerEvent } from '../../src/conversation/index.js';
import { preprocessImage } from '../../src/image/preprocess.js';
import { textReplies, useSlackAdapter } from '../slack/helpers.js';
import { answered, useDiscordAdapter } from '../discord/helpers.js';
import {
  animatedGif,
  animatedWebp,
  cmykJpeg,
  corrupt,
  gifBomb,
  jpegBomb,
  png16,
  pngBomb,
  pngOfZeros,
  samples,
  svgsReferencing,
  tiffBomb,
  webpBomb,
} from './hostile-inputs.js';
import { expectNoSecrets, FORCED } from './helpers.js';

const ROOT = join(import.meta.dirname, '..', '..');

let model: MiniGPT;
let manager: ConversationManager;
/** a loopback listener that SVG references point at: it must never see a connection */
let trap: Server;
let trapBase: string;
const trapHits: string[] = [];
let n = 0;

beforeAll(async () => {
  model = await MiniGPT.load(join(ROOT, 'models', 'demo'), { provider: 'cpu', threads: 1, forcedAnswer: FORCED });
  manager = new ConversationManager({ model, defaults: { maxNewTokens: 16, temperature: 0 } });
  trap = createServer((req, res) => {
    trapHits.push(`${req.method} ${req.url}`);
    res.writeHead(200, { 'content-type': 'image/png' }).end();
  });
  trap.on('connection', () => trapHits.push('connection'));
  await new Promise<void>((r) => trap.listen(0, '127.0.0.1', r));
  trapBase = `http://127.0.0.1:${(trap.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await manager?.close();
  await model?.close();
  await new Promise<void>((r) => (trap ? trap.close(() => r()) : r()));
});

interface Outcome {
  events: AnswerEvent[];
  ms: number;
  /** peak RSS growth over the request, MB */
  peakMb: number;
}

/** One request with `image` through the manager; measures time and the peak RSS growth while it runs. */
async function ask(image: Uint8Array, text = 'what is this?'): Promise<Outcome> {
  global.gc?.();
  const base = process.memoryUsage().rss;
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5);
  const t0 = performance.now();
  const events: AnswerEvent[] = [];
  try {
    for await (const ev of manager.handle({
      key: { platform: 'web', workspace: 'w', channel: 'c', thread: `hostile${n++}` },
      user: 'u',
      text,
      image,
    }))
      events.push(ev);
  } finally {
    clearInterval(timer);
  }
  peak = Math.max(peak, process.memoryUsage().rss);
  return { events, ms: performance.now() - t0, peakMb: (peak - base) / 1e6 };
}

const errorOf = (o: Outcome) => o.events.find((e): e is Extract<AnswerEvent, { type: 'error' }> => e.type === 'error');
const answeredOk = (o: Outcome) => o.events.some((e) => e.type === 'final');

/** A clear reply: one short sentence for the user, no stack trace, no internals. */
function expectClearRefusal(o: Outcome, re: RegExp): void {
  const err = errorOf(o);
  expect(err, `expected a refusal, got ${o.events.map((e) => e.type).join(',')}`).toBeDefined();
  expect(err!.code).toBe('bad_image');
  expect(err!.message).toMatch(re);
  expect(err!.message.length).toBeLessThan(200);
  expect(err!.message).not.toMatch(/\n\s+at |vips|sharp|Error:/);
}

describe('decompression bombs: refused from the header, fast, without decoding', () => {
  const bombs: Array<[string, () => Promise<Buffer>]> = [
    ['PNG 20000x20000', () => pngBomb(20000, 20000)],
    ['JPEG 65000x65000', () => jpegBomb(65000, 65000)],
    ['WebP 16383x16383', () => webpBomb(16383, 16383)],
    ['GIF 65535x65535', () => gifBomb(65535, 65535)],
    ['TIFF 60000x60000', () => tiffBomb(60000, 60000)],
  ];
  for (const [name, make] of bombs) {
    it(name, async () => {
      const file = await make();
      expect(file.length).toBeLessThan(200_000);
      const o = await ask(file);
      expectClearRefusal(o, /too large/i);
      expect(o.ms).toBeLessThan(2000);
      expect(o.peakMb).toBeLessThan(64);
    });
  }

  it('a PNG just under the pixel limit (7000x7000 of zeros, 140 KB) is decoded within bounds', async () => {
    const file = await pngOfZeros(7000, 7000);
    expect(file.length).toBeLessThan(200_000);
    const o = await ask(file);
    expect(answeredOk(o), JSON.stringify(errorOf(o))).toBe(true);
    expect(o.ms).toBeLessThan(20_000);
    expect(o.peakMb).toBeLessThan(600);
  });
});

describe('truncated and corrupt files', () => {
  it('PNG, JPEG, WebP and GIF cut short or with bytes overwritten: an answer or a clear refusal, never a crash', async () => {
    const s = await samples();
    const seen: string[] = [];
    for (const [fmt, good] of Object.entries(s)) {
      const cuts = [1, 8, 20, Math.floor(good.length / 3), Math.floor(good.length / 2), good.length - 10, good.length - 1];
      const variants: Array<[string, Buffer]> = [
        ...cuts.map((c) => [`${fmt} cut at ${c}`, good.subarray(0, c)] as [string, Buffer]),
        ...[1, 2, 3, 4, 5, 6].map((seed) => [`${fmt} corrupted #${seed}`, corrupt(good, seed * 7919)] as [string, Buffer]),
      ];
      for (const [label, bytes] of variants) {
        const o = await ask(bytes);
        expect(o.ms, label).toBeLessThan(3000);
        if (answeredOk(o)) {
          seen.push(`${label}: answered`);
          continue;
        }
        const err = errorOf(o);
        expect(err?.code, `${label}: ${JSON.stringify(err)}`).toBe('bad_image');
        expect(err!.message, label).toMatch(/corrupt|truncated|not an image|unsupported|no pixels|empty/i);
        expect(err!.message, label).not.toMatch(/\n\s+at |vips|Error:/);
        seen.push(`${label}: ${err!.message}`);
      }
    }
    // Most of them are refused (a JPEG without its last bytes may still decode; that is fine).
    expect(seen.filter((l) => !l.endsWith('answered')).length).toBeGreaterThan(seen.length / 2);
  });
});

describe('odd but valid images are answered', () => {
  it('an animated GIF of 300 frames and an animated WebP: only the first frame is read', async () => {
    for (const file of [await animatedGif(300), await animatedWebp(40)]) {
      const o = await ask(file);
      expect(answeredOk(o), JSON.stringify(errorOf(o))).toBe(true);
      expect(o.ms).toBeLessThan(5000);
      expect(o.peakMb).toBeLessThan(100);
    }
  });

  it('a CMYK JPEG and a 16-bit PNG', async () => {
    for (const file of [await cmykJpeg(), await png16()]) {
      const o = await ask(file);
      expect(answeredOk(o), JSON.stringify(errorOf(o))).toBe(true);
    }
  });
});

describe('not images at all', () => {
  it('zero bytes, text, HTML, noise, a PDF header: a clear refusal', async () => {
    expectClearRefusal(await ask(new Uint8Array(0)), /empty/i);
    expectClearRefusal(await ask(Buffer.from('hello, I am not an image')), /not an image/i);
    expectClearRefusal(await ask(Buffer.from('<!DOCTYPE html><html><body>Sign in</body></html>')), /not an image/i);
    expectClearRefusal(await ask(Buffer.from('%PDF-1.7\n1 0 obj\n<<>>\nendobj\n')), /not an image/i);
    const noise = Buffer.alloc(256 * 1024);
    for (let i = 0; i < noise.length; i++) noise[i] = (i * 2654435761) >>> 24;
    expectClearRefusal(await ask(noise), /not an image/i);
  });

  it('SVGs with external references are refused and nothing is fetched', async () => {
    for (const [name, svg] of Object.entries(svgsReferencing(trapBase))) {
      const o = await ask(svg);
      expectClearRefusal(o, /unsupported image format "svg"/i);
      await expect(preprocessImage(svg, { size: 32, mean: [0, 0, 0], std: [1, 1, 1] }), name).rejects.toThrow(/svg/i);
    }
    // Even handed to the image library directly (a path the bot never takes), librsvg resolves nothing remote.
    for (const svg of Object.values(svgsReferencing(trapBase)))
      await sharp(svg)
        .png()
        .toBuffer()
        .catch(() => undefined);
    await new Promise((r) => setTimeout(r, 200));
    expect(trapHits).toEqual([]);
  });
});

describe('through the adapters', () => {
  const slack = useSlackAdapter(() => manager, { updateIntervalMs: 20 });
  const discord = useDiscordAdapter(() => manager, { editIntervalMs: 50, rateLimit: false });

  it('Slack (the file type is what Slack says): each file gets one clear reply in its thread', async () => {
    const { fake } = slack;
    const cases: Array<[string, Buffer, string, RegExp]> = [
      ['empty.png', Buffer.alloc(0), 'image/png', /empty/i],
      ['bomb.png', await pngBomb(20000, 20000), 'image/png', /too large/i],
      ['drawing.png', svgsReferencing(trapBase).image, 'image/png', /unsupported image format "svg"/i],
      ['notes.png', Buffer.from('plain text, not a picture'), 'image/png', /not an image/i],
      ['cut.jpg', (await samples()).jpeg.subarray(0, 40), 'image/jpeg', /corrupt|truncated/i],
      ['photo.jpg', await cmykJpeg(), 'image/png', /green square/],
      ['anim.gif', await animatedGif(50), 'image/gif', /green square|red square/],
    ];
    const asked = [];
    for (const [name, data, mimetype] of cases) {
      const file = fake.addFile({ name, data, mimetype });
      asked.push((await fake.mention('CH', { text: `<@${fake.botUserId}> what is it?`, files: [file] })).msg);
    }
    for (let i = 0; i < cases.length; i++) {
      const m = asked[i];
      const re = cases[i][3];
      await fake.waitFor(
        () => textReplies(fake, 'CH', m.ts).some((r) => re.test(r.text) || /red square/.test(r.text)),
        30_000,
        `the reply to ${cases[i][0]}`,
      );
    }
    await new Promise((r) => setTimeout(r, 300));
    for (let i = 0; i < cases.length; i++) {
      const replies = textReplies(fake, 'CH', asked[i].ts);
      expect(replies, cases[i][0]).toHaveLength(1);
      if (!/square/.test(String(cases[i][3]))) expect(replies[0].text, cases[i][0]).toMatch(/^:warning: /);
    }
    expect(trapHits).toEqual([]);
  });

  it('Discord (bytes sniffed before anything else): wrong types and empty files are refused at once', async () => {
    const { w } = discord;
    const { fake } = w;
    const cases: Array<[string, Buffer, string, RegExp]> = [
      ['empty.png', Buffer.alloc(0), 'image/png', /is not one/],
      ['drawing.png', svgsReferencing(trapBase).image, 'image/png', /is not one/],
      ['drawing.svg', svgsReferencing(trapBase).use, 'image/svg+xml', /is not one/],
      ['bomb.webp', await webpBomb(16383, 16383), 'image/webp', /too large/i],
      ['anim.gif', await animatedGif(50), 'image/png', /red square/],
    ];
    for (const [name, data, type, re] of cases) {
      const msg = fake.postMessage(w.general, w.alice, 'what is it?', {
        attachments: [fake.addAttachment(name, data, type)],
        mentionBot: true,
      });
      await fake.waitFor(
        () =>
          [...fake.messagesIn(w.general), ...fake.messagesIn(msg.id)].some(
            (m) =>
              m.author.id === fake.bot.id && (m.message_reference?.message_id === msg.id || m.channel_id === msg.id) && re.test(m.content),
          ),
        30_000,
        `the reply to ${name}`,
      );
      if (name === 'anim.gif' || name === 'bomb.webp') await answered(discord.logs, msg.id);
    }
    expect(trapHits).toEqual([]);
    expectNoSecrets([...slack.logs, ...discord.logs], [w.fake.token, slack.fake.botToken, slack.fake.signingSecret]);
  });
});
