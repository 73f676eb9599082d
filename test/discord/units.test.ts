// The adapter's pure parts: splitting and escaping, thread names, the download policy, the rate limiter, log
// redaction and the DISCORD_* environment.
import { describe, expect, it } from 'vitest';
import {
  allowedUrl,
  answerMarkdown,
  discordOptionsFromEnv,
  downloadPolicy,
  redact,
  sniffImage,
  splitMessage,
  stripBotMention,
  threadName,
  UserRateLimiter,
} from '../../adapters/discord/index.js';
import { leftWhileOffline } from '../../adapters/discord/adapter.js';

describe('splitMessage', () => {
  it('leaves short text alone and cuts long text at paragraph, line, sentence, then word breaks', () => {
    expect(splitMessage('short')).toEqual(['short']);
    const para = 'a'.repeat(1200);
    expect(splitMessage(`${para}\n\n${para}`)).toEqual([para, para]);
    expect(splitMessage(`${para}\n${para}`)).toEqual([para, para]);
    const words = Array.from({ length: 500 }, (_, i) => `w${i}`).join(' ');
    const pieces = splitMessage(words, 100);
    expect(pieces.every((p) => p.length <= 100)).toBe(true);
    expect(pieces.join(' ')).toBe(words);
    const sentences = 'One sentence here. '.repeat(20).trim();
    expect(
      splitMessage(sentences, 100)
        .slice(0, -1)
        .every((p) => p.endsWith('.')),
    ).toBe(true);
  });

  it('cuts unbreakable text hard, but never inside an escape or a surrogate pair', () => {
    const escaped = '\\*'.repeat(100); // 200 chars of escaped stars
    const pieces = splitMessage(escaped, 51);
    expect(pieces.every((p) => p.length <= 51 && /^(\\\*)+$/.test(p))).toBe(true);
    expect(pieces.join('')).toBe(escaped);
    const emoji = '😀'.repeat(60);
    const ep = splitMessage(emoji, 33);
    expect(ep.join('')).toBe(emoji);
    expect(ep.every((p) => !/[\uD800-\uDBFF]$/.test(p) && !/^[\uDC00-\uDFFF]/.test(p))).toBe(true);
  });

  it('closes and reopens a bold span cut in two', () => {
    const text = `intro **${'bold words '.repeat(30).trim()}** outro`;
    const pieces = splitMessage(text, 120);
    expect(pieces.length).toBeGreaterThan(2);
    for (const p of pieces) {
      expect(p.length).toBeLessThanOrEqual(120);
      expect((p.match(/\*\*/g) ?? []).length % 2).toBe(0);
    }
    expect(pieces[1].startsWith('**')).toBe(true);
  });
});

describe('answerMarkdown', () => {
  it('bolds phrases, drops box syntax, escapes inline and line-start Markdown', () => {
    expect(answerMarkdown('<p>a dog</p> {<1><2><3><4>} on *grass*')).toBe('**a dog** on \\*grass\\*');
    expect(answerMarkdown('# big\n## less\n-# tiny\n  ### indented')).toBe('\\# big\n\\## less\n\\-# tiny\n\\### indented');
    expect(answerMarkdown('#hashtag and C# stay')).toBe('#hashtag and C# stay');
  });
});

describe('threadName and mentions', () => {
  it('names threads from the prompt: mentions and boxes removed, one line, at most 100 characters', () => {
    expect(threadName('<@123> what is\nthis? ')).toBe('what is this?');
    expect(threadName('[identify] what is this {<1><2><3><4>}')).toBe('[identify] what is this');
    expect(threadName('   ')).toBe('Image description');
    const long = threadName('word '.repeat(50));
    expect(long.length).toBeLessThanOrEqual(100);
    expect(long.endsWith('word…')).toBe(true);
  });

  it("strips only the bot's own mentions", () => {
    expect(stripBotMention('<@42> hi <@!42> <@7>', '42')).toBe('hi <@7>');
  });
});

