// What the annotated image of an answer shows (drawn by src/image/annotate.ts).
import { parseGrounding, parseUserBox, type Entity } from '../grounding/parse.js';
import type { UserTurn } from './text.js';

/**
 * The answer's boxes; for `[identify]`, the user's box first, labelled with the answer (the answer names
 * what is in the box but has no box of its own).
 */
export function entitiesToDraw(turn: UserTurn, entities: readonly Entity[], answer: string): Entity[] {
  const drawn = entities.filter((e) => e.boxes.length > 0);
  if (turn.task === 'identify') {
    const box = parseUserBox(turn.prompt);
    if (box) {
      const label = parseGrounding(answer).plainText.trim().slice(0, 60) || 'your box';
      drawn.unshift({ phrase: label, boxes: [box], start: 0, end: 0 });
    }
  }
  return drawn;
}
