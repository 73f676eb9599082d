#!/usr/bin/env node
// Builds models/demo: the embedded default package until the trained demo model exists (issue 7).
// Its weights are the tiny RANDOM MiniGPT-v2 checkpoints of test/fixtures/minigptv2-tiny (in the published
// formats), converted by our own converter, with a small SentencePiece-style (Unigram) tokenizer.json of
// exactly 512 pieces written here, so text round-trips exactly (box syntax included). Answers are nonsense.
//
//   npm run build && node scripts/build-demo-model.mjs [--out models/demo]
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
const FIXTURE = join(ROOT, 'test', 'fixtures', 'minigptv2-tiny');
const VOCAB_SIZE = 512;

const WORDS = `a an the this that these there here is are was be it its of in on at to with and or but not no yes
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

const SPECIAL = ['<unk>', '<s>', '</s>'];
const TAGS = ['[INST]', '[/INST]', '<Img>', '</Img>', '<ImageHere>', '<p>', '</p>', '<delim>', '[grounding]', '[refer]', '[detection]', '[identify]', '[vqa]', '[caption]', '{<', '>}', '><'];

function pieces() {
  const out = [];
  const seen = new Set(SPECIAL);
  const add = (p, score) => {
    if (seen.has(p) || out.length + SPECIAL.length >= VOCAB_SIZE) return;
    seen.add(p);
    out.push([p, score]);
  };
  add('▁', -3);
  // every printable ASCII character, so any ASCII text encodes without <unk>
  for (let c = 33; c < 127; c++) add(String.fromCharCode(c), -10);
  for (const t of TAGS) add(t, -1);
  for (let n = 0; n <= 100; n++) add(`<${n}>`, -1.5);
  for (const w of WORDS) add(`▁${w.replace(' ', '▁')}`, -2);
  for (let n = 0; n <= 100; n++) add(`▁${n}`, -2.5);
  // pad with two-letter syllables so the table has exactly VOCAB_SIZE entries
  const letters = 'etaoinshrdlucmfwypvbgk';
  for (const a of letters) for (const b of letters) add(`${a}${b}`, -6);
  if (out.length + SPECIAL.length !== VOCAB_SIZE) throw new Error(`demo vocabulary has ${out.length + SPECIAL.length} pieces, expected ${VOCAB_SIZE}`);
  return out;
}

export function demoTokenizerJson() {
  const special = SPECIAL.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special,
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }],
    },
    model: { type: 'Unigram', unk_id: 0, vocab: [...SPECIAL.map((s) => [s, 0]), ...pieces()], byte_fallback: false },
  };
}

async function main() {
  const outArg = process.argv.indexOf('--out');
  const out = outArg > 0 ? process.argv[outArg + 1] : join(ROOT, 'models', 'demo');
  const { convert } = await import(join(ROOT, 'dist', 'src', 'convert', 'convert.js'));
  const llm = await mkdtemp(join(tmpdir(), 'minigpt-demo-llm-'));
  try {
    for (const f of ['config.json', 'generation_config.json', 'model.safetensors']) await copyFile(join(FIXTURE, 'llama', f), join(llm, f));
    await writeFile(join(llm, 'tokenizer.json'), `${JSON.stringify(demoTokenizerJson())}\n`);
    // Replace only the package files: models/demo/train (the training recipe) lives beside them.
    for (const f of ['model.json', 'tokenizer.json', 'vision.onnx', 'vision.onnx.data', 'embed.onnx', 'embed.onnx.data', 'decoder.onnx', 'decoder.onnx.data']) {
      await rm(join(out, f), { force: true });
    }
    await convert({
      arch: 'minigpt-v2',
      vit: join(FIXTURE, 'eva_vit.pth'),
      llm,
      ckpt: join(FIXTURE, 'minigptv2_ckpt.pth'),
      vitHeads: 4,
      imageSize: 112,
      loraR: 8,
      loraAlpha: 16,
      out,
      log: (l) => console.error(l),
    });
  } finally {
    await rm(llm, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
