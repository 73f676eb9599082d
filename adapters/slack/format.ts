// Text between Slack and the model: Slack's message markup in, mrkdwn out (grounded phrases in bold, box
// syntax removed), split within Slack's message size.
import { hideSecrets } from '../shared/errors.js';
import { groundingMarkdown } from '../../src/grounding/parse.js';
import { isTask } from '../../src/grounding/tasks.js';
import type { TaskTag } from '../../src/conversation/index.js';

/**
 * Longest text put in one Slack message. Slack truncates `text` at 40,000 characters and recommends at most
 * 4,000; the rest of a long answer goes into further messages in the thread.
 */
export const DEFAULT_MAX_MESSAGE_CHARS = 3500;

/** Escapes the three characters that are markup in Slack text (https://api.slack.com/reference/surfaces/formatting#escaping). */
export function escapeMrkdwn(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function unescapeSlack(s: string): string {
  return s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}

/**
 * A Slack message's text as the user meant it: the bot's own mentions removed, other mentions, channels
 * and links as their labels, `&lt;` `&gt;` `&amp;` unescaped (so `{<10><20><30><40>}` typed by a user is a box again).
 */
export function slackTextToPlain(text: string, botUserId?: string): string {
  if (typeof text !== 'string') return '';
  const out = text.replace(/<([^<>]*)>/g, (_m, inner: string) => {
    const [target, label] = splitOnce(inner, '|');
    if (target.startsWith('@')) {
      const id = target.slice(1);
      if (botUserId && id === botUserId) return ' ';
      return label ? `@${label}` : `@${id}`;
    }
    if (target.startsWith('#')) return label ? `#${label}` : `#${target.slice(1)}`;
    if (target.startsWith('!')) {
      // <!here>, <!channel>, <!subteam^ID|@team>, <!date^...|fallback>
      if (label) return label;
      return `@${target.slice(1).split('^')[0]}`;
    }
    return label || target;
  });
  return unescapeSlack(out)
    .replace(/[ \t]{2,}/g, ' ')
    .trim();
}

function splitOnce(s: string, sep: string): [string, string | undefined] {
  const i = s.indexOf(sep);
  return i < 0 ? [s, undefined] : [s.slice(0, i), s.slice(i + 1)];
}

/** Slack file links in a text (`https://x.slack.com/files/U123/F0ABC/name.png` or a file permalink): the file ids. */
export function fileIdsInText(text: string): string[] {
  const ids: string[] = [];
  const re = /https?:\/\/[^\s<>|]*?\/files(?:-pri|-tmb)?\/[A-Z0-9]+(?:-|\/)(F[A-Z0-9]{6,})/g;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) if (!ids.includes(m[1])) ids.push(m[1]);
  return ids;
}

/**
 * `/describe [task] prompt`: a leading task, written `[grounding]` as in the model's prompts or as a bare
 * word (`grounding ...`), and the rest; file links are removed from the prompt (their files are the image).
 */
export function parseDescribe(text: string): { task?: TaskTag; prompt: string; fileIds: string[] } {
  const fileIds = fileIdsInText(text);
  let plain = slackTextToPlain(text);
  for (const id of fileIds) {
    plain = plain.replace(new RegExp(String.raw`https?://\S*${id}\S*`, 'g'), ' ');
  }
  plain = plain.replace(/\s+/g, ' ').trim();
  const m = /^\[?([a-z]+)\]?(?=\s|$)/i.exec(plain);
  if (m && isTask(m[1].toLowerCase()) && m[0].startsWith('[') === m[0].endsWith(']')) {
    return { task: m[1].toLowerCase() as TaskTag, prompt: plain.slice(m[0].length).trim(), fileIds };
  }
  return { prompt: plain, fileIds };
}

/** One run of answer text, bold or not, unescaped. */
export interface Piece {
  text: string;
  bold: boolean;
}

/**
 * The answer (possibly partial while streaming) as runs of text: box syntax removed, grounded phrases
 * bold. Built on groundingMarkdown, whose output escapes the model's own markup characters with `\`,
 * so that only its bold markers are bare `*`.
 */
export function answerPieces(raw: string): Piece[] {
  const md = groundingMarkdown(raw, { bold: '*' });
  const pieces: Piece[] = [];
  let bold = false;
  let cur = '';
  const push = () => {
    if (cur) pieces.push({ text: cur, bold });
    cur = '';
  };
  for (let i = 0; i < md.length; i++) {
    const ch = md[i];
    if (ch === '\\' && i + 1 < md.length) {
      cur += md[++i];
    } else if (ch === '*') {
      push();
      bold = !bold;
    } else {
      cur += ch;
    }
  }
  push();
  return pieces;
}

