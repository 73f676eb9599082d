// Answer text for Discord: grounded phrases in bold, box syntax removed, the model's Markdown escaped, and
// answers over Discord's 2000-character limit split into clean pieces.
import { groundingMarkdown } from '../../src/grounding/parse.js';

/** Discord's limit on a message's content. */
export const DISCORD_MESSAGE_LIMIT = 2000;
/** Discord's limit on a thread name. */
export const THREAD_NAME_LIMIT = 100;

/**
 * The model's answer as Discord Markdown: `groundingMarkdown` bolds the phrases and escapes inline Markdown;
 * this also escapes what Discord reads at the start of a line (headings `#`, subtext `-#`, block quotes
 * and numbered lists stay harmless: `>` is escaped already, lists only indent).
 */
export function answerMarkdown(answer: string): string {
  return groundingMarkdown(answer, { bold: '**' }).replace(/^([ \t]*)(-?#{1,3}[ \t])/gm, '$1\\$2');
}

/** Whether the text ends inside an escape (an odd run of backslashes). */
function endsInEscape(s: string): boolean {
  let n = 0;
  for (let i = s.length - 1; i >= 0 && s[i] === '\\'; i--) n++;
  return n % 2 === 1;
}

/** Unescaped `**` markers in `s` (escaped characters skipped). */
function boldMarkers(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\') i++;
    else if (s[i] === '*' && s[i + 1] === '*') {
      n++;
      i++;
    }
  }
  return n;
}

/**
 * Splits Markdown into messages of at most `limit` characters: at a paragraph break, else a line break,
 * else a sentence end, else a space (in the second half of the piece), else anywhere that does not cut an
 * escape or a surrogate pair. A bold span cut in two is closed at the end of one piece and reopened at
 * the start of the next, so each piece renders on its own.
 */
export function splitMessage(text: string, limit = DISCORD_MESSAGE_LIMIT): string[] {
  if (limit < 16) throw new RangeError('splitMessage: limit too small');
  const out: string[] = [];
  let rest = text.trim();
  while (rest.length > limit) {
    const room = limit - 2; // space for a closing `**`
    const window = rest.slice(0, room);
    const floor = Math.floor(room / 2);
    let cut = -1;
    for (const sep of ['\n\n', '\n', '. ', ' ']) {
      const i = window.lastIndexOf(sep);
      if (i >= floor) {
        cut = i + (sep === '. ' ? 1 : 0);
        break;
      }
    }
    if (cut < 0) cut = room;
    while (cut > 1 && (endsInEscape(rest.slice(0, cut)) || /[\uD800-\uDBFF]/.test(rest[cut - 1]))) cut--;
    let piece = rest.slice(0, cut).trimEnd();
    rest = rest.slice(cut).trimStart();
    if (boldMarkers(piece) % 2 === 1) {
      piece += '**';
      rest = `**${rest}`;
    }
    if (piece) out.push(piece);
  }
  if (rest) out.push(rest);
  return out;
}

/** A thread name from the user's text (mentions and box syntax removed, one line, at most 100 characters). */
export function threadName(text: string, fallback = 'Image description'): string {
  const clean = text
    .replace(/<@[!&]?\d+>/g, ' ')
    .replace(/\{\s*(?:<[^<>{}\n]*>\s*)+\}/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  if (!clean) return fallback;
  if (clean.length <= THREAD_NAME_LIMIT) return clean;
  const cut = clean.slice(0, THREAD_NAME_LIMIT - 1);
  const space = cut.lastIndexOf(' ');
  return `${(space > 60 ? cut.slice(0, space) : cut).trimEnd()}…`;
}

/** A file name for inline code in a reply (no backticks, no line breaks, not too long). */
export function shownName(name: string): string {
  const n = name.replace(/[`\r\n]/g, '').trim() || 'file';
  return `\`${n.length > 60 ? `${n.slice(0, 57)}...` : n}\``;
}

/** A small-print line (Discord's `-#` subtext) for notices about fallbacks. */
export function notice(text: string): string {
  return `-# ${text}`;
}
