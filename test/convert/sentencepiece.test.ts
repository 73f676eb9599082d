// SentencePiece tokenizer.model -> tokenizer.json, checked against Debian's sentencepiece tools: small models
// are trained with spm_train on a generated corpus, and spm_encode / spm_decode must agree with our converted
// tokenizer on a few thousand varied strings (whitespace runs, leading/trailing spaces, tabs, Unicode
// incl. CJK and emoji, digits, characters outside the vocabulary that need byte fallback).
// .ci/run installs the tools (apt-get install sentencepiece); nothing here is skipped without them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bpeMerges, convertSentencePieceFile, PieceType, readSentencePieceModel, SentencePieceError } from '../../src/convert/sentencepiece.js';
import { createTokenizer, loadTokenizer, type TextTokenizer } from '../../src/inference/tokenizer.js';
import { rng } from '../helpers/rng.js';
import { convertTinyV2 } from '../helpers/tiny-package.js';

const V2 = join(import.meta.dirname, '../fixtures/minigptv2-tiny');
const STRINGS = 3000;

const r = rng(20240611);
const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)];
const SYLLABLES = ['th', 'e', 'an', 'in', 'er', 'on', 're', 'at', 'st', 'en', 'ou', 'ing', 'ch', 'qu', 'ly', 'a', 'o', 'i', 'u', 's', 't', 'k', 'm', 'p', 'l'];
const UNICODE = ['café', 'naïve', 'Zürich', 'façade', 'Ελλάδα', 'москва', '日本語', 'テキスト', '中文字符', '한국어', 'עברית', 'العربية', 'हिन्दी', '😀', '👍🏽', '🇫🇷', '∑∫', '©®', 'ß', 'ﬁ'];
/** never in the training corpus: byte fallback (or NFKC) territory */
const RARE = ['\u{1F9EC}', 'ŋ', 'Ω', 'e\u0301', '𝔘', '\u00A0', '€', 'ā', '繁', '\u3000', '\u200B', '½'];
const PUNCT = [',', '.', '!', '?', "'", '...', '—', '#', '$', '%', '<', '>', '[', ']'];
const GAPS = [' ', ' ', ' ', ' ', '', '  ', '   ', '\t', ' \t ', '      '];

function word(): string {
  let w = '';
  for (let i = 1 + Math.floor(r() * 3); i > 0; i--) w += pick(SYLLABLES);
  return r() < 0.1 ? w[0].toUpperCase() + w.slice(1) : w;
}

function corpusLine(): string {
  const parts: string[] = [];
  for (let i = 3 + Math.floor(r() * 12); i > 0; i--) {
    const x = r();
    parts.push(x < 0.75 ? word() : x < 0.85 ? String(Math.floor(r() * 10000)) : x < 0.95 ? pick(UNICODE) : pick([',', '.', '!', '?', '(', ')', '-', ':', '"']));
  }
  return (r() < 0.1 ? '    ' : '') + parts.join(' ');
}

function testString(): string {
  const parts: string[] = [];
  for (let i = 1 + Math.floor(r() * 10); i > 0; i--) {
    const x = r();
    parts.push(x < 0.5 ? word() : x < 0.62 ? String(Math.floor(r() * 1e6)) : x < 0.75 ? pick(UNICODE) : x < 0.85 ? pick(RARE) : pick(PUNCT));
    parts.push(pick(GAPS));
  }
  let s = parts.join('');
  const lead = r();
  if (lead < 0.15) s = ` ${s}`;
  else if (lead < 0.25) s = `   ${s}`;
  if (r() < 0.2) s = s.replace(/\s+$/, '');
  return s;
}

/** Hand-picked edge cases first, then generated strings; no newlines (spm_encode reads one string per line). */
const EDGE = [
  'Hello world',
  ' Hello world',
  'Hello world ',
  '   leading and trailing   ',
  'a  b   c    d',
  '\tTabbed\ttext\t',
  '2024-06-11 12:34:56.789',
  '1234567890',
  '日本語のテキストです。',
  '中文 混合 English 和 数字 42',
  '👍🏽👍🏽 🇫🇷 \u{1F9EC}',
  'ŋΩ€ā 繁 𝔘',
  'e\u0301 versus é',
  '###Human: <Img> describe </Img>###Assistant:',
  '[INST] What is this? [/INST]',
  '\u2581already escaped\u2581',
  'x',
  ' ',
  '  ',
];

