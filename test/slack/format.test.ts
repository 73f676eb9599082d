// The Slack adapter's pure parts: Slack text in, mrkdwn out, splitting, allowed file hosts, redaction, "seen" marks.
import { describe, expect, it } from 'vitest';
import Keyv from 'keyv';
import {
  answerChunks,
  answerMrkdwn,
  answerPieces,
  escapeMrkdwn,
  fileIdsInText,
  parseDescribe,
  redact,
  slackTextToPlain,
  splitPieces,
} from '../../adapters/slack/format.js';
import { isAllowedFileUrl, isImageFile, isSlackFileHost } from '../../adapters/slack/files.js';
import { sectionBlocks } from '../../adapters/slack/reply.js';
import { SeenSet } from '../../adapters/slack/dedupe.js';
import { normaliseApiUrl, slackOptionsFromEnv } from '../../adapters/slack/index.js';

describe('slack text in', () => {
  it('removes the bot mention, keeps other mentions, links and channels readable, unescapes', () => {
    expect(slackTextToPlain('<@U0BOT> what is <@U123|bob> holding?', 'U0BOT')).toBe('what is @bob holding?');
    expect(slackTextToPlain('<@U0BOT>   [identify] {&lt;10&gt;&lt;20&gt;&lt;30&gt;&lt;40&gt;} &amp; more', 'U0BOT')).toBe(
      '[identify] {<10><20><30><40>} & more',
    );
    expect(slackTextToPlain('see <https://example.com|the site> in <#C1|general> <!here>', 'U0BOT')).toBe('see the site in #general @here');
    expect(slackTextToPlain('<https://example.com>')).toBe('https://example.com');
    expect(slackTextToPlain(42 as unknown as string)).toBe('');
  });

  it('parses /describe [task] prompt and file links', () => {
    expect(parseDescribe('[grounding] what is here')).toEqual({ task: 'grounding', prompt: 'what is here', fileIds: [] });
    expect(parseDescribe('vqa what colour is the car?')).toEqual({ task: 'vqa', prompt: 'what colour is the car?', fileIds: [] });
    expect(parseDescribe('what is this')).toEqual({ prompt: 'what is this', fileIds: [] });
    expect(parseDescribe('[chatty] hello')).toEqual({ prompt: '[chatty] hello', fileIds: [] });
    expect(parseDescribe('')).toEqual({ prompt: '', fileIds: [] });
    const link = 'https://acme.slack.com/files/U0123ABC/F0123ABCD/cat.png';
    expect(parseDescribe(`caption <${link}>`)).toEqual({ task: 'caption', prompt: '', fileIds: ['F0123ABCD'] });
    expect(parseDescribe(`what is this ${link} please`)).toEqual({ prompt: 'what is this please', fileIds: ['F0123ABCD'] });
    expect(fileIdsInText('https://files.slack.com/files-pri/T0123-F0456DEFG/dog.jpg')).toEqual(['F0456DEFG']);
  });
});