describe('download policy', () => {
  it("allows Discord's CDN over https, and the configured API host with its own scheme", () => {
    const p = downloadPolicy();
    expect(allowedUrl('https://cdn.discordapp.com/attachments/1/2/a.png?ex=1', p)).toBe(true);
    expect(allowedUrl('https://media.discordapp.net/attachments/1/2/a.png', p)).toBe(true);
    expect(allowedUrl('http://cdn.discordapp.com/attachments/1/2/a.png', p)).toBe(false);
    expect(allowedUrl('https://cdn.discordapp.com.evil.example/a.png', p)).toBe(false);
    expect(allowedUrl('https://user:pw@cdn.discordapp.com/a.png', p)).toBe(false);
    expect(allowedUrl('https://example.com/a.png', p)).toBe(false);
    expect(allowedUrl('file:///etc/passwd', p)).toBe(false);
    expect(allowedUrl('not a url', p)).toBe(false);
    expect(allowedUrl('http://127.0.0.1:9999/x.png', p)).toBe(false);
    const t = downloadPolicy({ apiUrl: 'http://127.0.0.1:9999/api' });
    expect(allowedUrl('http://127.0.0.1:9999/x.png', t)).toBe(true);
    expect(allowedUrl('http://127.0.0.1:9998/x.png', t)).toBe(false);
  });

  it('recognises PNG, JPEG, GIF and WebP by their bytes', () => {
    expect(sniffImage(Buffer.from('89504e470d0a1a0a', 'hex'))).toBe('png');
    expect(sniffImage(Buffer.from('ffd8ffe0', 'hex'))).toBe('jpeg');
    expect(sniffImage(Buffer.from('GIF89a'))).toBe('gif');
    expect(sniffImage(Buffer.from('RIFF\0\0\0\0WEBPVP8 '))).toBe('webp');
    expect(sniffImage(Buffer.from('<svg></svg>'))).toBeNull();
  });
});

describe('UserRateLimiter', () => {
  it('allows max requests per sliding window per user, and one warning per window', () => {
    let now = 0;
    const rl = new UserRateLimiter(2, 1000, () => now);
    expect(rl.take('a').ok).toBe(true);
    now = 400;
    expect(rl.take('a').ok).toBe(true);
    const r = rl.take('a');
    expect(r).toEqual({ ok: false, retryAfterMs: 600 });
    expect(rl.take('b').ok).toBe(true);
    expect(rl.shouldWarn('a')).toBe(true);
    expect(rl.shouldWarn('a')).toBe(false);
    now = 1001;
    expect(rl.take('a').ok).toBe(true);
    expect(rl.take('a').ok).toBe(false);
    now = 2100;
    expect(rl.shouldWarn('a')).toBe(true);
  });
});

describe('redact', () => {
  it('removes the token, interaction tokens in paths and URL queries', () => {
    const token = 'MTIzNDU2Nzg5.abcdef.ghijklmnopqrstuvwxyz';
    const line =
      `failed PATCH https://discord.com/api/v10/webhooks/123/aW50ZXJhY3Rpb246MTIz/messages/@original with ${token}; ` +
      `image https://cdn.discordapp.com/attachments/1/2/a.png?ex=65&is=64&hm=abcdef& Authorization: Bot ${token}`;
    const out = redact(line, [token]);
    expect(out).not.toContain(token);
    expect(out).not.toContain('aW50ZXJhY3Rpb246MTIz');
    expect(out).not.toMatch(/hm=|ex=/);
    expect(out).toContain('/webhooks/123/[token]/messages/@original');
    expect(out).toContain('https://cdn.discordapp.com/attachments/1/2/a.png');
  });
});

