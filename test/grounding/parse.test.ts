import { describe, expect, it } from 'vitest';
import {
  entitiesToPixels,
  formatBox,
  gridToPixels,
  groundingMarkdown,
  parseGrounding,
  parseUserBox,
  phraseIndices,
  type Entity,
  type GridBox,
} from '../../src/grounding/parse.js';
import { rng as mulberry32 } from '../helpers/rng.js';

/** A seeded PRNG with integer and pick helpers. */
function rng(seed: number) {
  const next = mulberry32(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)];
  return { next, int, pick };
}
type Rng = ReturnType<typeof rng>;

const box = (x1: number, y1: number, x2: number, y2: number): GridBox => ({ x1, y1, x2, y2 });

/** Checks the parser's invariants with plain code (fast); returns the result, throws on a violation. */
function checkInvariants(text: string, grid = 100) {
  const r = parseGrounding(text, { gridSize: grid });
  const fail = (why: string) => {
    throw new Error(`${why} for ${JSON.stringify(text)}: ${JSON.stringify(r)}`);
  };
  if (typeof r.plainText !== 'string' || typeof r.partial !== 'boolean') fail('bad result shape');
  let boxes = 0;
  let prevEnd = 0;
  for (const e of r.entities) {
    if (e.boxes.length === 0) fail('entity without boxes');
    if (!(e.phrase === null || typeof e.phrase === 'string')) fail('bad phrase');
    if (!(prevEnd <= e.start && e.start < e.end && e.end <= text.length)) fail('bad span');
    prevEnd = e.end;
    for (const b of e.boxes) {
      for (const v of [b.x1, b.y1, b.x2, b.y2]) if (!(Number.isFinite(v) && v >= 0 && v <= grid)) fail('box off grid');
      if (!(b.x1 <= b.x2 && b.y1 <= b.y2)) fail('box not ordered');
    }
    boxes += e.boxes.length;
  }
  // Every box needs its own closing brace.
  if (boxes > (text.match(/\}/g) ?? []).length) fail('more boxes than braces');
  return r;
}

