#!/usr/bin/env node
/**
 * Writes test/fixtures/minigptv2-tiny/llama/tokenizer.json: a Hugging Face `tokenizers`-format
 * tokenizer that reproduces the FAKE tokenizer used to produce the MiniGPT-v2 tiny golden data
 * (see the fixture README, "Fake tokenizer"):
 *
 *   pieces = re.findall(r'<s>|</s>|\[/?[A-Za-z]+\]|</?[A-Za-z]+>|[A-Za-z0-9]+|[^\sA-Za-z0-9]', text)
 *   '<s>' -> 1, '</s>' -> 2, any other piece -> 3 + crc32(utf8(piece)) % 509,
 *   add_special_tokens=True prepends 1.
 *
 * Structure (loadable by tokenizers.js and by the Rust/Python `tokenizers` library):
 *   - model: WordLevel (tokenizers.js has no WordLevel class; it loads such a model through its
 *     "Legacy" plain vocab lookup, with the unk token passed in the tokenizer config), unk `<unk>` = 0;
 *   - added tokens `<unk>` 0, `<s>` 1, `</s>` 2 (special, so a literal `<s>` in text is the BOS id, as
 *     with the real LlamaTokenizer);
 *   - pre_tokenizer: Split on the fake tokenizer's regex with invert=true / behavior Removed (= findall);
 *   - post_processor: TemplateProcessing `<s> $A` (BOS only when add_special_tokens);
 *   - decoder: none, i.e. decoding joins the pieces with single spaces.
 *
 * Vocabulary: exactly 512 ids. Every "needed" piece (the golden prompt pieces from manifest.json,
 * the six task tags, `<p>`, `</p>`, `<delim>`, `{`, `}`, `<`, `>`, digits 0..100, punctuation and
 * a list of common English words) is mapped to its fake-tokenizer id. Because ids are a hash
 * modulo 509, different needed pieces can share an id: all of them are kept in the vocabulary
 * (so ENCODING matches the fake tokenizer for every one of them) and one of them is the
 * canonical piece that DECODING returns. The collisions are printed when this script runs.
 * Every id that no needed piece reaches gets a distinct pronounceable pseudo-word whose own
 * crc32 id is that id, so the whole vocabulary is consistent with the fake tokenizer and decoding
 * random-weight output gives readable nonsense.
 *
 * Canonical choice per id: golden/markup pieces > punctuation > English words > numbers; among
 * numbers only, the largest. (tokenizers.js builds its id->piece table from the JSON object in key
 * order, where JavaScript always puts integer-like keys such as "17" first, ascending; the order of
 * the other keys is preserved, so the canonical piece is written last among its aliases.)
 *
 * The same fake tokenizer serves the MiniGPT-4 tiny golden set (its README: "same as minigptv2-tiny"),
 * whose prompts have other pieces (`###`, `Human`, `Assistant`, the CONV_VISION_Vicuna0 system text), so
 * each fixture folder gets its own vocabulary built from its manifest's prompt segments
 * (`prompt_segments` + `chat_prompt_segments` for minigptv2-tiny, every `prompts.*.segments` for
 * minigpt4-tiny); everything else is identical.
 *
 * Usage: npm run build && node scripts/make-fixture-tokenizer.mjs [--fixture DIR] [output-path]
 *   --fixture  fixture folder with manifest.json (default test/fixtures/minigptv2-tiny; e.g.
 *              test/fixtures/minigpt4-tiny); output defaults to DIR/llama/tokenizer.json
 */
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
// the tokenizer.json parts Llama's layout shares (npm run build first, as the other scripts need)
const { bosTemplate, llamaTokenizerHead } = await import(pathToFileURL(join(ROOT, 'dist', 'src', 'convert', 'tokenizer-json.js')).href);

