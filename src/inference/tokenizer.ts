/**
 * Text tokenizer wrapper over @huggingface/tokenizers (tokenizers.js) with the semantics that
 * upstream MiniGPT-v2 relies on from its (slow) `LlamaTokenizer`:
 *
 * - `encode(text, { addBos })`: `addBos` = `add_special_tokens` for Llama (BOS prepended, never
 *   EOS). The BOS is prepended by this wrapper on top of an `add_special_tokens=false` encoding,
 *   so it works the same whether or not tokenizer.json carries a TemplateProcessing post-processor.
 * - A literal `<s>` / `</s>` in the text is the special token (id 1 / 2 for Llama): upstream's chat
 *   template `"<s>[INST] ..."` relies on it.
 * - `decode` runs the tokenizer.json decoder (for Llama: `▁` -> space, byte-fallback `<0xNN>`
 *   tokens joined into UTF-8, leading space stripped); `clean_up_tokenization_spaces` is off unless
 *   tokenizer_config.json turns it on (transformers' LlamaTokenizer default is False).
 *
 * A `tokenizer_config.json` next to tokenizer.json is read when present (bos/eos/unk token names,
 * clean_up_tokenization_spaces, ...).
 */
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';

export interface TextTokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  encode(text: string, opts: { addBos: boolean }): number[];
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
  /**
   * A decoder of a growing id list whose push(id) returns exactly decode(ids so far, opts), at a small
   * constant cost per id (a full decode costs tens of microseconds, more than a whole decoding step of a
   * small model). Undefined for tokenizer.json decoders it does not reproduce; callers then use decode().
   */
  incrementalDecoder?(opts?: { skipSpecialTokens?: boolean }): { push(id: number): string } | undefined;
  tokenToId(token: string): number | undefined;
  /**
   * The bytes one token stands for, as it would add them to a text (a Llama piece's `▁` as a space, a byte-fallback
   * `<0xNN>` piece as that byte, a special token as its name); empty for an id the tokenizer does not know.
   */
  tokenBytes(id: number): Uint8Array;
}

export interface LoadTokenizerOptions {
  bosId?: number;
  eosId?: number;
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** tokenizer_config.json may store tokens as strings or as `{"__type": "AddedToken", "content": ...}`. */
function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

async function readJson(path: string): Promise<unknown> {
  return JSON.parse(await readFile(path, 'utf8')) as unknown;
}

async function readOptionalJson(path: string): Promise<Json | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const v = JSON.parse(text) as unknown;
  return isObject(v) ? v : undefined;
}

export async function loadTokenizer(tokenizerJsonPath: string, opts: LoadTokenizerOptions = {}): Promise<TextTokenizer> {
  let tokenizerJson: unknown;
  try {
    tokenizerJson = await readJson(tokenizerJsonPath);
  } catch (err) {
    throw new Error(`cannot read tokenizer ${tokenizerJsonPath}: ${(err as Error).message}`, { cause: err });
  }
  const rawConfig = (await readOptionalJson(join(dirname(tokenizerJsonPath), 'tokenizer_config.json'))) ?? {};
  return createTokenizer(tokenizerJson, rawConfig, opts, tokenizerJsonPath);
}