describe('parseGrounding: MiniGPT-v2 syntax', () => {
  it('parses a phrase with several boxes joined by <delim>', () => {
    const text = '<p>a red car</p> {<10><20><30><40>}<delim>{<50><20><70><40>}';
    const r = parseGrounding(text);
    expect(r.partial).toBe(false);
    expect(r.plainText).toBe('a red car');
    expect(r.entities).toEqual([{ phrase: 'a red car', boxes: [box(10, 20, 30, 40), box(50, 20, 70, 40)], start: 0, end: text.length }]);
  });

  it('parses a grounded description and tidies the plain text', () => {
    const text =
      '<p>A man</p> {<12><3><45><97>} is sitting on <p>a wooden bench</p> {<0><50><100><99>} next to <p>a dog</p>{<60><70><80><90>}.';
    const r = parseGrounding(text);
    expect(r.plainText).toBe('A man is sitting on a wooden bench next to a dog.');
    expect(r.entities.map((e) => e.phrase)).toEqual(['A man', 'a wooden bench', 'a dog']);
    expect(r.entities[1].boxes).toEqual([box(0, 50, 100, 99)]);
    const e = r.entities[2];
    expect(text.slice(e.start, e.end)).toBe('<p>a dog</p>{<60><70><80><90>}');
    expect(r.partial).toBe(false);
  });

  it('a bare box ([refer] answer) is an entity with phrase null', () => {
    const r = parseGrounding('{<12><3><45><67>}');
    expect(r.entities).toEqual([{ phrase: null, boxes: [box(12, 3, 45, 67)], start: 0, end: 17 }]);
    expect(r.plainText).toBe('');
    expect(r.partial).toBe(false);
  });

  it('is lenient about spaces and decimals, clamps and orders', () => {
    const r = parseGrounding('{ < 12.5 > <3> < 45 ><-5>} and {<200><300><0><0>}');
    expect(r.entities.map((e) => e.boxes[0])).toEqual([box(12.5, 0, 45, 3), box(0, 0, 100, 100)]);
    expect(r.plainText).toBe('and');
  });

  it('honours gridSize', () => {
    const r = parseGrounding('{<10><20><300><2000>}', { gridSize: 1000 });
    expect(r.entities[0].boxes[0]).toEqual(box(10, 20, 300, 1000));
  });

  it('skips malformed boxes without throwing', () => {
    const text = '<p>cat</p> {<1><2><3>} then {<a><b><c><d>} and {<1><2><3><4><5>} {<5><6><7><8>}';
    const r = parseGrounding(text);
    // The phrase's group contains only malformed boxes -> no entity for it; the last box is bare.
    const start = text.indexOf('{<5><6>');
    expect(r.entities).toEqual([{ phrase: null, boxes: [box(5, 6, 7, 8)], start, end: text.length }]);
    expect(r.plainText).toBe('cat then and');
  });

  it('pairs like upstream: `}<delim>{` continues, spaces around <delim> allowed, text may separate phrase and box', () => {
    const r = parseGrounding('<p>x</p>{<1><2><3><4>} <delim> {<5><6><7><8>} <p>man</p> standing {<9><9><20><20>}');
    expect(r.entities.map((e) => [e.phrase, e.boxes.length])).toEqual([
      ['x', 2],
      ['man', 1],
    ]);
  });

  it('a phrase without box yields no entity; the next phrase gets the box (upstream drops both)', () => {
    const r = parseGrounding('<p>a</p> <p>b</p> {<1><2><3><4>}');
    expect(r.entities).toEqual([{ phrase: 'b', boxes: [box(1, 2, 3, 4)], start: 9, end: 32 }]);
    expect(r.plainText).toBe('a b');
  });

  it('phrases back to back without spaces', () => {
    const r = parseGrounding('<p>a</p>{<1><2><3><4>}<p>b</p>{<5><6><7><8>}');
    expect(r.entities.map((e) => e.phrase)).toEqual(['a', 'b']);
  });

  it('a line break ends a group and a waiting phrase', () => {
    const r = parseGrounding('<p>cars</p> {<1><2><3><4>}\n{<5><6><7><8>}\n<p>tree</p>\n{<9><9><9><9>}');
    expect(r.entities.map((e) => e.phrase)).toEqual(['cars', null, null]);
  });

  it('repeated phrases are separate entities with the same colour index', () => {
    const r = parseGrounding('<p>sofa</p>{<1><2><3><4>} and <p>lamp</p>{<1><2><3><4>} and <p>Sofa</p>{<5><6><7><8>}');
    expect(r.entities).toHaveLength(3);
    expect(phraseIndices(r.entities)).toEqual([0, 1, 0]);
  });

  it('stray tags are removed from the plain text', () => {
    const r = parseGrounding('a </p> b <delim> c <p>d\ne');
    expect(r.plainText).toBe('a b c d\ne');
    expect(r.entities).toEqual([]);
  });
});

describe('parseGrounding: streaming', () => {
  it.each([
    ['hello {<12><3', 'hello'],
    ['hello {', 'hello'],
    ['hello {<12><3><4><5>', 'hello'],
    ['hello <p>abc', 'hello abc'],
    ['hello <p>abc</', 'hello abc'],
    ['hello <p', 'hello'],
    ['a <de', 'a'],
    ['<p>x</p>', 'x'],
    ['<p>x</p>{<1><2><3><4>}<delim>', 'x'],
    ['<p>x</p>{<1><2><3><4>}<del', 'x'],
  ])('%j is partial', (text, plain) => {
    const r = parseGrounding(text);
    expect(r.partial).toBe(true);
    expect(r.plainText).toBe(plain);
  });

  it('an unfinished box is not an entity; the complete ones are', () => {
    const r = parseGrounding('<p>x</p>{<1><2><3><4>}<delim>{<5><6');
    expect(r.partial).toBe(true);
    expect(r.entities).toEqual([{ phrase: 'x', boxes: [box(1, 2, 3, 4)], start: 0, end: 22 }]);
  });

  it('finished answers are not partial', () => {
    for (const t of ['', 'plain text', '<p>x</p>{<1><2><3><4>}.', '{<1><2><3><4>}', 'a < b', '{not a box} }'])
      expect(parseGrounding(t).partial).toBe(false);
  });
});

