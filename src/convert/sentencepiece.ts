// SentencePiece `tokenizer.model` -> Hugging Face `tokenizer.json`, for language-model folders that only
// have the SentencePiece file (the Vicuna v0 folders). The model proto is decoded by hand (the few fields
// that matter; see sentencepiece_model.proto) and the tokenizer.json is the one Hugging Face's converter
// (transformers' LlamaConverter, legacy mode) writes for Llama, generalised to the normaliser options:
//
//   BPE model:    vocab = every piece with its id; merges reconstructed from the pieces' scores (for each
//                 piece, every split into two pieces of the vocabulary, ranked by the merged piece's score,
//                 as transformers' `generate_merges` does); byte_fallback and `<unk>` from the trainer spec.
//   Unigram:      vocab = [piece, score] pairs, unk_id (tokenizers.js has no Unigram byte fallback).
//   normaliser:   remove_extra_whitespaces -> drop leading/trailing spaces and squeeze runs of spaces;
//                 add_dummy_prefix -> Prepend("▁"); escape_whitespaces -> Replace(" ", "▁");
//                 a non-identity normalisation rule -> Precompiled(charsmap) first.
//   decoder:      "▁" -> " ", byte fallback, fuse, and strip the dummy-prefix space.
//   added tokens: control and unknown pieces (<unk>, <s>, </s>) as special tokens, user-defined pieces as
//                 plain added tokens (SentencePiece matches them before segmenting, so does the tokenizer).
//
// SentencePiece's BPE merges the adjacent pair whose concatenation is the highest-scoring piece, leftmost
// first on ties; ranked merges reproduce that (checked against spm_encode in test/convert/sentencepiece.test.ts).
// Only NORMAL pieces take part in merges: SentencePiece never builds control, byte or unknown pieces from text.
import { readFile } from 'node:fs/promises';

export const PieceType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;
export type PieceTypeId = (typeof PieceType)[keyof typeof PieceType];

export interface SentencePiece {
  piece: string;
  score: number;
  type: PieceTypeId;
}

export type SpmModelType = 'unigram' | 'bpe' | 'word' | 'char';

export interface SentencePieceModel {
  pieces: SentencePiece[];
  trainer: {
    modelType: SpmModelType;
    vocabSize: number;
    byteFallback: boolean;
    unkId: number;
    bosId: number;
    eosId: number;
    padId: number;
    unkPiece: string;
    bosPiece: string;
    eosPiece: string;
    padPiece: string;
    treatWhitespaceAsSuffix: boolean;
    splitDigits: boolean;
  };
  normalizer: {
    name: string;
    precompiledCharsmap: Uint8Array;
    addDummyPrefix: boolean;
    removeExtraWhitespaces: boolean;
    escapeWhitespaces: boolean;
  };
}

export class SentencePieceError extends Error {}

const SPACE = '\u2581';

/** A minimal protobuf reader: varints (low 32 bits, so int32 -1 comes back as -1), fixed32, bytes. */
class ProtoReader {
  private pos = 0;
  private readonly view: DataView;

  constructor(
    private readonly buf: Uint8Array,
    private readonly what: string,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  get done(): boolean {
    return this.pos >= this.buf.length;
  }

  private fail(msg: string): never {
    throw new SentencePieceError(`${this.what}: ${msg} at byte ${this.pos}`);
  }

  varint(): number {
    let low = 0;
    for (let shift = 0, i = 0; ; shift += 7, i++) {
      if (this.pos >= this.buf.length) this.fail('truncated varint');
      if (i >= 10) this.fail('varint longer than 10 bytes');
      const b = this.buf[this.pos++];
      if (shift < 32) low |= (b & 0x7f) << shift;
      if (b < 0x80) break;
    }
    return low;
  }

  tag(): { field: number; wire: number } {
    const t = this.varint() >>> 0;
    return { field: t >>> 3, wire: t & 7 };
  }

  bytes(): Uint8Array {
    const len = this.varint() >>> 0;
    if (this.pos + len > this.buf.length) this.fail(`length ${len} runs past the end`);
    const out = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }

  string(): string {
    return new TextDecoder('utf-8', { fatal: true }).decode(this.bytes());
  }

  float(): number {
    if (this.pos + 4 > this.buf.length) this.fail('truncated float');
    const v = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }

  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else this.fail(`unsupported wire type ${wire}`);
    if (this.pos > this.buf.length) this.fail('truncated field');
  }
}

function readPiece(buf: Uint8Array): SentencePiece {
  const r = new ProtoReader(buf, 'tokenizer.model piece');
  const p: SentencePiece = { piece: '', score: 0, type: PieceType.NORMAL };
  while (!r.done) {
    const { field, wire } = r.tag();
    if (field === 1 && wire === 2) p.piece = r.string();
    else if (field === 2 && wire === 5) p.score = r.float();
    else if (field === 3 && wire === 0) p.type = r.varint() as PieceTypeId;
    else r.skip(wire);
  }
  return p;
}

const MODEL_TYPES: Record<number, SpmModelType> = { 1: 'unigram', 2: 'bpe', 3: 'word', 4: 'char' };