interface SpmConfig {
  name: string;
  args: string[];
  /** exact agreement expected (the Unigram lattice ties are broken in float32 by SentencePiece, float64 here) */
  minAgreement: number;
}

const CONFIGS: SpmConfig[] = [
  {
    // how Llama's tokenizer.model (Vicuna v0, Llama-2) was trained
    name: 'llama',
    args: [
      '--model_type=bpe',
      '--vocab_size=800',
      '--byte_fallback=true',
      '--normalization_rule_name=identity',
      '--remove_extra_whitespaces=false',
      '--add_dummy_prefix=true',
      '--split_digits=true',
      '--allow_whitespace_only_pieces=true',
      '--character_coverage=0.9999',
    ],
    minAgreement: 1,
  },
  { name: 'bpe-squeeze-whitespace', args: ['--model_type=bpe', '--vocab_size=600', '--byte_fallback=true', '--normalization_rule_name=identity'], minAgreement: 1 },
  { name: 'bpe-nmt-nfkc', args: ['--model_type=bpe', '--vocab_size=600', '--byte_fallback=true'], minAgreement: 1 },
  {
    name: 'bpe-no-dummy-prefix',
    args: ['--model_type=bpe', '--vocab_size=500', '--byte_fallback=true', '--normalization_rule_name=identity', '--remove_extra_whitespaces=false', '--add_dummy_prefix=false'],
    minAgreement: 1,
  },
  { name: 'unigram', args: ['--model_type=unigram', '--vocab_size=600', '--normalization_rule_name=identity', '--remove_extra_whitespaces=false'], minAgreement: 0.99 },
];

let work: string;
const strings = [...EDGE, ...Array.from({ length: STRINGS - EDGE.length }, testString)];

function spm(tool: string, args: string[], input?: string): string {
  try {
    return execFileSync(tool, args, { input, maxBuffer: 1 << 28, stdio: ['pipe', 'pipe', 'pipe'] }).toString('utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT') throw new Error(`${tool} not found: install Debian's sentencepiece tools (apt-get install -y sentencepiece; .ci/run does)`);
    throw new Error(`${tool} ${args.join(' ')} failed: ${err.stderr?.toString() ?? err.message}`);
  }
}

const modelPath = (name: string) => join(work, `${name}.model`);

function spmEncode(name: string, texts: readonly string[]): number[][] {
  const out = spm('spm_encode', [`--model=${modelPath(name)}`, '--output_format=id'], `${texts.join('\n')}\n`).split('\n');
  return texts.map((_, i) => (out[i].trim() ? out[i].trim().split(' ').map(Number) : []));
}