function parseArgs(argv) {
  const args = [...argv];
  let fixture = resolve(ROOT, 'test/fixtures/minigptv2-tiny');
  const i = args.indexOf('--fixture');
  if (i >= 0) {
    if (!args[i + 1]) throw new Error('--fixture needs a folder');
    fixture = resolve(args[i + 1]);
    args.splice(i, 2);
  }
  return { fixture, out: resolve(args[0] ?? resolve(fixture, 'llama/tokenizer.json')) };
}

export const VOCAB_SIZE = 512;
export const PIECE_REGEX_SOURCE = String.raw`<s>|</s>|\[/?[A-Za-z]+\]|</?[A-Za-z]+>|[A-Za-z0-9]+|[^\sA-Za-z0-9]`;

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** zlib.crc32 of the UTF-8 bytes of `s`, as an unsigned 32-bit integer. */
export function crc32(s) {
  const bytes = new TextEncoder().encode(s);
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** The fake tokenizer's id of one piece. */
export function fakeId(piece) {
  if (piece === '<s>') return 1;
  if (piece === '</s>') return 2;
  return 3 + (crc32(piece) % (VOCAB_SIZE - 3));
}

export function fakePieces(text) {
  return text.match(new RegExp(PIECE_REGEX_SOURCE, 'gu')) ?? [];
}

const TASK_TAGS = ['[grounding]', '[refer]', '[detection]', '[identify]', '[vqa]', '[caption]'];
const MARKUP = ['[INST]', '[/INST]', '<Img>', '</Img>', '<ImageHere>', '<p>', '</p>', '<delim>', '{', '}', '<', '>'];
const PUNCTUATION = ['.', ',', '?', '!', ':', ';', "'", '"', '(', ')', '-', '/', '[', ']', '#', '*', '&', '%', '+', '='];
const WORDS = `
a an the is are was were be been it its this that these those there here what which who where when why how
and or but not no yes of in on at to from with without by for as into over under above below near next between
behind front left right top bottom middle center side corner up down
i you he she we they me him her us them my your his our their
do does did have has had can could will would should may might must
describe image picture photo photograph scene object objects person people man woman men women boy girl child
children dog cat horse bird car bus truck train bike bicycle boat plane table chair bed room house building street
road tree trees grass sky water sea beach mountain snow field city window door wall floor food plate cup bottle
red blue green yellow black white brown gray orange pink purple color colors large small big little tall long short
one two three four five many some all each other several few more most
standing sitting walking running holding wearing looking playing riding eating shows showing appears
see seen look looks like near
The A An This That There It What Where How Is Are Describe Please I
please give brief detailed answer question short sentence location bounding box identify refer detect caption
`
  .split(/\s+/)
  .filter(Boolean);

function pseudoWords() {
  const cons = 'bdfgklmnprstvz';
  const vows = 'aeiou';
  const syll = [];
  for (const c of cons) for (const v of vows) syll.push(c + v);
  const out = [...syll];
  for (const a of syll) for (const b of syll) out.push(a + b);
  for (const a of syll) for (const b of syll) for (const c of cons) out.push(a + b + c);
  return out;
}

function isIntegerLike(s) {
  // Keys that JavaScript objects order first (canonical array indices).
  return /^(0|[1-9][0-9]*)$/.test(s) && Number(s) < 2 ** 32 - 1;
}

/** The golden prompt segments of a fixture manifest (MiniGPT-v2 or MiniGPT-4 layout). */
export function manifestSegments(manifest) {
  if (manifest.prompts) return Object.values(manifest.prompts).flatMap((p) => p.segments ?? []);
  return [...manifest.prompt_segments, ...manifest.chat_prompt_segments];
}

export function buildFixtureTokenizer(manifest) {
  const golden = [];
  for (const seg of manifestSegments(manifest)) {
    golden.push(...fakePieces(seg.text));
  }
  const digits = Array.from({ length: 101 }, (_, i) => String(i));
  // Priority classes (lower = preferred canonical piece).
  const classes = [[...golden, ...MARKUP, ...TASK_TAGS], PUNCTUATION, WORDS, digits];
  const specials = new Set(['<unk>', '<s>', '</s>']);
  /** id -> pieces in priority order */
  const slots = new Map();
  const seen = new Set();
  for (const cls of classes) {
    for (const p of cls) {
      if (seen.has(p) || specials.has(p)) continue;
      const pieces = fakePieces(p);
      if (pieces.length !== 1 || pieces[0] !== p) throw new Error(`not a single fake-tokenizer piece: ${p}`);
      seen.add(p);
      const id = fakeId(p);
      if (!slots.has(id)) slots.set(id, []);
      slots.get(id).push(p);
    }
  }

  // Canonical = first non-integer-like piece in priority order, else the largest integer.
  const collisions = [];
  const vocabEntries = new Map(); // id -> ordered pieces, canonical LAST
  for (const [id, pieces] of slots) {
    const nonInt = pieces.filter((p) => !isIntegerLike(p));
    const canonical =
      nonInt.length > 0
        ? nonInt[0]
        : pieces
            .slice()
            .sort((a, b) => Number(a) - Number(b))
            .at(-1);
    const aliases = pieces.filter((p) => p !== canonical);
    vocabEntries.set(id, [...aliases, canonical]);
    if (pieces.length > 1) collisions.push({ id, canonical, aliases });
  }

  // Fill the remaining ids with pseudo-words hashing to exactly that id.
  for (const w of pseudoWords()) {
    if (vocabEntries.size === VOCAB_SIZE - 3) break;
    if (seen.has(w)) continue;
    const id = fakeId(w);
    if (vocabEntries.has(id)) continue;
    seen.add(w);
    vocabEntries.set(id, [w]);
  }
  for (let id = 3; id < VOCAB_SIZE; id++) {
    if (!vocabEntries.has(id)) throw new Error(`no piece found for id ${id}`);
  }

  const vocab = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let id = 3; id < VOCAB_SIZE; id++) for (const p of vocabEntries.get(id)) vocab[p] = id;

  const tokenizer = {
    ...llamaTokenizerHead(),
    normalizer: null,
    pre_tokenizer: {
      type: 'Split',
      pattern: { Regex: PIECE_REGEX_SOURCE },
      behavior: 'Removed',
      invert: true,
    },
    post_processor: bosTemplate(true),
    decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: '<unk>' },
  };
  return { tokenizer, collisions, golden: [...new Set(golden)] };
}