function readTrainerSpec(buf: Uint8Array): SentencePieceModel['trainer'] {
  const r = new ProtoReader(buf, 'tokenizer.model trainer_spec');
  // proto2 defaults of sentencepiece_model.proto
  const t: SentencePieceModel['trainer'] = {
    modelType: 'unigram',
    vocabSize: 8000,
    byteFallback: false,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
    unkPiece: '<unk>',
    bosPiece: '<s>',
    eosPiece: '</s>',
    padPiece: '<pad>',
    treatWhitespaceAsSuffix: false,
    splitDigits: false,
  };
  while (!r.done) {
    const { field, wire } = r.tag();
    if (wire === 0) {
      const v = r.varint();
      if (field === 3) {
        if (!MODEL_TYPES[v]) throw new SentencePieceError(`tokenizer.model: unknown model_type ${v}`);
        t.modelType = MODEL_TYPES[v];
      } else if (field === 4) t.vocabSize = v;
      else if (field === 24) t.treatWhitespaceAsSuffix = v !== 0;
      else if (field === 25) t.splitDigits = v !== 0;
      else if (field === 35) t.byteFallback = v !== 0;
      else if (field === 40) t.unkId = v;
      else if (field === 41) t.bosId = v;
      else if (field === 42) t.eosId = v;
      else if (field === 43) t.padId = v;
    } else if (wire === 2 && field >= 45 && field <= 48) {
      const s = r.string();
      if (field === 45) t.unkPiece = s;
      else if (field === 46) t.bosPiece = s;
      else if (field === 47) t.eosPiece = s;
      else t.padPiece = s;
    } else {
      r.skip(wire);
    }
  }
  return t;
}

function readNormalizerSpec(buf: Uint8Array | null): SentencePieceModel['normalizer'] {
  const n: SentencePieceModel['normalizer'] = {
    name: 'nmt_nfkc',
    precompiledCharsmap: new Uint8Array(0),
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
  };
  if (!buf) return n;
  const r = new ProtoReader(buf, 'tokenizer.model normalizer_spec');
  while (!r.done) {
    const { field, wire } = r.tag();
    if (field === 1 && wire === 2) n.name = r.string();
    else if (field === 2 && wire === 2) n.precompiledCharsmap = r.bytes().slice();
    else if (field === 3 && wire === 0) n.addDummyPrefix = r.varint() !== 0;
    else if (field === 4 && wire === 0) n.removeExtraWhitespaces = r.varint() !== 0;
    else if (field === 5 && wire === 0) n.escapeWhitespaces = r.varint() !== 0;
    else r.skip(wire);
  }
  return n;
}

/** Decodes a SentencePiece ModelProto (`tokenizer.model`). */
export function readSentencePieceModel(bytes: Uint8Array): SentencePieceModel {
  const r = new ProtoReader(bytes, 'tokenizer.model');
  const pieces: SentencePiece[] = [];
  let trainer: Uint8Array | null = null;
  let normalizer: Uint8Array | null = null;
  try {
    while (!r.done) {
      const { field, wire } = r.tag();
      if (field === 1 && wire === 2) pieces.push(readPiece(r.bytes()));
      else if (field === 2 && wire === 2) trainer = r.bytes();
      else if (field === 3 && wire === 2) normalizer = r.bytes();
      else r.skip(wire);
    }
  } catch (e) {
    if (e instanceof SentencePieceError) throw e;
    throw new SentencePieceError(`tokenizer.model is not a SentencePiece model: ${(e as Error).message}`);
  }
  if (pieces.length === 0) throw new SentencePieceError('tokenizer.model has no pieces: is it a SentencePiece model?');
  if (!trainer) throw new SentencePieceError('tokenizer.model has no trainer_spec: is it a SentencePiece model?');
  return { pieces, trainer: readTrainerSpec(trainer), normalizer: readNormalizerSpec(normalizer) };
}

/** BPE merges as transformers' `generate_merges` builds them from the pieces' scores (NORMAL pieces only). */
export function bpeMerges(pieces: readonly SentencePiece[]): [string, string][] {
  const ids = new Map<string, number>();
  pieces.forEach((p, i) => {
    if (p.type === PieceType.NORMAL && !ids.has(p.piece)) ids.set(p.piece, i);
  });
  const merges: { l: string; r: string; score: number; order: number }[] = [];
  for (const [piece, id] of ids) {
    const chars = Array.from(piece);
    const local: { l: string; r: string }[] = [];
    for (let k = 1; k < chars.length; k++) {
      const l = chars.slice(0, k).join('');
      const r = chars.slice(k).join('');
      if (ids.has(l) && ids.has(r)) local.push({ l, r });
    }
    local.sort((a, b) => ids.get(a.l)! - ids.get(b.l)! || ids.get(a.r)! - ids.get(b.r)!);
    for (const m of local) merges.push({ ...m, score: pieces[id].score, order: merges.length });
  }
  merges.sort((a, b) => b.score - a.score || a.order - b.order);
  return merges.map((m) => [m.l, m.r]);
}

