// Small SentencePiece-style (Unigram) tokenizer.json files laid out like Llama's, for packages without a real
// tokenizer: the demo model's 512 pieces (models/demo, models/demo/train, scripts/build-demo-model.mjs) and the random checkpoints'
// tokenizer of any vocabulary size (random-checkpoints.ts). `<unk>` 0, `<s>` 1, `</s>` 2, then the pieces.

import { bosTemplate, llamaDecoder, llamaNormalizer, llamaTokenizerHead, SPECIAL_PIECES } from './tokenizer-json.js';

export { SPECIAL_PIECES } from './tokenizer-json.js';

/** MiniGPT-v2's prompt and answer syntax, one piece each. */
const TAGS = [
  '[INST]',
  '[/INST]',
  '<Img>',
  '</Img>',
  '<ImageHere>',
  '<p>',
  '</p>',
  '<delim>',
  '[grounding]',
  '[refer]',
  '[detection]',
  '[identify]',
  '[vqa]',
  '[caption]',
  '{<',
  '>}',
  '><',
];

/** A piece table being filled: the special pieces first; `add` skips a piece already there and any past `size`. */
export interface PieceTable {
  /** [piece, score], the special pieces included */
  readonly pieces: [string, number][];
  add(piece: string, score: number): void;
}

export function pieceTable(size: number): PieceTable {
  const pieces: [string, number][] = SPECIAL_PIECES.map((s) => [s, 0]);
  const seen = new Set(SPECIAL_PIECES);
  return {
    pieces,
    add(piece, score) {
      if (pieces.length >= size || seen.has(piece)) return;
      seen.add(piece);
      pieces.push([piece, score]);
    },
  };
}

/**
 * The pieces every MiniGPT tokenizer here has: `▁`, every printable ASCII character (so any ASCII text encodes
 * without `<unk>`), the MiniGPT-v2 tags, the box numbers `<0>`..`<100>`, the words (a space in one becomes `▁`)
 * and the numbers 0..100 as words.
 */
export function addMiniGptPieces(t: PieceTable, words: readonly string[]): void {
  t.add('▁', -3);
  for (let c = 33; c < 127; c++) t.add(String.fromCharCode(c), -10);
  for (const tag of TAGS) t.add(tag, -1);
  for (let n = 0; n <= 100; n++) t.add(`<${n}>`, -1.5);
  for (const w of words) t.add(`▁${w.replace(' ', '▁')}`, -2);
  for (let n = 0; n <= 100; n++) t.add(`▁${n}`, -2.5);
}

/** tokenizer.json for a Unigram model of these pieces (the special pieces first), normalised and decoded like Llama's. */
export function unigramTokenizerJson(pieces: [string, number][], byteFallback: boolean): Record<string, unknown> {
  return {
    ...llamaTokenizerHead(),
    normalizer: llamaNormalizer(),
    pre_tokenizer: null,
    // without a second `<s>` in a pair, as the committed packages' tokenizer.json files have it
    post_processor: bosTemplate(false),
    decoder: llamaDecoder(),
    model: { type: 'Unigram', unk_id: 0, vocab: pieces, byte_fallback: byteFallback },
  };
}

const DEMO_VOCAB_SIZE = 512;

const DEMO_WORDS = `a an the this that these there here is are was be it its of in on at to with and or but not no yes
one two three four five six seven eight nine ten many few some all each both other
red orange yellow green blue purple pink brown black white gray grey gold silver cyan magenta
circle square triangle rectangle star ellipse hexagon diamond cross ring heart shape shapes object objects
small large big tiny huge medium left right top bottom middle center centre upper lower above below next
near far behind front between corner side edge image picture photo scene background foreground
describe description detail details location give me what where which who how color colour size count
there's i see can you please answer question image's point box boxes area region part
dog cat person man woman child car bus tree house sky grass water road building table chair cup
has have with without over under inside outside beside around across along against
first second third last largest smallest biggest closest leftmost rightmost only same different
striped dotted plain textured gradient noisy light dark bright pale shiny rotated tilted overlapping
number how_many identify detect detection grounding refer caption vqa located shown visible
thing things item items group pair row column lines line dots dot stripes pattern colors colours`
  .split(/\s+/)
  .filter(Boolean)
  .map((w) => w.replace('_', ' '));

/**
 * The demo model's tokenizer.json (models/demo): exactly 512 pieces, so text round-trips exactly (box syntax
 * included), padded with two-letter syllables; no byte fallback.
 */
export function demoTokenizerJson(): Record<string, unknown> {
  const t = pieceTable(DEMO_VOCAB_SIZE);
  addMiniGptPieces(t, DEMO_WORDS);
  const letters = 'etaoinshrdlucmfwypvbgk';
  for (const a of letters) for (const b of letters) t.add(`${a}${b}`, -6);
  if (t.pieces.length !== DEMO_VOCAB_SIZE) throw new Error(`demo vocabulary has ${t.pieces.length} pieces, expected ${DEMO_VOCAB_SIZE}`);
  return unigramTokenizerJson(t.pieces, false);
}