function spmDecode(name: string, ids: readonly number[][]): string[] {
  // an empty line is not a valid id list for spm_decode: decode the non-empty ones
  const rows = ids.map((x, i) => ({ x, i })).filter((v) => v.x.length > 0);
  const out = spm('spm_decode', [`--model=${modelPath(name)}`, '--input_format=id'], `${rows.map((v) => v.x.join(' ')).join('\n')}\n`).split('\n');
  const result = ids.map(() => '');
  rows.forEach((v, k) => (result[v.i] = out[k]));
  return result;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-spm-'));
  await writeFile(join(work, 'corpus.txt'), `${Array.from({ length: 6000 }, corpusLine).join('\n')}\n`);
  for (const c of CONFIGS) {
    spm('spm_train', [`--input=${join(work, 'corpus.txt')}`, `--model_prefix=${join(work, c.name)}`, '--minloglevel=2', '--num_threads=1', '--seed_sentencepiece_size=20000', ...c.args]);
  }
}, 300_000);

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('reading tokenizer.model', () => {
  it('reads the pieces, the trainer and the normaliser spec as spm_train wrote them', async () => {
    const m = readSentencePieceModel(await readFile(modelPath('llama')));
    expect(m.trainer).toMatchObject({ modelType: 'bpe', vocabSize: 800, byteFallback: true, unkId: 0, bosId: 1, eosId: 2, padId: -1, splitDigits: true });
    expect(m.trainer).toMatchObject({ unkPiece: '<unk>', bosPiece: '<s>', eosPiece: '</s>' });
    expect(m.normalizer).toMatchObject({ name: 'identity', addDummyPrefix: true, removeExtraWhitespaces: false, escapeWhitespaces: true });
    expect(m.normalizer.precompiledCharsmap.length).toBe(0);
    expect(m.pieces).toHaveLength(800);
    expect(m.pieces.slice(0, 3).map((p) => [p.piece, p.type])).toEqual([
      ['<unk>', PieceType.UNKNOWN],
      ['<s>', PieceType.CONTROL],
      ['</s>', PieceType.CONTROL],
    ]);
    const bytes = m.pieces.filter((p) => p.type === PieceType.BYTE);
    expect(bytes.map((p) => p.piece)).toEqual(Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`));

    const nfkc = readSentencePieceModel(await readFile(modelPath('bpe-nmt-nfkc')));
    expect(nfkc.normalizer).toMatchObject({ name: 'nmt_nfkc', removeExtraWhitespaces: true });
    expect(nfkc.normalizer.precompiledCharsmap.length).toBeGreaterThan(1000);
    expect(readSentencePieceModel(await readFile(modelPath('unigram'))).trainer.modelType).toBe('unigram');
  });

  it('has the pieces and scores spm_export_vocab lists', async () => {
    const m = readSentencePieceModel(await readFile(modelPath('llama')));
    const listed = spm('spm_export_vocab', [`--model=${modelPath('llama')}`])
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split('\t'));
    expect(m.pieces.map((p) => p.piece)).toEqual(listed.map((l) => l[0]));
    m.pieces.forEach((p, i) => expect(p.score).toBeCloseTo(Number(listed[i][1]), 4));
  });

  it('rebuilds the merges from the scores: only NORMAL pieces, best-scoring merged piece first', () => {
    const P = (piece: string, score: number, type: (typeof PieceType)[keyof typeof PieceType] = PieceType.NORMAL) => ({ piece, score, type });
    const merges = bpeMerges([P('<unk>', 0, PieceType.UNKNOWN), P('<s>', 0, PieceType.CONTROL), P('ab', -1), P('abc', -2), P('bc', -3), P('a', -4), P('b', -5), P('c', -6), P('<', -7), P('s>', -8), P('s', -9), P('>', -10)]);
    expect(merges).toEqual([
      ['a', 'b'],
      ['ab', 'c'],
      ['a', 'bc'],
      ['b', 'c'],
      ['s', '>'],
    ]);
  });

  it('refuses what is not a SentencePiece model', async () => {
    await writeFile(join(work, 'bad.model'), 'not a model at all');
    await expect(convertSentencePieceFile(join(work, 'bad.model'))).rejects.toThrow(SentencePieceError);
    expect(() => readSentencePieceModel(new Uint8Array([0x0a, 0x05, 0x0a]))).toThrow(/runs past the end|truncated/);
  });
});

for (const c of CONFIGS) {
  describe(`${c.name}: our tokenizer.json against spm_encode / spm_decode on ${STRINGS} strings`, () => {
    let tok: TextTokenizer;
    let expected: number[][];
    const compared: number[] = [];

    beforeAll(async () => {
      tok = createTokenizer(await convertSentencePieceFile(modelPath(c.name)));
      expected = spmEncode(c.name, strings);
      strings.forEach((s, i) => {
        // Known difference: a text SentencePiece normalises to nothing (only squeezed-away whitespace) gives
        // no pieces; tokenizer.json's Prepend normaliser still yields the dummy "▁" (Hugging Face's does too).
        if (expected[i].length === 0 && s.length > 0) return;
        compared.push(i);
      });
    });

    it('gives the same ids', () => {
      const bad: string[] = [];
      for (const i of compared) {
        const ours = tok.encode(strings[i], { addBos: false });
        if (ours.join(' ') !== expected[i].join(' ')) bad.push(`${JSON.stringify(strings[i])}\n    spm  ${expected[i].join(' ')}\n    ours ${ours.join(' ')}`);
      }
      expect(compared.length).toBeGreaterThan(STRINGS - 20);
      const agreement = 1 - bad.length / compared.length;
      console.log(`${c.name}: ${compared.length - bad.length}/${compared.length} strings encode to spm_encode's ids (${strings.length - compared.length} normalised to nothing, not compared)`);
      if (c.minAgreement === 1) expect(bad.slice(0, 5)).toEqual([]);
      else expect(agreement, bad.slice(0, 3).join('\n')).toBeGreaterThanOrEqual(c.minAgreement);
    });

    it('decodes the ids as spm_decode does', () => {
      const spmText = spmDecode(c.name, expected);
      const bad: string[] = [];
      // <unk> (only without byte fallback) is written " ⁇ " by spm_decode and "<unk>" by tokenizer.json decoders
      const unkId = tok.tokenToId('<unk>');
      for (const i of compared.filter((k) => !expected[k].includes(unkId as number))) {
        const ours = tok.decode(expected[i]);
        if (ours !== spmText[i]) bad.push(`${JSON.stringify(strings[i])}: spm ${JSON.stringify(spmText[i])} ours ${JSON.stringify(ours)}`);
      }
      expect(bad.slice(0, 5)).toEqual([]);
    });

    if (c.name === 'llama') {
      it('round-trips every string exactly (identity normalisation, no whitespace removal)', () => {
        // a literal "▁" is a space to SentencePiece: it comes back as one
        for (const s of strings) expect(tok.decode(tok.encode(s, { addBos: false }))).toBe(s.replaceAll('\u2581', ' '));
      });

      it('the strings exercise byte fallback, whitespace runs, split digits and multi-byte text', () => {
        const all = compared.map((i) => expected[i]);
        const byteIds = all.filter((ids) => ids.some((id) => id >= 3 && id < 3 + 256)).length;
        expect(byteIds).toBeGreaterThan(200);
        expect(strings.filter((s) => / {2,}/.test(s)).length).toBeGreaterThan(500);
        expect(strings.filter((s) => s.startsWith(' ')).length).toBeGreaterThan(300);
        expect(strings.filter((s) => /\s$/.test(s)).length).toBeGreaterThan(300);
        expect(strings.filter((s) => /[\u3040-\u9fff]/u.test(s)).length).toBeGreaterThan(300);
        expect(strings.filter((s) => /\p{Extended_Pictographic}/u.test(s)).length).toBeGreaterThan(300);
        // split_digits: every digit is its own piece
        const digits = tok.encode('1234567890', { addBos: false });
        expect(digits.length).toBeGreaterThanOrEqual(10);
        // with the BOS, as upstream's LlamaTokenizer encodes a prompt
        expect(tok.encode('Hello world', { addBos: true })).toEqual([1, ...spmEncode('llama', ['Hello world'])[0]]);
        expect(tok.bosId).toBe(1);
        expect(tok.eosId).toBe(2);
      });
    }
  });
}

