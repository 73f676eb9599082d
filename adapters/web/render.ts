// The answer as the page shows it: plain text with box syntax removed, grounded phrases as coloured
// segments (the same colours as the annotated image). The page puts each segment in with textContent.
import { parseGrounding } from '../../src/grounding/parse.js';
import { entityColours } from '../../src/image/annotate.js';

export interface AnswerSegment {
  text: string;
  /** `#rrggbb` of the phrase's boxes in the annotated image; absent for plain text */
  colour?: string;
  /** number of boxes of a grounded phrase (or of a bare box group) */
  boxes?: number;
}

/** Splits a (final) answer into plain-text and grounded-phrase segments. Never throws. */
export function answerSegments(text: string): AnswerSegment[] {
  const raw = typeof text === 'string' ? text : '';
  const { entities } = parseGrounding(raw);
  const colours = entityColours(entities);
  const out: AnswerSegment[] = [];
  const plain = (s: string) => {
    const p = parseGrounding(s).plainText;
    if (p) out.push({ text: p });
  };
  let pos = 0;
  const order = entities.map((e, i) => ({ e, colour: colours[i] })).sort((a, b) => a.e.start - b.e.start);
  for (const { e, colour } of order) {
    if (e.start < pos) continue;
    plain(raw.slice(pos, e.start));
    out.push({ text: e.phrase ?? '▭', colour, boxes: e.boxes.length });
    pos = e.end;
  }
  plain(raw.slice(pos));
  return out;
}