function charsmapBase64(map: Uint8Array): string {
  return Buffer.from(map).toString('base64');
}

function normalizer(m: SentencePieceModel): Record<string, unknown> | null {
  const n = m.normalizer;
  const steps: Record<string, unknown>[] = [];
  if (n.precompiledCharsmap.length > 0) steps.push({ type: 'Precompiled', precompiled_charsmap: charsmapBase64(n.precompiledCharsmap) });
  if (n.removeExtraWhitespaces) {
    // SentencePiece drops leading U+0020 and squeezes runs of U+0020 (after normalisation); at the end it
    // strips the escaped text, so a literal "▁" goes there too.
    steps.push({ type: 'Replace', pattern: { Regex: '\\A +|[ \u2581]+\\z' }, content: '' });
    steps.push({ type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' });
  }
  if (n.addDummyPrefix) steps.push({ type: 'Prepend', prepend: SPACE });
  if (n.escapeWhitespaces) steps.push({ type: 'Replace', pattern: { String: ' ' }, content: SPACE });
  if (steps.length === 0) return null;
  return steps.length === 1 ? steps[0] : { type: 'Sequence', normalizers: steps };
}

function decoder(m: SentencePieceModel): Record<string, unknown> {
  const steps: Record<string, unknown>[] = [];
  if (m.normalizer.escapeWhitespaces) steps.push({ type: 'Replace', pattern: { String: SPACE }, content: ' ' });
  if (m.trainer.byteFallback) steps.push({ type: 'ByteFallback' });
  steps.push({ type: 'Fuse' });
  // spm_decode drops the dummy-prefix space; with remove_extra_whitespaces every leading space
  if (m.normalizer.removeExtraWhitespaces) steps.push({ type: 'Strip', content: ' ', start: 0x7fffffff, stop: 0 });
  else if (m.normalizer.addDummyPrefix) steps.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
  return { type: 'Sequence', decoders: steps };
}

function addedTokens(m: SentencePieceModel): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  m.pieces.forEach((p, id) => {
    const special = p.type === PieceType.CONTROL || p.type === PieceType.UNKNOWN;
    if (!special && p.type !== PieceType.USER_DEFINED) return;
    out.push({ id, content: p.piece, single_word: false, lstrip: false, rstrip: false, normalized: false, special });
  });
  return out;
}

function postProcessor(m: SentencePieceModel): Record<string, unknown> | null {
  const { bosId } = m.trainer;
  if (bosId < 0 || bosId >= m.pieces.length) return null;
  const bos = m.pieces[bosId].piece;
  return {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [
      { SpecialToken: { id: bos, type_id: 0 } },
      { Sequence: { id: 'A', type_id: 0 } },
      { SpecialToken: { id: bos, type_id: 1 } },
      { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: { [bos]: { id: bos, ids: [bosId], tokens: [bos] } },
  };
}

/** The Hugging Face tokenizer.json equivalent to a SentencePiece model (BPE or Unigram). */
export function sentencePieceToTokenizerJson(m: SentencePieceModel): Record<string, unknown> {
  const { trainer } = m;
  if (trainer.treatWhitespaceAsSuffix)
    throw new SentencePieceError('tokenizer.model uses treat_whitespace_as_suffix, which tokenizer.json cannot express');
  if (trainer.unkId < 0 || trainer.unkId >= m.pieces.length)
    throw new SentencePieceError(`tokenizer.model: unk_id ${trainer.unkId} is not a piece`);
  const unk = m.pieces[trainer.unkId].piece;
  let model: Record<string, unknown>;
  if (trainer.modelType === 'bpe') {
    const vocab: Record<string, number> = {};
    m.pieces.forEach((p, id) => {
      if (!(p.piece in vocab)) vocab[p.piece] = id;
    });
    model = {
      type: 'BPE',
      dropout: null,
      unk_token: unk,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: trainer.byteFallback,
      ignore_merges: false,
      vocab,
      merges: bpeMerges(m.pieces),
    };
  } else if (trainer.modelType === 'unigram') {
    model = { type: 'Unigram', unk_id: trainer.unkId, vocab: m.pieces.map((p) => [p.piece, p.score]), byte_fallback: trainer.byteFallback };
  } else {
    throw new SentencePieceError(
      `tokenizer.model is a SentencePiece ${trainer.modelType.toUpperCase()} model; only BPE and Unigram models convert`,
    );
  }
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens(m),
    normalizer: normalizer(m),
    pre_tokenizer: null,
    post_processor: postProcessor(m),
    decoder: decoder(m),
    model,
  };
}

/** Reads `tokenizer.model` and returns the equivalent tokenizer.json object. */
export async function convertSentencePieceFile(path: string): Promise<Record<string, unknown>> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new SentencePieceError(`cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    return sentencePieceToTokenizerJson(readSentencePieceModel(bytes));
  } catch (e) {
    if (e instanceof SentencePieceError) throw new SentencePieceError(e.message.replace(/^tokenizer\.model/, path));
    throw e;
  }
}
