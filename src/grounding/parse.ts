/**
 * Parsing MiniGPT-v2 grounded answers.
 *
 * Syntax written by the model (upstream `demo_v2.py`, `bounding_box_size = 100`):
 *   - a box is `{<x1><y1><x2><y2>}` on a 0..100 grid (left, top, right, bottom);
 *   - a grounded phrase is `<p>phrase</p>` followed by one or more boxes joined by `<delim>`:
 *     `<p>a red car</p> {<10><20><30><40>}<delim>{<50><20><70><40>}`;
 *   - a `[refer]` answer is a bare box; an `[identify]` prompt contains the user's box.
 *
 * Upstream semantics (`extract_substrings` + `visualize_all_bbox_together`) and where we differ:
 *   - Upstream first cuts the text after its last `}` so an unfinished trailing box is ignored. We do
 *     the same and additionally report it (and an unclosed `<p>`, a dangling `<delim>`, a trailing
 *     `</p>` still waiting for its box, or a half-written tag) as `partial`.
 *   - Upstream pairs a phrase with the boxes that follow it up to the first `}` not followed by `<`
 *     (regex `<p>(.*?)\}(?!<)`), so `}<delim>{` continues the group and any text without newlines may
 *     sit between `</p>` and the first box. We pair the same way: a phrase takes the next box group if
 *     only plain text (no newline, no other phrase) separates them; `<delim>` may be surrounded by
 *     spaces, and boxes separated only by spaces (a forgotten `<delim>`, which upstream drops) also
 *     stay in the group. Upstream loses both phrases of `<p>a</p> <p>b</p> {box}` ("wrong string"); we give the box
 *     to `b`, and `a` (a phrase without box) yields no entity, like upstream.
 *   - Upstream draws a bare box only when the whole answer has no grounded phrase and exactly four
 *     integers (the `[refer]` case). We report every box group that follows no phrase as an entity with
 *     `phrase: null`.
 *   - Upstream merges repeated phrases into one entry (a dict keyed by the phrase, hence one colour);
 *     we keep one entity per occurrence (each has its own span) and the renderer colours by phrase.
 *   - Upstream requires exactly four integers per box (`-?\d+`); we also accept spaces inside the box
 *     and decimals, clamp to 0..gridSize and order the corners. Anything else is skipped, never thrown.
 *   - The plain text is upstream's `re.sub(r'{<\d+><\d+><\d+><\d+>}|<delim>', '', ...)` with the
 *     `<p>`/`</p>` tags removed (phrases kept) and spaces tidied.
 */