/** Builds a TextTokenizer from already-parsed tokenizer.json (and optional tokenizer_config.json) objects. */
export function createTokenizer(
  tokenizerJson: unknown,
  tokenizerConfig: Json = {},
  opts: LoadTokenizerOptions = {},
  source = 'tokenizer.json',
): TextTokenizer {
  if (!isObject(tokenizerJson) || !isObject(tokenizerJson.model)) {
    throw new Error(`${source}: not a Hugging Face tokenizer.json (no "model")`);
  }
  const model = tokenizerJson.model;
  // tokenizers.js requires these keys to exist (null is fine).
  const json: Json = {
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    added_tokens: [],
    ...tokenizerJson,
  };

  const config: Json = {};
  for (const [k, v] of Object.entries(tokenizerConfig)) {
    config[k] = /_token$/.test(k) ? (tokenString(v) ?? v) : v;
  }
  // A WordLevel model is handled by tokenizers.js' plain vocab lookup, which takes its unk token
  // from the config rather than from the model.
  if (config.unk_token === undefined && typeof model.unk_token === 'string') {
    config.unk_token = model.unk_token;
  }
  const cleanUp = config.clean_up_tokenization_spaces === true;
  config.clean_up_tokenization_spaces = cleanUp;

  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json, config);
  } catch (err) {
    throw new Error(`${source}: unsupported tokenizer: ${(err as Error).message}`, { cause: err });
  }

  // get_vocab() may contain an `undefined` key for holes of the id table (tokenizers.js sizes that
  // table by the number of pieces, which exceeds the number of ids when several pieces share one).
  let vocabSize = 0;
  for (const [piece, id] of tok.get_vocab(true)) {
    if (typeof piece === 'string') vocabSize = Math.max(vocabSize, id + 1);
  }

  const resolveId = (what: string, explicit: number | undefined, candidates: (string | undefined)[]): number => {
    if (explicit !== undefined) {
      if (!Number.isInteger(explicit) || explicit < 0 || explicit >= vocabSize) {
        throw new RangeError(`${source}: ${what} id ${explicit} out of range [0, ${vocabSize})`);
      }
      return explicit;
    }
    for (const c of candidates) {
      if (c === undefined) continue;
      const id = tok.token_to_id(c);
      if (id !== undefined) return id;
    }
    throw new Error(`${source}: cannot determine the ${what} token id; pass it explicitly`);
  };

  // tokenizers.js filters these by piece when skip_special_tokens is set
  const specials = (tok as unknown as { special_tokens?: unknown }).special_tokens;
  const specialTokens = new Set(Array.isArray(specials) ? specials.filter((x): x is string => typeof x === 'string') : []);
  const incrementalKind = Array.isArray(specials) ? incrementalKindOf(tokenizerJson.decoder) : null;

  const bosId = resolveId('BOS', opts.bosId, [tokenString(config.bos_token), templateFirstSpecial(json.post_processor), '<s>']);
  const eosId = resolveId('EOS', opts.eosId, [tokenString(config.eos_token), '</s>']);

  return {
    vocabSize,
    bosId,
    eosId,
    encode(text: string, encOpts: { addBos: boolean }): number[] {
      const ids: number[] = [];
      if (encOpts.addBos) ids.push(bosId);
      if (text.length === 0) return ids;
      const enc = tok.encode(text, { add_special_tokens: false });
      for (let i = 0; i < enc.ids.length; i++) {
        const id = enc.ids[i];
        if (typeof id !== 'number' || !Number.isInteger(id)) {
          throw new Error(`${source}: piece ${JSON.stringify(enc.tokens[i])} is not in the vocabulary and there is no unk token`);
        }
        ids.push(id);
      }
      return ids;
    },
    decode(ids: readonly number[], decOpts: { skipSpecialTokens?: boolean } = {}): string {
      // Ids the tokenizer does not know (e.g. an lm_head larger than the vocabulary) are dropped.
      const known = ids.filter((id) => Number.isInteger(id) && tok.id_to_token(id) !== undefined);
      if (known.length === 0) return '';
      return tok.decode(known, {
        skip_special_tokens: decOpts.skipSpecialTokens ?? false,
        clean_up_tokenization_spaces: cleanUp,
      });
    },
    incrementalDecoder(decOpts: { skipSpecialTokens?: boolean } = {}) {
      if (!incrementalKind || cleanUp) return undefined;
      return incrementalDecoder(incrementalKind, (id) => tok.id_to_token(id), decOpts.skipSpecialTokens ? specialTokens : new Set());
    },
    tokenToId(token: string): number | undefined {
      return tok.token_to_id(token);
    },
    tokenBytes(id: number): Uint8Array {
      const p = Number.isInteger(id) ? tok.id_to_token(id) : undefined;
      if (p === undefined) return new Uint8Array();
      if (incrementalKind !== 'llama')
        return utf8Bytes.encode(incrementalKind === 'join' ? p : tok.decode([id], { skip_special_tokens: false }));
      const byte = byteFallback(p);
      return Number.isNaN(byte) ? utf8Bytes.encode(p.replaceAll('\u2581', ' ')) : Uint8Array.of(byte);
    },
  };
}

