// SentencePiece tokenizer.model -> tokenizer.json, checked against Debian's sentencepiece tools: small models
// trained with spm_train on a generated corpus, and spm_encode / spm_decode must agree with our converted
// tokenizer on a few thousand varied strings (whitespace runs, leading/trailing spaces, tabs, Unicode
// incl. CJK and emoji, digits, characters outside the vocabulary that need byte fallback).
// The models and the tools' outputs are committed (test/fixtures/sentencepiece, made by
// scripts/make-spm-fixtures.ts with Debian's sentencepiece 0.1.97), so this needs none of the tools; where
// spm_encode is on PATH, the last test also asks it live.
import { beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import {
  bpeMerges,
  convertSentencePieceFile,
  PieceType,
  readSentencePieceModel,
  SentencePieceError,
} from '../../src/convert/sentencepiece.js';
import { createTokenizer, loadTokenizer, type TextTokenizer } from '../../src/inference/tokenizer.js';
import { convertTinyV2 } from '../helpers/tiny-package.js';
import { CONFIGS, SPM_TRAIN_COMMON, STRINGS, spmInputs, type SpmFixture } from './sentencepiece-inputs.js';
import { tempDirPerFile } from '../helpers/temp-dir.js';

const V2 = join(import.meta.dirname, '../fixtures/minigptv2-tiny');
const FIXTURES = join(import.meta.dirname, '../fixtures/sentencepiece');
const REGENERATE = 'regenerate it: npx vite-node scripts/make-spm-fixtures.ts (needs apt-get install -y sentencepiece)';

let work: string;
const { strings, corpus } = spmInputs();
const fixture = JSON.parse(gunzipSync(await readFile(join(FIXTURES, 'expected.json.gz'))).toString('utf8')) as SpmFixture;
const sha256 = (s: string | Uint8Array) => createHash('sha256').update(s).digest('hex');

const modelPath = (name: string) => join(FIXTURES, `${name}.model`);

/** spm_encode --output_format=id of the strings, as recorded in the fixture */
function spmEncode(name: string): number[][] {
  return fixture.models[name].encode.map((l) => (l ? l.split(' ').map(Number) : []));
}

/** spm_decode --input_format=id of the recorded ids (the recorded texts where not the string itself; '' for no ids) */
function spmDecode(name: string): string[] {
  const m = fixture.models[name];
  return strings.map((s, i) => (m.encode[i] ? (m.decode_differs[String(i)] ?? s) : ''));
}

/** Debian's tool, if it is on PATH */
function liveTool(tool: string, args: string[], input?: string): string | undefined {
  try {
    return execFileSync(tool, args, { input, maxBuffer: 1 << 28, stdio: ['pipe', 'pipe', 'pipe'] }).toString('utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT') return undefined;
    throw new Error(`${tool} ${args.join(' ')} failed: ${err.stderr?.toString() ?? err.message}`);
  }
}

tempDirPerFile('minigpt-spm-', (dir) => (work = dir));

describe('the committed fixture (test/fixtures/sentencepiece)', () => {
  it('was made from these strings, this corpus and these spm_train options', async () => {
    expect(fixture.strings, REGENERATE).toBe(STRINGS);
    expect(fixture.strings_sha256, `the test strings changed: ${REGENERATE}`).toBe(sha256(JSON.stringify(strings)));
    expect(fixture.corpus_sha256, `the training corpus changed: ${REGENERATE}`).toBe(sha256(`${corpus.join('\n')}\n`));
    expect(Object.keys(fixture.models)).toEqual(CONFIGS.map((c) => c.name));
    for (const c of CONFIGS) {
      const m = fixture.models[c.name];
      expect(m.spm_train, `${c.name}: the spm_train options changed: ${REGENERATE}`).toEqual([...SPM_TRAIN_COMMON, ...c.args]);
      expect(sha256(await readFile(modelPath(c.name))), `${c.name}.model is not the one the outputs were recorded with`).toBe(
        m.model_sha256,
      );
      expect(m.encode).toHaveLength(STRINGS);
    }
  });
});

describe('reading tokenizer.model', () => {
  it('reads the pieces, the trainer and the normaliser spec as spm_train wrote them', async () => {
    const m = readSentencePieceModel(await readFile(modelPath('llama')));
    expect(m.trainer).toMatchObject({
      modelType: 'bpe',
      vocabSize: 800,
      byteFallback: true,
      unkId: 0,
      bosId: 1,
      eosId: 2,
      padId: -1,
      splitDigits: true,
    });
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
    expect(bytes.map((p) => p.piece)).toEqual(
      Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`),
    );

    const nfkc = readSentencePieceModel(await readFile(modelPath('bpe-nmt-nfkc')));
    expect(nfkc.normalizer).toMatchObject({ name: 'nmt_nfkc', removeExtraWhitespaces: true });
    expect(nfkc.normalizer.precompiledCharsmap.length).toBeGreaterThan(1000);
    expect(readSentencePieceModel(await readFile(modelPath('unigram'))).trainer.modelType).toBe('unigram');
  });

  it('has the pieces and scores spm_export_vocab lists (recorded)', async () => {
    const m = readSentencePieceModel(await readFile(modelPath('llama')));
    const listed = fixture.llama_vocab;
    expect(m.pieces.map((p) => p.piece)).toEqual(listed.map((l) => l[0]));
    m.pieces.forEach((p, i) => expect(p.score).toBeCloseTo(Number(listed[i][1]), 4));
  });

  it('rebuilds the merges from the scores: only NORMAL pieces, best-scoring merged piece first', () => {
    const P = (piece: string, score: number, type: (typeof PieceType)[keyof typeof PieceType] = PieceType.NORMAL) => ({
      piece,
      score,
      type,
    });
    const merges = bpeMerges([
      P('<unk>', 0, PieceType.UNKNOWN),
      P('<s>', 0, PieceType.CONTROL),
      P('ab', -1),
      P('abc', -2),
      P('bc', -3),
      P('a', -4),
      P('b', -5),
      P('c', -6),
      P('<', -7),
      P('s>', -8),
      P('s', -9),
      P('>', -10),
    ]);
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
      expected = spmEncode(c.name);
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
        if (ours.join(' ') !== expected[i].join(' '))
          bad.push(`${JSON.stringify(strings[i])}\n    spm  ${expected[i].join(' ')}\n    ours ${ours.join(' ')}`);
      }
      expect(compared.length).toBeGreaterThan(STRINGS - 20);
      const agreement = 1 - bad.length / compared.length;
      console.log(
        `${c.name}: ${compared.length - bad.length}/${compared.length} strings encode to spm_encode's ids (${strings.length - compared.length} normalised to nothing, not compared)`,
      );
      if (c.minAgreement === 1) expect(bad.slice(0, 5)).toEqual([]);
      else expect(agreement, bad.slice(0, 3).join('\n')).toBeGreaterThanOrEqual(c.minAgreement);
    });

    it('decodes the ids as spm_decode does', () => {
      const spmText = spmDecode(c.name);
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
        expect(tok.encode('Hello world', { addBos: true })).toEqual([1, ...expected[strings.indexOf('Hello world')]]);
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
    const ids = spmEncode('llama');
    sample.forEach((s, i) => expect(tok.encode(s, { addBos: false }), JSON.stringify(s)).toEqual(ids[i]));
    // a literal <s> in a prompt is the BOS token (upstream's Llama-2 chat template relies on it)
    expect(tok.encode('<s>[INST]', { addBos: false })[0]).toBe(1);

    await rm(join(llm, 'tokenizer.model'));
    await expect(convertTinyV2(join(work, 'pkg2'), { llm })).rejects.toThrow(/neither tokenizer.json nor a SentencePiece tokenizer.model/);
  });
});

// Optional: where Debian's spm_encode is installed, our tokenizer against the tool itself (not the recording).
const liveVersion = liveTool('spm_encode', ['--version'])?.trim();

describe.runIf(liveVersion !== undefined)(
  `live: spm_encode on PATH (${liveVersion ?? 'not installed: the recorded outputs above are the check'})`,
  () => {
    for (const c of CONFIGS) {
      it(`${c.name}: our ids are spm_encode's`, async () => {
        const tok = createTokenizer(await convertSentencePieceFile(modelPath(c.name)));
        const out = (liveTool('spm_encode', [`--model=${modelPath(c.name)}`, '--output_format=id'], `${strings.join('\n')}\n`) ?? '').split(
          '\n',
        );
        let compared = 0;
        const bad: string[] = [];
        strings.forEach((s, i) => {
          const live = out[i].trim() ? out[i].trim().split(' ').map(Number) : [];
          if (live.length === 0 && s.length > 0) return; // normalised to nothing (see above)
          compared++;
          const ours = tok.encode(s, { addBos: false });
          if (ours.join(' ') !== live.join(' ')) bad.push(`${JSON.stringify(s)}\n    spm  ${live.join(' ')}\n    ours ${ours.join(' ')}`);
        });
        expect(compared).toBeGreaterThan(STRINGS - 20);
        if (c.minAgreement === 1) expect(bad.slice(0, 5)).toEqual([]);
        else expect(1 - bad.length / compared, bad.slice(0, 3).join('\n')).toBeGreaterThanOrEqual(c.minAgreement);
      });
    }
  },
);