describe('parseGrounding: never throws', () => {
  it('on non-string input', () => {
    expect(parseGrounding(undefined as unknown as string).entities).toEqual([]);
    expect(parseGrounding(null as unknown as string).plainText).toBe('');
    expect(parseGrounding(42 as unknown as string).plainText).toBe('42');
  });

  const PIECES = [
    '{',
    '}',
    '<',
    '>',
    '<p>',
    '</p>',
    '<delim>',
    '{<',
    '><',
    '>}',
    'p',
    '/',
    ' ',
    '\n',
    '.',
    '-',
    '+',
    'a',
    'Z',
    '1',
    '23',
    '100',
    '999',
    '\u0000',
    '😀',
    'é',
  ];
  it('on random strings (property)', () => {
    const R = rng(1234);
    for (let n = 0; n < 3000; n++) {
      let s = '';
      const len = R.int(0, 40);
      for (let i = 0; i < len; i++) s += R.next() < 0.8 ? R.pick(PIECES) : String.fromCharCode(R.int(0, 0xffff));
      checkInvariants(s);
      checkInvariants(s, R.pick([10, 100, 1000]));
    }
  });

  it('on mixtures of valid and garbage segments (property)', () => {
    const R = rng(99);
    for (let n = 0; n < 1500; n++) {
      const { text } = validAnswer(R);
      let s = '';
      for (const part of text.split(/(?=[<{])/)) {
        s += part;
        if (R.next() < 0.3)
          s += R.pick(['{<1><2>', '<p>', '</p>', '}', '{', '<delim>', '<<', '{<5><5><5><5><5>}', 'x\ny', '{<NaN><1><2><3>}']);
      }
      const r = checkInvariants(s);
      for (const e of r.entities) for (const b of e.boxes) expect(gridToPixels(b, 37, 11).width).toBeGreaterThan(0);
    }
  });

  it('on long pathological input in reasonable time', () => {
    const s = '{'.repeat(20000) + '<p>'.repeat(20000) + '{<1><2><3>'.repeat(5000);
    const t0 = Date.now();
    checkInvariants(s);
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});

/** A random well-formed answer and the entities it must parse to. */
function validAnswer(R: Rng): { text: string; expected: Array<{ phrase: string | null; boxes: GridBox[] }> } {
  const WORDS = ['a', 'man', 'red', 'car', 'the', 'dog', 'is', 'on', 'bench', 'tree', 'with'];
  const words = (k: number) => Array.from({ length: k }, () => R.pick(WORDS)).join(' ');
  const rbox = (): GridBox => {
    const a = R.int(0, 100);
    const b = R.int(0, 100);
    const c = R.int(0, 100);
    const d = R.int(0, 100);
    return box(Math.min(a, c), Math.min(b, d), Math.max(a, c), Math.max(b, d));
  };
  const expected: Array<{ phrase: string | null; boxes: GridBox[] }> = [];
  let text = '';
  const segments = R.int(1, 5);
  for (let s = 0; s < segments; s++) {
    const kind = R.next();
    // A bare box right after another group (only spaces between) would join that group.
    if (R.next() < 0.6 || kind >= 0.75) text += `${words(R.int(1, 4))} `;
    const boxes = Array.from({ length: R.int(1, 3) }, rbox);
    const boxText = boxes.map(formatBox).join(R.pick(['<delim>', ' <delim> ']));
    if (kind < 0.75) {
      const phrase = words(R.int(1, 3));
      text += `<p>${phrase}</p>${R.pick(['', ' '])}${boxText}`;
      expected.push({ phrase, boxes });
    } else {
      text += boxText;
      expected.push({ phrase: null, boxes });
    }
    text += R.pick([' ', '. ', ', ', '\n']);
  }
  return { text: text.trimEnd() + R.pick(['', '.']), expected };
}

const keyOf = (e: Entity) => `${e.start}|${e.phrase}|${e.boxes.map(formatBox).join(',')}`;

describe('parseGrounding: truncations of valid answers (property)', () => {
  it('parses valid answers exactly, and prefixes never invent boxes', () => {
    const R = rng(7);
    for (let n = 0; n < 400; n++) {
      const { text, expected } = validAnswer(R);
      const full = checkInvariants(text);
      expect(full.partial).toBe(false);
      expect(full.entities.map((e) => ({ phrase: e.phrase, boxes: e.boxes }))).toEqual(expected);
      expect(full.plainText).not.toMatch(/[<>{}]/);

      const fullBoxes = new Set(full.entities.flatMap((e) => e.boxes.map((b) => `${e.phrase}|${formatBox(b)}`)));
      const fullKeys = full.entities.map(keyOf);
      const problems: string[] = [];
      for (let cut = 0; cut <= text.length; cut++) {
        const prefix = text.slice(0, cut);
        const r = checkInvariants(prefix);
        for (const e of r.entities) {
          for (const b of e.boxes) {
            if (!fullBoxes.has(`${e.phrase}|${formatBox(b)}`)) problems.push(`invented box ${formatBox(b)} in ${JSON.stringify(prefix)}`);
          }
          // Same entity (same start, phrase) in the full answer, with at least these boxes.
          const match = full.entities.find((f) => f.start === e.start && f.phrase === e.phrase);
          if (!match || JSON.stringify(match.boxes.slice(0, e.boxes.length)) !== JSON.stringify(e.boxes)) {
            problems.push(`entity ${keyOf(e)} not in the full answer for ${JSON.stringify(prefix)}`);
          }
        }
        // Streaming text never shows box syntax.
        if (/[<>{}]/.test(r.plainText)) problems.push(`syntax in plain text ${JSON.stringify(r.plainText)}`);
        // A cut inside a box or tag is partial.
        const lastOpen = Math.max(prefix.lastIndexOf('{'), prefix.lastIndexOf('<'));
        const lastClose = Math.max(prefix.lastIndexOf('}'), prefix.lastIndexOf('>'));
        if (lastOpen > lastClose && !r.partial) problems.push(`not partial: ${JSON.stringify(prefix)}`);
      }
      expect(problems).toEqual([]);
      expect(fullKeys.length).toBe(expected.length);
    }
  });
});

describe('gridToPixels', () => {
  it('maps the grid to pixels of the original image', () => {
    expect(gridToPixels(box(0, 0, 100, 100), 500, 300)).toEqual({ left: 0, top: 0, width: 500, height: 300 });
    expect(gridToPixels(box(10, 20, 30, 40), 500, 300)).toEqual({ left: 50, top: 60, width: 100, height: 60 });
    expect(gridToPixels(box(10, 20, 300, 400), 640, 480, 1000)).toEqual({ left: 6, top: 10, width: 186, height: 182 });
  });

  it('degenerate and out-of-range boxes stay inside the image, at least 1x1', () => {
    expect(gridToPixels(box(100, 100, 100, 100), 500, 300)).toEqual({ left: 499, top: 299, width: 1, height: 1 });
    expect(gridToPixels(box(50, 50, 50, 50), 3, 3)).toEqual({ left: 2, top: 2, width: 1, height: 1 });
    expect(gridToPixels(box(-20, NaN, 500, Infinity), 10, 10)).toEqual({ left: 0, top: 0, width: 10, height: 10 });
    expect(gridToPixels(box(80, 90, 20, 10), 100, 100)).toEqual({ left: 20, top: 10, width: 60, height: 80 });
  });

  it('rejects a non-positive image size', () => {
    expect(() => gridToPixels(box(0, 0, 1, 1), 0, 10)).toThrow(RangeError);
  });

  it('random boxes and sizes are always inside the image (property)', () => {
    const R = rng(42);
    for (let n = 0; n < 5000; n++) {
      const W = R.int(1, 5000);
      const H = R.int(1, 5000);
      const g = R.pick([100, 100, 1000, 7]);
      const b = box(R.next() * 140 - 20, R.next() * 140 - 20, R.next() * 140 - 20, R.next() * 140 - 20);
      const p = gridToPixels(b, W, H, g);
      for (const v of [p.left, p.top, p.width, p.height]) expect(Number.isInteger(v)).toBe(true);
      expect(p.left).toBeGreaterThanOrEqual(0);
      expect(p.top).toBeGreaterThanOrEqual(0);
      expect(p.width).toBeGreaterThanOrEqual(1);
      expect(p.height).toBeGreaterThanOrEqual(1);
      expect(p.left + p.width).toBeLessThanOrEqual(W);
      expect(p.top + p.height).toBeLessThanOrEqual(H);
    }
  });

  it('entitiesToPixels adds pixel boxes', () => {
    const { entities } = parseGrounding('<p>cat</p>{<0><0><50><50>}');
    expect(entitiesToPixels(entities, 200, 100)[0].pixelBoxes).toEqual([{ left: 0, top: 0, width: 100, height: 50 }]);
  });
});

describe('parseUserBox / formatBox', () => {
  it('finds the [identify] box', () => {
    expect(parseUserBox('[identify] what is this {<4><50><30><65>}')).toEqual(box(4, 50, 30, 65));
    expect(parseUserBox('[identify] this { <30> <65> <4> <50> } is')).toEqual(box(4, 50, 30, 65));
    expect(parseUserBox('[identify] what is this {<4><50><300><65>}')).toEqual(box(4, 50, 100, 65));
  });

  it('falls back to exactly four integers like upstream, else null', () => {
    expect(parseUserBox('[identify] what is this 4 50 30 65')).toEqual(box(4, 50, 30, 65));
    expect(parseUserBox('[identify] what is this')).toBeNull();
    expect(parseUserBox('[identify] 1 2 3')).toBeNull();
    expect(parseUserBox(undefined as unknown as string)).toBeNull();
  });

  it('formats boxes as the model writes them', () => {
    expect(formatBox(box(4, 50, 30, 65))).toBe('{<4><50><30><65>}');
    expect(formatBox(box(30.4, 65.6, 4, 50))).toBe('{<4><50><30><66>}');
    const R = rng(5);
    for (let n = 0; n < 200; n++) {
      const b = box(R.int(0, 50), R.int(0, 50), R.int(50, 100), R.int(50, 100));
      expect(parseUserBox(`[identify] what is this ${formatBox(b)}`)).toEqual(b);
      expect(parseGrounding(formatBox(b)).entities[0].boxes[0]).toEqual(b);
    }
  });
});

describe('groundingMarkdown', () => {
  it('bolds phrases, removes boxes and escapes Markdown', () => {
    const text = '<p>A man</p> {<1><2><3><4>} is *near* <p>a_bench</p>{<5><6><7><8>}<delim>{<1><1><2><2>} <b>.';
    expect(groundingMarkdown(text)).toBe('**A man** is \\*near\\* **a\\_bench** \\<b\\>.');
    expect(groundingMarkdown(text, { bold: '*' })).toBe('*A man* is \\*near\\* *a\\_bench* \\<b\\>.');
  });
});