describe('discordOptionsFromEnv', () => {
  it('reads the DISCORD_* variables', () => {
    expect(
      discordOptionsFromEnv({
        DISCORD_TOKEN: ' tok ',
        DISCORD_APP_ID: '123456789',
        DISCORD_API_URL: 'http://127.0.0.1:5000/api/',
        DISCORD_ALLOWED_GUILDS: '111111, 222222',
        DISCORD_ALLOWED_CHANNELS: '',
        DISCORD_ALLOW_DMS: 'false',
        DISCORD_RATE_LIMIT: '3/30',
      }),
    ).toEqual({
      token: 'tok',
      appId: '123456789',
      apiUrl: 'http://127.0.0.1:5000/api',
      allowedGuilds: ['111111', '222222'],
      allowedChannels: [],
      allowDMs: false,
      rateLimit: { max: 3, windowMs: 30_000 },
    });
    expect(discordOptionsFromEnv({ DISCORD_TOKEN: 't', DISCORD_RATE_LIMIT: '0' }).rateLimit).toBe(false);
    expect(discordOptionsFromEnv({ DISCORD_TOKEN: 't' })).toEqual({ token: 't', allowedGuilds: [], allowedChannels: [], allowDMs: true });
  });

  it('refuses bad values with the variable named', () => {
    expect(() => discordOptionsFromEnv({})).toThrow(/DISCORD_TOKEN is not set/);
    expect(() => discordOptionsFromEnv({ DISCORD_TOKEN: 't', DISCORD_API_URL: 'ftp://x' })).toThrow(/DISCORD_API_URL/);
    expect(() => discordOptionsFromEnv({ DISCORD_TOKEN: 't', DISCORD_ALLOWED_GUILDS: 'general' })).toThrow(/DISCORD_ALLOWED_GUILDS/);
    expect(() => discordOptionsFromEnv({ DISCORD_TOKEN: 't', DISCORD_RATE_LIMIT: 'lots' })).toThrow(/DISCORD_RATE_LIMIT/);
    expect(() => discordOptionsFromEnv({ DISCORD_TOKEN: 't', DISCORD_ALLOW_DMS: 'maybe' })).toThrow(/DISCORD_ALLOW_DMS/);
  });

  it("reads this front end's shards: ids and ranges of a count, both or neither", () => {
    const env = (shards?: string, count?: string) => ({ DISCORD_TOKEN: 't', DISCORD_SHARDS: shards, DISCORD_SHARD_COUNT: count });
    expect(discordOptionsFromEnv(env('4-6, 0,1 5', '8')).shards).toEqual({ ids: [0, 1, 4, 5, 6], count: 8 });
    expect(discordOptionsFromEnv(env('0', '1')).shards).toEqual({ ids: [0], count: 1 });
    expect(discordOptionsFromEnv(env(' ', '')).shards).toBeUndefined();
    expect(() => discordOptionsFromEnv(env('0-3'))).toThrow(/DISCORD_SHARDS and DISCORD_SHARD_COUNT go together/);
    expect(() => discordOptionsFromEnv(env(undefined, '4'))).toThrow(/DISCORD_SHARDS and DISCORD_SHARD_COUNT go together/);
    expect(() => discordOptionsFromEnv(env('0', 'four'))).toThrow(/DISCORD_SHARD_COUNT=four: expected a whole number/);
    expect(() => discordOptionsFromEnv(env('0', '0'))).toThrow(/DISCORD_SHARD_COUNT=0/);
    expect(() => discordOptionsFromEnv(env('2-4', '4'))).toThrow(/shard 4 does not exist with DISCORD_SHARD_COUNT=4 \(ids 0 to 3\)/);
    expect(() => discordOptionsFromEnv(env('3-1', '4'))).toThrow(/the range 3-1 runs backwards/);
    expect(() => discordOptionsFromEnv(env('first', '4'))).toThrow(/"first" is not a shard id or a range/);
  });
});

describe('leftWhileOffline', () => {
  // a server id on shard 1 of 2 (Discord: (id >> 22) % count) and one on shard 0
  const onShard1 = String((1234567n << 22n) | 12345n);
  const onShard0 = String((1234568n << 22n) | 12345n);
  it("is a server on one of this process's shards that the bot is not in; never DMs or another shard's server", () => {
    const none = () => false;
    expect(leftWhileOffline(onShard1, new Set([1]), 2, none)).toBe(true);
    expect(leftWhileOffline(onShard1, new Set([1]), 2, (id) => id === onShard1)).toBe(false);
    expect(leftWhileOffline(onShard0, new Set([1]), 2, none)).toBe(false);
    expect(leftWhileOffline(onShard0, new Set([0, 1]), 2, none)).toBe(true);
    expect(leftWhileOffline(onShard0, new Set([0]), 1, none)).toBe(true);
    expect(leftWhileOffline('@me', new Set([0]), 1, none)).toBe(false);
    expect(leftWhileOffline('not a server', new Set([0]), 1, none)).toBe(false);
    expect(leftWhileOffline(onShard0, new Set([0]), 0, none)).toBe(false);
  });
});