describe('minigpt convert with a tokenizer.model-only language model folder (Vicuna v0)', () => {
  it('writes the converted tokenizer.json into the package and records tokenizer.model as its source', async () => {
    const llm = join(work, 'vicuna-like');
    await mkdir(llm, { recursive: true });
    for (const f of ['config.json', 'generation_config.json', 'model.safetensors']) await copyFile(join(V2, 'llama', f), join(llm, f));
    await copyFile(modelPath('llama'), join(llm, 'tokenizer.model'));
    const out = join(work, 'pkg');
    const meta = await convertTinyV2(out, { llm });
    expect(meta.tokenizer).toBe('tokenizer.json');
    expect(meta.provenance.sources.find((s) => s.role === 'tokenizer')?.path).toBe('tokenizer.model');
    const tok = await loadTokenizer(join(out, 'tokenizer.json'), { bosId: meta.llm.bosId, eosId: meta.llm.eosId });
    const sample = strings.slice(0, 200);
    const ids = spmEncode('llama', sample);
    sample.forEach((s, i) => expect(tok.encode(s, { addBos: false }), JSON.stringify(s)).toEqual(ids[i]));
    // a literal <s> in a prompt is the BOS token (upstream's Llama-2 chat template relies on it)
    expect(tok.encode('<s>[INST]', { addBos: false })[0]).toBe(1);

    await rm(join(llm, 'tokenizer.model'));
    await expect(convertTinyV2(join(work, 'pkg2'), { llm })).rejects.toThrow(
      /neither tokenizer.json nor a SentencePiece tokenizer.model/,
    );
  });
});
