// The parts of a Hugging Face tokenizer.json laid out like Llama-2's that every tokenizer written here shares
// (unigram-tokenizer.ts, scripts/make-fixture-tokenizer.mjs, the tokenizer tests): `<unk>` 0, `<s>` 1, `</s>` 2 as
// special added tokens, `▁` for spaces, `<s>` in front. Each call returns fresh objects, so a caller may change them.

/** `<unk>`, `<s>` (BOS), `</s>` (EOS): ids 0, 1, 2. */
export const SPECIAL_PIECES: readonly string[] = ['<unk>', '<s>', '</s>'];

/** One of `added_tokens`: matched in the raw text before normalisation, as Llama's special tokens are. */
export interface AddedToken {
  id: number;
  content: string;
  single_word: false;
  lstrip: false;
  rstrip: false;
  normalized: false;
  special: true;
}

/** The first keys of the file: format version, no truncation or padding, `<unk>` `<s>` `</s>` as ids 0, 1, 2. */
export function llamaTokenizerHead(): { version: '1.0'; truncation: null; padding: null; added_tokens: AddedToken[] } {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_PIECES.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
  };
}

/** Llama-2's normalizer (transformers' "legacy" conversion): `▁` in front of the text, every space a `▁`. */
export function llamaNormalizer(): Record<string, unknown> {
  return {
    type: 'Sequence',
    normalizers: [
      { type: 'Prepend', prepend: '▁' },
      { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
    ],
  };
}

/** Llama-2's decoder: `▁` back to spaces, `<0xNN>` pieces to bytes, the leading space dropped. */
export function llamaDecoder(): Record<string, unknown> {
  return {
    type: 'Sequence',
    decoders: [
      { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
      { type: 'ByteFallback' },
      { type: 'Fuse' },
      { type: 'Strip', content: ' ', start: 1, stop: 0 },
    ],
  };
}

/**
 * The post-processor that puts `<s>` in front when asked for special tokens; `secondBos`: in front of a pair's
 * second text too (Llama-2's own file has it; the package tokenizers here never encode pairs).
 */
export function bosTemplate(secondBos: boolean): Record<string, unknown> {
  return {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [
      { SpecialToken: { id: '<s>', type_id: 0 } },
      { Sequence: { id: 'A', type_id: 0 } },
      ...(secondBos ? [{ SpecialToken: { id: '<s>', type_id: 1 } }] : []),
      { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
  };
}

/** Llama-2's model section: BPE over these pieces and merges, bytes outside them as `<0xNN>` pieces. */
export function byteFallbackBpe(vocab: Record<string, number>, merges: string[]): Record<string, unknown> {
  return {
    type: 'BPE',
    dropout: null,
    unk_token: '<unk>',
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: true,
    byte_fallback: true,
    vocab,
    merges,
  };
}