describe('mrkdwn out', () => {
  it('bolds grounded phrases, drops box syntax, escapes &, <, >', () => {
    expect(answerMrkdwn('<p>a red car</p> {<10><20><30><40>} next to <p>a tree</p> {<1><2><3><4>}<delim>{<5><6><7><8>}.')).toBe(
      '*a red car* next to *a tree*.',
    );
    expect(answerMrkdwn('x < y & z > w')).toBe('x &lt; y &amp; z &gt; w');
    expect(answerMrkdwn('{<10><20><30><40>}')).toBe('');
    expect(escapeMrkdwn('<!channel>')).toBe('&lt;!channel&gt;');
  });

  it('shows a streaming answer without half-written syntax', () => {
    expect(answerMrkdwn('<p>a red')).toBe('a red');
    expect(answerMrkdwn('<p>a red car</p> {<10><2')).toBe('*a red car*');
    expect(answerPieces('<p>cat</p> {<1><2><3><4>} sits')).toEqual([
      { text: 'cat', bold: true },
      { text: ' sits', bold: false },
    ]);
  });

  it('splits long answers at boundaries within the limit, closing and reopening bold', () => {
    const para = 'One sentence here. Another sentence follows it. ';
    const raw = `${para.repeat(10)}\n\n<p>${'long phrase '.repeat(8).trim()}</p> {<1><2><3><4>} ${para.repeat(5)}`;
    const chunks = answerChunks(raw, { max: 120 });
    expect(chunks.length).toBeGreaterThan(5);
    for (const c of chunks) {
      expect(c.length).toBeLessThanOrEqual(120);
      expect((c.match(/\*/g) ?? []).length % 2).toBe(0);
      expect(c).toBe(c.trim());
    }
    // Sentence ends preferred.
    expect(chunks[0].endsWith('.')).toBe(true);
    // Nothing lost: the words come back in order.
    const words = (s: string) => s.replace(/\*/g, '').split(/\s+/).filter(Boolean);
    expect(chunks.flatMap(words)).toEqual(words(answerMrkdwn(raw)));
    // A first message with less room (a header).
    const withHeader = answerChunks(raw, { max: 120, firstMax: 60 });
    expect(withHeader[0].length).toBeLessThanOrEqual(60);
    // A word longer than the limit is cut.
    expect(splitPieces([{ text: 'x'.repeat(50), bold: false }], 20)).toEqual(['x'.repeat(20), 'x'.repeat(20), 'x'.repeat(10)]);
    // Escapes count.
    for (const c of splitPieces([{ text: '<'.repeat(30), bold: false }], 20)) expect(c.length).toBeLessThanOrEqual(20);
    expect(answerChunks('')).toEqual(['_(no answer)_']);
  });
});

describe('files', () => {
  it('sends the token only to Slack file hosts over https, or to the configured API origin', () => {
    expect(isAllowedFileUrl('https://files.slack.com/files-pri/T1-F1/a.png')).toBe(true);
    expect(isAllowedFileUrl('https://files-origin.slack.com/files-pri/T1-F1/a.png')).toBe(true);
    expect(isAllowedFileUrl('https://files.slack-gov.com/files-pri/T1-F1/a.png')).toBe(true);
    expect(isAllowedFileUrl('http://files.slack.com/files-pri/T1-F1/a.png')).toBe(false);
    expect(isAllowedFileUrl('https://files.slack.com.evil.com/a.png')).toBe(false);
    expect(isAllowedFileUrl('https://evilfiles.slack.com.example/a.png')).toBe(false);
    expect(isAllowedFileUrl('https://user:pw@files.slack.com/a.png')).toBe(false);
    expect(isAllowedFileUrl('https://files.slack.com:8443/a.png')).toBe(false);
    expect(isAllowedFileUrl('https://example.com/a.png')).toBe(false);
    expect(isAllowedFileUrl('not a url')).toBe(false);
    expect(isAllowedFileUrl('http://127.0.0.1:9999/files-pri/x', 'http://127.0.0.1:9999/api/')).toBe(true);
    expect(isAllowedFileUrl('http://127.0.0.1:9998/files-pri/x', 'http://127.0.0.1:9999/api/')).toBe(false);
    expect(isSlackFileHost('slack.com')).toBe(false);
  });

  it('knows images by MIME type or file type', () => {
    expect(isImageFile({ id: 'F1', mimetype: 'image/png' })).toBe(true);
    expect(isImageFile({ id: 'F1', filetype: 'jpg' })).toBe(true);
    expect(isImageFile({ id: 'F1', mimetype: 'image/svg+xml', filetype: 'svg' })).toBe(false);
    expect(isImageFile({ id: 'F1', mimetype: 'application/pdf', filetype: 'pdf' })).toBe(false);
  });
});

