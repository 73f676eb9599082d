// The tokenizer.json of a random Llama folder: a valid SentencePiece-style Unigram vocabulary of any size, or the
// demo package's own when the vocabulary is its 512 (so a random package tokenizes like the trained demo).
import { fileURLToPath } from 'node:url';
import { access } from 'node:fs/promises';
import { addMiniGptPieces, pieceTable, SPECIAL_PIECES, unigramTokenizerJson } from '../unigram-tokenizer.js';

const WORDS = (
  'a an the this that is are was be it of in on at to with and or not no yes one two three four five six seven eight nine ten ' +
  'red orange yellow green blue purple pink brown black white gray circle square triangle rectangle star shape object ' +
  'small large big left right top bottom middle center above below next near far image picture photo scene background ' +
  'describe detail location give me what where which who how color size count see can you please answer question box area'
).split(' ');

/**
 * A valid SentencePiece-style (Unigram) tokenizer.json with exactly `vocab` pieces, laid out like Llama's:
 * `<unk>` 0, `<s>` 1, `</s>` 2, byte pieces `<0x00>`..`<0xFF>` 3..258 (when vocab >= 1024), then `▁`, printable
 * ASCII, the MiniGPT-v2 tags and box numbers, words, and letter pairs/triples (with and without `▁`) to fill up.
 */
export function randomTokenizerJson(vocab: number): Record<string, unknown> {
  if (!Number.isInteger(vocab) || vocab < SPECIAL_PIECES.length + 1) throw new Error(`vocab ${vocab} is too small for a tokenizer`);
  const t = pieceTable(vocab);
  const { pieces, add } = t;
  const byteFallback = vocab >= 1024;
  if (byteFallback) for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, -100);
  addMiniGptPieces(t, WORDS);
  const letters = 'etaoinshrdlucmfwypvbgkjqxz';
  for (let len = 2; pieces.length < vocab; len++) {
    const combos: string[] = [''];
    for (let k = 0; k < len; k++) {
      const next: string[] = [];
      for (const c of combos) for (const l of letters) next.push(c + l);
      combos.splice(0, combos.length, ...next);
      if (combos.length > 4 * vocab) break;
    }
    for (const c of combos) {
      add(`▁${c}`, -4 - len);
      add(c, -5 - len);
      if (pieces.length >= vocab) break;
    }
  }
  return unigramTokenizerJson(pieces, byteFallback);
}

/** models/demo/tokenizer.json of this repository (from src/convert/random-checkpoints or dist/src/convert/random-checkpoints), if present. */
export async function demoTokenizerPath(): Promise<string | undefined> {
  for (const rel of ['../../../models/demo/tokenizer.json', '../../../../models/demo/tokenizer.json']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    try {
      await access(p);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}