const isMain = process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const { fixture: FIXTURE_DIR, out: OUT } = parseArgs(process.argv.slice(2));
  const manifest = JSON.parse(readFileSync(resolve(FIXTURE_DIR, 'manifest.json'), 'utf8'));
  const { tokenizer, collisions } = buildFixtureTokenizer(manifest);
  // Sanity check against the ids recorded in the manifest.
  for (const seg of manifestSegments(manifest)) {
    const ids = fakePieces(seg.text).map(fakeId);
    if (seg.add_special_tokens) ids.unshift(1);
    if (JSON.stringify(ids) !== JSON.stringify(seg.ids)) {
      throw new Error(`fake tokenizer mismatch for ${JSON.stringify(seg.text)}: ${ids} vs ${seg.ids}`);
    }
  }
  mkdirSync(dirname(OUT), { recursive: true });
  writeFileSync(OUT, `${JSON.stringify(tokenizer, null, 2)}\n`);
  const nPieces = Object.keys(tokenizer.model.vocab).length;
  console.log(`wrote ${OUT}: ${VOCAB_SIZE} ids, ${nPieces} pieces`);
  console.log(`${collisions.length} ids shared by several needed pieces (canonical <- aliases):`);
  for (const c of collisions.sort((a, b) => a.id - b.id)) {
    console.log(`  ${c.id}: ${JSON.stringify(c.canonical)} <- ${c.aliases.map((a) => JSON.stringify(a)).join(', ')}`);
  }
}