describe('settings and logs', () => {
  it('reads the environment', () => {
    expect(
      slackOptionsFromEnv({
        SLACK_BOT_TOKEN: 'xoxb-1',
        SLACK_SIGNING_SECRET: 's',
        SLACK_PORT: '3100',
        SLACK_API_URL: 'http://127.0.0.1:1/api',
      }),
    ).toEqual({
      botToken: 'xoxb-1',
      signingSecret: 's',
      port: 3100,
      apiUrl: 'http://127.0.0.1:1/api',
    });
    expect(slackOptionsFromEnv({ SLACK_BOT_TOKEN: 'xoxb-1', SLACK_APP_TOKEN: 'xapp-1' })).toEqual({
      botToken: 'xoxb-1',
      appToken: 'xapp-1',
    });
    expect(() => slackOptionsFromEnv({ SLACK_BOT_TOKEN: 'x', SLACK_PORT: 'http' })).toThrow(/SLACK_PORT=http/);
    expect(normaliseApiUrl('http://127.0.0.1:1/api')).toBe('http://127.0.0.1:1/api/');
    expect(normaliseApiUrl('')).toBeUndefined();
    expect(() => normaliseApiUrl('ftp://x')).toThrow(/http\(s\)/);
  });

  it('redacts tokens, secrets, signatures and file URL tokens', () => {
    const line = redact(
      'token xoxb-1234-5678-abcdef app xapp-1-A1-2-ff Bearer abc.def url https://files.slack.com/x.png?t=xoxe-999&x=1 sig v0=0123456789abcdef0123 secret s3cr3t-value',
      ['s3cr3t-value'],
    );
    expect(line).not.toMatch(/xoxb-1234|xapp-1-A1|abc\.def|xoxe-999|0123456789abcdef0123|s3cr3t-value/);
    expect(line).toContain('x=1');
  });
});

describe('seen marks', () => {
  it('claims once, locally and through the store (a restart)', async () => {
    const store = new Keyv();
    const a = new SeenSet(store, 'slack:event:', 60_000, () => {});
    expect(await a.claim('Ev1')).toBe(true);
    expect(await a.claim('Ev1')).toBe(false);
    const results = await Promise.all([a.claim('Ev2'), a.claim('Ev2'), a.claim('Ev2')]);
    expect(results.filter(Boolean)).toHaveLength(1);
    const b = new SeenSet(store, 'slack:event:', 60_000, () => {});
    expect(await b.claim('Ev1')).toBe(false);
    expect(await b.claim('Ev3')).toBe(true);
    expect(await b.has('Ev3')).toBe(true);
  });

  it('keeps working when the store fails', async () => {
    const broken = {
      get: () => Promise.reject(new Error('disk gone')),
      set: () => Promise.reject(new Error('disk gone')),
    } as unknown as Keyv;
    const lines: string[] = [];
    const s = new SeenSet(broken, 'slack:event:', 60_000, (l) => lines.push(l));
    expect(await s.claim('Ev1')).toBe(true);
    expect(await s.claim('Ev1')).toBe(false);
    expect(lines.join('\n')).toContain('disk gone');
  });
});

describe('sectionBlocks (the text of a message with a Stop button)', () => {
  it('keeps a short text in one section block', () => {
    expect(sectionBlocks('*a* b')).toEqual([{ type: 'section', text: { type: 'mrkdwn', text: '*a* b' } }]);
  });

  it("cuts a text over Slack's 3000 characters a section at spaces or line breaks, losing nothing but the cut space", () => {
    const words = Array.from({ length: 1500 }, (_, i) => `w${i}`);
    const text = `${words.slice(0, 700).join(' ')}\n${words.slice(700).join(' ')}`;
    const blocks = sectionBlocks(text);
    expect(blocks.length).toBeGreaterThan(2);
    for (const b of blocks) expect(b.text.text.length).toBeLessThanOrEqual(3000);
    // every word once, in order, none split
    expect(blocks.flatMap((b) => b.text.text.split(/[ \n]/))).toEqual(words);
  });

  it('cuts a text without spaces at the limit', () => {
    const blocks = sectionBlocks('x'.repeat(7000));
    expect(blocks.map((b) => b.text.text.length)).toEqual([3000, 3000, 1000]);
  });
});