/** A box on the model's grid (0..gridSize, default 100): clamped, x1 <= x2, y1 <= y2. */
export interface GridBox {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

/** A box in pixels of the ORIGINAL (EXIF-oriented) image: integers, inside the image, size >= 1. */
export interface PixelBox {
  left: number;
  top: number;
  width: number;
  height: number;
}

/** A phrase (or `null` for bare boxes) with its boxes and its character span in the answer. */
export interface Entity {
  phrase: string | null;
  boxes: GridBox[];
  /** Start offset (inclusive) in the parsed text. */
  start: number;
  /** End offset (exclusive) in the parsed text. */
  end: number;
}

export interface ParseOptions {
  /** The model's box grid size; default 100 (MiniGPT-v2). */
  gridSize?: number;
}

export interface ParsedGrounding {
  entities: Entity[];
  /** The answer with phrases kept and box syntax (`{<..>}`, `<delim>`, `<p>`, `</p>`) removed. */
  plainText: string;
  /** True when the text ends in the middle of a box/phrase/tag (streaming: more is coming). */
  partial: boolean;
}

export const DEFAULT_GRID_SIZE = 100;

// ------------------------------------------------------------------------------------------------
// Tokeniser
// ------------------------------------------------------------------------------------------------

const NUM = String.raw`[-+]?(?:\d+(?:\.\d*)?|\.\d+)`;
const COORD = String.raw`\s*<\s*(${NUM})\s*>`;
/** A complete, well-formed box, anchored (sticky). */
const BOX_RE = new RegExp(String.raw`\{${COORD}${COORD}${COORD}${COORD}\s*\}`, 'y');
/** Something that looks like a box but is not a valid one (wrong count, junk inside), anchored. */
const BAD_BOX_RE = /\{\s*(?:<[^<>{}\n]*>\s*)+\}?/y;
const NUM_FULL_RE = new RegExp(`^${NUM}$`);
const NUM_PREFIX_RE = /^[-+]?(?:\d+(?:\.\d*)?|\.\d*)?$/;

/** True when `s` (starting with `{`) is a proper prefix of a well-formed box: streaming. */
function isBoxPrefix(s: string): boolean {
  const n = s.length;
  let i = 1;
  const ws = () => {
    while (i < n && /\s/.test(s[i])) i++;
  };
  for (let k = 0; k < 4; k++) {
    ws();
    if (i >= n) return true;
    if (s[i] !== '<') return false;
    i++;
    ws();
    if (i >= n) return true;
    const numStart = i;
    while (i < n && /[-+0-9.]/.test(s[i])) i++;
    const num = s.slice(numStart, i);
    if (i >= n) return NUM_PREFIX_RE.test(num);
    if (!NUM_FULL_RE.test(num)) return false;
    ws();
    if (i >= n) return true;
    if (s[i] !== '>') return false;
    i++;
  }
  ws();
  return i >= n;
}

const DELIM_RE = /<delim>/y;
const P_OPEN = '<p>';
const P_CLOSE = '</p>';
/** Tags that, cut short at the end of the text, make it `partial`. */
const TAGS = ['<p>', '</p>', '<delim>'];

type Token =
  | { kind: 'text'; start: number; end: number; value: string }
  | { kind: 'phrase'; start: number; end: number; value: string }
  | { kind: 'box'; start: number; end: number; box: GridBox | null }
  | { kind: 'delim'; start: number; end: number };

interface Tokens {
  tokens: Token[];
  partial: boolean;
  /** Text of an unclosed trailing `<p>` (shown in the plain text while streaming). */
  partialPhrase: string | null;
}

function tokenize(text: string, grid: number): Tokens {
  const tokens: Token[] = [];
  let partial = false;
  let partialPhrase: string | null = null;
  let textStart = 0;
  let i = 0;
  const n = text.length;
  const flushText = (end: number) => {
    if (end > textStart) tokens.push({ kind: 'text', start: textStart, end, value: text.slice(textStart, end) });
  };

  while (i < n) {
    const ch = text.charCodeAt(i);
    if (ch === 0x7b /* { */) {
      BOX_RE.lastIndex = i;
      const m = BOX_RE.exec(text);
      if (m) {
        flushText(i);
        const end = i + m[0].length;
        tokens.push({ kind: 'box', start: i, end, box: makeBox(m[1], m[2], m[3], m[4], grid) });
        i = textStart = end;
        continue;
      }
      if (n - i < 64 && isBoxPrefix(text.slice(i))) {
        // Unfinished box at the very end: streaming.
        flushText(i);
        partial = true;
        textStart = i = n;
        break;
      }
      BAD_BOX_RE.lastIndex = i;
      const bad = BAD_BOX_RE.exec(text);
      if (bad) {
        // Malformed box: removed from the text, takes part in grouping as a skipped box.
        flushText(i);
        const end = i + bad[0].length;
        tokens.push({ kind: 'box', start: i, end, box: null });
        i = textStart = end;
        continue;
      }
      i++;
      continue;
    }
    if (ch === 0x3c /* < */) {
      if (text.startsWith(P_OPEN, i)) {
        const contentStart = i + P_OPEN.length;
        let j = contentStart;
        for (; j < n; j++) {
          const c = text.charCodeAt(j);
          if (c === 0x0a || c === 0x7b || c === 0x7d) break; // newline, {, }
          if (c === 0x3c && (text.startsWith(P_CLOSE, j) || text.startsWith(P_OPEN, j))) break;
        }
        flushText(i);
        if (j < n && text.startsWith(P_CLOSE, j)) {
          const end = j + P_CLOSE.length;
          tokens.push({ kind: 'phrase', start: i, end, value: tidyPhrase(text.slice(contentStart, j)) });
          i = textStart = end;
          continue;
        }
        if (j >= n) {
          // Unclosed phrase at the end (streaming); a half-written `</p>` is not shown.
          let content = text.slice(contentStart);
          content = stripTagPrefixSuffix(content);
          partial = true;
          partialPhrase = content;
          textStart = i = n;
          break;
        }
        // Stray `<p>` (no `</p>` before a newline / box / next phrase): drop the tag, keep the text.
        i = textStart = contentStart;
        continue;
      }
      if (text.startsWith(P_CLOSE, i)) {
        // Stray `</p>`: drop it.
        flushText(i);
        i = textStart = i + P_CLOSE.length;
        continue;
      }
      DELIM_RE.lastIndex = i;
      if (DELIM_RE.test(text)) {
        flushText(i);
        tokens.push({ kind: 'delim', start: i, end: DELIM_RE.lastIndex });
        i = textStart = DELIM_RE.lastIndex;
        continue;
      }
      const rest = text.slice(i);
      if (rest.length < 7 && TAGS.some((t) => t.length > rest.length && t.startsWith(rest))) {
        // A tag cut short at the end: streaming.
        flushText(i);
        partial = true;
        textStart = i = n;
        break;
      }
    }
    i++;
  }
  flushText(n);
  return { tokens, partial, partialPhrase };
}

/** Removes a trailing proper prefix of `</p>` / `<p>` / `<delim>` (e.g. `abc</` -> `abc`). */
function stripTagPrefixSuffix(s: string): string {
  for (let k = Math.min(6, s.length); k >= 1; k--) {
    const tail = s.slice(s.length - k);
    if (TAGS.some((t) => t.length > k && t.startsWith(tail))) return s.slice(0, s.length - k);
  }
  return s;
}

function tidyPhrase(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

function toCoord(s: string, grid: number): number {
  const v = Number(s);
  if (!Number.isFinite(v)) return 0;
  return v < 0 ? 0 : Math.min(v, grid);
}

function makeBox(a: string, b: string, c: string, d: string, grid: number): GridBox {
  const x1 = toCoord(a, grid);
  const y1 = toCoord(b, grid);
  const x2 = toCoord(c, grid);
  const y2 = toCoord(d, grid);
  return {
    x1: Math.min(x1, x2),
    y1: Math.min(y1, y2),
    x2: Math.max(x1, x2),
    y2: Math.max(y1, y2),
  };
}

function gridOf(gridSize: number | undefined): number {
  return gridSize !== undefined && Number.isFinite(gridSize) && gridSize > 0 ? gridSize : DEFAULT_GRID_SIZE;
}

// ------------------------------------------------------------------------------------------------
// Public API
// ------------------------------------------------------------------------------------------------

/**
 * Parses a (possibly partial, streaming) MiniGPT-v2 answer. Never throws.
 */
export function parseGrounding(text: string, opts: ParseOptions = {}): ParsedGrounding {
  if (typeof text !== 'string') text = text == null ? '' : String(text);
  const grid = gridOf(opts.gridSize);
  const { tokens, partial, partialPhrase } = tokenize(text, grid);

  const entities: Entity[] = [];
  // Phrase waiting for its boxes; separated from the next box only by single-line text.
  let pending: { phrase: string; start: number } | null = null;
  // The group being built (after its first box).
  let group: Entity | null = null;
  let afterDelim = false;

  const closeGroup = () => {
    if (group && group.boxes.length > 0) entities.push(group);
    group = null;
    afterDelim = false;
  };

  for (const tok of tokens) {
    switch (tok.kind) {
      case 'phrase':
        closeGroup();
        pending = { phrase: tok.value, start: tok.start };
        break;
      case 'box': {
        if (group !== null) {
          // `{..}<delim>{..}` (or `{..} {..}`, boxes separated only by spaces): same group.
          afterDelim = false;
          const g: Entity = group;
          if (tok.box) {
            // A bare group starts at its first well-formed box.
            if (g.phrase === null && g.boxes.length === 0) g.start = tok.start;
            g.boxes.push(tok.box);
          }
          g.end = tok.end;
          break;
        }
        closeGroup();
        if (pending) {
          group = { phrase: pending.phrase || null, boxes: [], start: pending.start, end: tok.end };
          pending = null;
        } else {
          group = { phrase: null, boxes: [], start: tok.start, end: tok.end };
        }
        if (tok.box) group.boxes.push(tok.box);
        break;
      }
      case 'delim':
        if (group === null) break; // stray delimiter
        if (afterDelim)
          closeGroup(); // `<delim><delim>`: stop
        else afterDelim = true;
        break;
      case 'text': {
        const newline = tok.value.includes('\n');
        // Spaces may surround `<delim>`; any other text ends a box group.
        if (group !== null && (newline || tok.value.trim() !== '')) closeGroup();
        // A phrase may wait for its box across plain text, not across a line break (upstream `.`).
        if (pending && newline) pending = null;
        break;
      }
    }
  }
  // Streaming: a phrase still waiting for its box, or a group ending in `<delim>`.
  const last = tokens.length > 0 ? tokens[tokens.length - 1] : null;
  const lastSolid = [...tokens].reverse().find((t) => !(t.kind === 'text' && t.value.trim() === ''));
  let partialOut = partial;
  if (group !== null && afterDelim && !(last?.kind === 'text' && last.value.includes('\n'))) partialOut = true;
  if (lastSolid?.kind === 'phrase' && pending !== null) partialOut = true;
  closeGroup();

  return { entities, plainText: buildPlainText(tokens, partialPhrase), partial: partialOut };
}

function buildPlainText(tokens: Token[], partialPhrase: string | null): string {
  let out = '';
  for (const tok of tokens) {
    if (tok.kind === 'text' || tok.kind === 'phrase') out += tok.value;
    else out += ' '; // boxes and delimiters become a (tidied) space so words do not merge
  }
  if (partialPhrase !== null) out += partialPhrase;
  return tidySpaces(out);
}

function tidySpaces(s: string): string {
  return s
    .split('\n')
    .map((line) =>
      line
        .replace(/[ \t\u00a0]+/g, ' ')
        .replace(/ ([,.;:!?)\]}])/g, '$1')
        .replace(/([([{]) /g, '$1')
        .trim(),
    )
    .join('\n')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}

/**
 * Maps a grid box to pixels of an image of `width` x `height` (the original image after EXIF
 * orientation). Edges are rounded to the nearest pixel boundary (upstream scales by
 * `x / bounding_box_size * image_width`); the result is inside the image and at least 1x1.
 */
export function gridToPixels(box: GridBox, width: number, height: number, gridSize?: number): PixelBox {
  if (!(Number.isFinite(width) && Number.isFinite(height)) || width < 1 || height < 1) {
    throw new RangeError(`gridToPixels: invalid image size ${width}x${height}`);
  }
  const W = Math.floor(width);
  const H = Math.floor(height);
  const g = gridOf(gridSize);
  const c = (v: number) => (Number.isNaN(v) || !(v > 0) ? 0 : Math.min(v, g));
  const ax = c(box.x1);
  const bx = c(box.x2);
  const ay = c(box.y1);
  const by = c(box.y2);
  const [gx1, gx2] = ax <= bx ? [ax, bx] : [bx, ax];
  const [gy1, gy2] = ay <= by ? [ay, by] : [by, ay];
  const span = (lo: number, hi: number, size: number): [number, number] => {
    let a = Math.round((lo / g) * size);
    let b = Math.round((hi / g) * size);
    a = Math.min(Math.max(a, 0), size - 1);
    b = Math.min(Math.max(b, a + 1), size);
    return [a, b - a];
  };
  const [left, w] = span(gx1, gx2, W);
  const [top, h] = span(gy1, gy2, H);
  return { left, top, width: w, height: h };
}

/** Entities with their boxes in pixels (for `--json` output and the like). */
export function entitiesToPixels(
  entities: Entity[],
  width: number,
  height: number,
  gridSize?: number,
): Array<Omit<Entity, 'boxes'> & { boxes: GridBox[]; pixelBoxes: PixelBox[] }> {
  return entities.map((e) => ({
    ...e,
    pixelBoxes: e.boxes.map((b) => gridToPixels(b, width, height, gridSize)),
  }));
}

/**
 * The user's box in an `[identify]` prompt: the first well-formed `{<x1><y1><x2><y2>}`; failing
 * that, like upstream (`re.findall(r'-?\d+', user_message)` must give exactly 4), the four integers
 * of the prompt. Clamped to the grid and ordered; null when there is none.
 */
export function parseUserBox(prompt: string, gridSize?: number): GridBox | null {
  if (typeof prompt !== 'string') return null;
  const grid = gridOf(gridSize);
  const re = new RegExp(BOX_RE.source, 'g');
  const m = re.exec(prompt);
  if (m) return makeBox(m[1], m[2], m[3], m[4], grid);
  const ints = prompt.match(/-?\d+/g);
  if (ints && ints.length === 4) return makeBox(ints[0], ints[1], ints[2], ints[3], grid);
  return null;
}

/** `{<x1><y1><x2><y2>}` with integer coordinates (rounded, ordered, not below 0). */
export function formatBox(b: GridBox): string {
  const r = (v: number) => (Number.isFinite(v) ? Math.max(0, Math.round(v)) : 0);
  const x1 = r(b.x1);
  const y1 = r(b.y1);
  const x2 = r(b.x2);
  const y2 = r(b.y2);
  return `{<${Math.min(x1, x2)}><${Math.min(y1, y2)}><${Math.max(x1, x2)}><${Math.max(y1, y2)}>}`;
}

// ------------------------------------------------------------------------------------------------
// Display helpers
// ------------------------------------------------------------------------------------------------

/** Normalised key used to give every occurrence of a phrase the same colour. */
export function phraseKey(phrase: string | null): string {
  return phrase === null ? '\u0000null' : phrase.replace(/\s+/g, ' ').trim().toLowerCase();
}

/**
 * For each entity, the index of its phrase in order of first appearance (bare boxes share one
 * index); the renderer picks colour `palette[index % palette.length]`.
 */
export function phraseIndices(entities: Entity[]): number[] {
  const keys = new Map<string, number>();
  return entities.map((e) => {
    const k = phraseKey(e.phrase);
    let idx = keys.get(k);
    if (idx === undefined) {
      idx = keys.size;
      keys.set(k, idx);
    }
    return idx;
  });
}

export interface MarkdownOptions extends ParseOptions {
  /** Bold marker: `**` (Discord, CommonMark; default) or `*` (Slack mrkdwn). */
  bold?: '**' | '*';
}

/**
 * The answer as Markdown: grounded phrases in bold, box syntax removed, Markdown special characters
 * in the model's text escaped (upstream's `escape_markdown` escapes `<` and `>` for the same reason).
 */
export function groundingMarkdown(text: string, opts: MarkdownOptions = {}): string {
  if (typeof text !== 'string') text = text == null ? '' : String(text);
  const grid = gridOf(opts.gridSize);
  const bold = opts.bold ?? '**';
  const { tokens, partialPhrase } = tokenize(text, grid);
  const esc = (s: string) => s.replace(/([\\`*_~|<>[\]])/g, '\\$1');
  let out = '';
  for (const tok of tokens) {
    if (tok.kind === 'text') out += esc(tok.value);
    else if (tok.kind === 'phrase') out += tok.value ? `${bold}${esc(tok.value)}${bold}` : '';
    else out += ' ';
  }
  if (partialPhrase) out += esc(partialPhrase);
  return tidySpaces(out);
}