/**
 * The tokenizer.json decoders decoded incrementally: 'join' (no decoder: pieces joined by spaces, as
 * tokenizers.js does) and 'llama' (Replace '▁' -> ' ', ByteFallback, Fuse, Strip one leading space: the
 * SentencePiece decoder of the Llama tokenizers). Anything else: null (full decodes).
 */
function incrementalKindOf(decoder: unknown): 'join' | 'llama' | null {
  if (decoder === null || decoder === undefined) return 'join';
  const llama = [
    { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
    { type: 'ByteFallback' },
    { type: 'Fuse' },
    { type: 'Strip', content: ' ', start: 1, stop: 0 },
  ];
  if (isObject(decoder) && decoder.type === 'Sequence' && JSON.stringify(decoder.decoders) === JSON.stringify(llama)) return 'llama';
  return null;
}

const utf8Bytes = new TextEncoder();

/** The byte of a SentencePiece byte-fallback piece (`<0x0A>`), else NaN. */
function byteFallback(piece: string): number {
  return piece.length === 6 && piece.startsWith('<0x') && piece.endsWith('>') ? parseInt(piece.slice(3, 5), 16) : Number.NaN;
}

/** Mirrors tokenizers.js' decode (special tokens filtered by piece, then the decoder) one id at a time. */
function incrementalDecoder(
  kind: 'join' | 'llama',
  piece: (id: number) => string | undefined,
  skip: ReadonlySet<string>,
): { push(id: number): string } {
  let raw = '';
  let pieces = 0;
  let bytes: number[] = [];
  const utf8 = new TextDecoder();
  const current = (): string => {
    if (kind === 'join') return raw;
    const full = bytes.length ? raw + utf8.decode(Uint8Array.from(bytes)) : raw;
    return full[0] === ' ' ? full.slice(1) : full;
  };
  return {
    push(id: number): string {
      const p = Number.isInteger(id) ? piece(id) : undefined;
      if (p === undefined || skip.has(p)) return current();
      if (kind === 'join') {
        raw = pieces++ === 0 ? p : `${raw} ${p}`;
        return raw;
      }
      const token = p.replaceAll('\u2581', ' ');
      const byte = byteFallback(token);
      if (!Number.isNaN(byte)) {
        bytes.push(byte);
      } else {
        if (bytes.length) {
          raw += utf8.decode(Uint8Array.from(bytes));
          bytes = [];
        }
        raw += token;
      }
      return current();
    },
  };
}

/** First special token of a TemplateProcessing `single` template (the BOS for Llama). */
function templateFirstSpecial(postProcessor: unknown): string | undefined {
  const procs: unknown[] = [];
  if (isObject(postProcessor)) {
    if (postProcessor.type === 'Sequence' && Array.isArray(postProcessor.processors)) {
      procs.push(...(postProcessor.processors as unknown[]));
    } else procs.push(postProcessor);
  }
  for (const p of procs) {
    if (!isObject(p) || p.type !== 'TemplateProcessing' || !Array.isArray(p.single)) continue;
    const first: unknown = p.single[0];
    if (isObject(first) && isObject(first.SpecialToken) && typeof first.SpecialToken.id === 'string') {
      return first.SpecialToken.id;
    }
  }
  return undefined;
}