/** Runs of text as mrkdwn: `*bold*` (whitespace kept outside the markers, which Slack requires), escaped. */
export function renderPieces(pieces: readonly Piece[]): string {
  let out = '';
  for (const p of pieces) {
    if (!p.bold) {
      out += escapeMrkdwn(p.text);
      continue;
    }
    const m = /^(\s*)([\s\S]*?)(\s*)$/.exec(p.text)!;
    out += m[2] ? `${m[1]}*${escapeMrkdwn(m[2])}*${m[3]}` : p.text;
  }
  return out;
}

/** The answer as one mrkdwn string. */
export function answerMrkdwn(raw: string): string {
  return renderPieces(answerPieces(raw));
}

/**
 * Splits runs of text into messages of at most `max` characters of mrkdwn each (bold runs cut at a split
 * are closed and reopened), preferring paragraph, line, sentence and word boundaries. `firstMax` is the
 * room in the first message (a header may take the rest).
 */
export function splitPieces(pieces: readonly Piece[], max: number, firstMax = max): string[] {
  // Flatten to characters with their bold flag.
  const chars: string[] = [];
  const bold: boolean[] = [];
  for (const p of pieces) {
    for (const ch of p.text) {
      chars.push(ch);
      bold.push(p.bold);
    }
  }
  const chunks: string[] = [];
  let start = 0;
  while (start < chars.length) {
    const limit = Math.max(8, chunks.length === 0 ? firstMax : max);
    // The longest run from `start` whose rendering fits (2 markers per bold run counted).
    let cost = 0;
    let end = start;
    for (; end < chars.length; end++) {
      let c = escapeMrkdwn(chars[end]).length;
      if (bold[end] && (end === start || !bold[end - 1])) c += 2;
      if (cost + c > limit) break;
      cost += c;
    }
    if (end < chars.length) {
      const cut = preferredCut(chars, start, end);
      if (cut > start) end = cut;
    }
    if (end === start) end = start + 1; // a single character wider than the limit cannot happen (>= 8)
    const slice = collect(chars, bold, start, end);
    const text = renderPieces(slice).trim();
    if (text) chunks.push(text);
    start = end;
    while (start < chars.length && /\s/.test(chars[start])) start++;
  }
  return chunks;
}

function collect(chars: string[], bold: boolean[], start: number, end: number): Piece[] {
  const out: Piece[] = [];
  for (let i = start; i < end; i++) {
    const last = out[out.length - 1];
    if (last && last.bold === bold[i]) last.text += chars[i];
    else out.push({ text: chars[i], bold: bold[i] });
  }
  return out;
}

/** The best place to end a chunk in (start, end]: after a blank line, a line, a sentence, a word; in the last half. */
function preferredCut(chars: string[], start: number, end: number): number {
  const floor = start + Math.floor((end - start) / 2);
  const find = (test: (i: number) => boolean): number => {
    for (let i = end; i > floor; i--) if (test(i)) return i;
    return -1;
  };
  const at = (i: number) => chars[i] ?? '';
  const candidates = [
    find((i) => at(i - 1) === '\n' && at(i - 2) === '\n'),
    find((i) => at(i - 1) === '\n'),
    find((i) => /[.!?]/.test(at(i - 2)) && /\s/.test(at(i - 1))),
    find((i) => /\s/.test(at(i - 1))),
  ];
  for (const c of candidates) if (c > 0) return c;
  return end;
}

/** mrkdwn chunks of an answer (at least one: a placeholder for an empty answer). */
export function answerChunks(raw: string, opts: { max?: number; firstMax?: number; empty?: string } = {}): string[] {
  const max = opts.max ?? DEFAULT_MAX_MESSAGE_CHARS;
  const chunks = splitPieces(answerPieces(raw), max, opts.firstMax ?? max);
  return chunks.length > 0 ? chunks : [opts.empty ?? '_(no answer)_'];
}

/** Removes anything token-like from a log line (bot/app/user tokens, file URLs' `t=` parameters, signatures). */
export function redact(line: string, secrets: readonly string[] = []): string {
  return hideSecrets(line, secrets, 6)
    .replace(/\bx(?:ox[a-z]|app)-[A-Za-z0-9-]+/g, 'xox?-[redacted]')
    .replace(/([?&](?:t|token|pub_secret)=)[^&\s"']+/gi, '$1[redacted]')
    .replace(/(Bearer\s+)[^\s"']+/gi, '$1[redacted]')
    .replace(/(v0=)[0-9a-f]{16,}/gi, '$1[redacted]');
}
