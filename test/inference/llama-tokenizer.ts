// Tiny Llama-style BPE tokenizer.json files (byte fallback, ▁ metaspace, <s>/</s> added tokens), as the tokenizer
// tests build them.

/** <unk>, <s>, </s>, then the 256 byte-fallback pieces <0x00>..<0xFF> (ids 3..258). */
export function byteFallbackVocab(): Record<string, number> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  return vocab;
}

const added = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});

/** Llama-2's normalizer (transformers "legacy" conversion): prepend ▁, spaces -> ▁. */
export const LEGACY_NORMALIZER = {
  type: 'Sequence',
  normalizers: [
    { type: 'Prepend', prepend: '▁' },
    { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
  ],
};

/** Llama's decoder: ▁ -> space, byte fallback, fused, the first space stripped. */
export const LLAMA_DECODER = {
  type: 'Sequence',
  decoders: [
    { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
    { type: 'ByteFallback' },
    { type: 'Fuse' },
    { type: 'Strip', content: ' ', start: 1, stop: 0 },
  ],
};

/** A BPE tokenizer.json of `vocab` and `merges` with byte fallback; `parts` sets the normalizer, decoder, ... */
export function bpeTokenizerJson(
  vocab: Record<string, number>,
  merges: string[],
  parts: { normalizer: unknown; pre_tokenizer: unknown; post_processor: unknown; decoder: unknown },
) {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [added(0, '<unk>'), added(1, '<s>'), added(2, '</s>')],
    ...parts,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges,
    },
  };
}
