// The incremental decoder used while streaming must give exactly what a full decode gives, at every length.
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { createTokenizer, loadTokenizer, type TextTokenizer } from '../../src/inference/tokenizer.js';
import { createRng } from '../../src/inference/generation/index.js';
import { bpeTokenizerJson, byteFallbackVocab, LEGACY_NORMALIZER, LLAMA_DECODER } from './llama-tokenizer.js';

const ROOT = join(import.meta.dirname, '..', '..');

/** A Llama-style BPE tokenizer.json with byte fallback (as test/inference/tokenizer.test.ts builds). */
function byteFallbackTokenizer(decoder: unknown = LLAMA_DECODER) {
  const vocab = byteFallbackVocab();
  for (const p of ['▁', 'H', 'e', 'l', 'o', '▁Hello', '▁world', '▁[', ']', 'a', '▁a', '.', ',']) vocab[p] = Object.keys(vocab).length;
  return bpeTokenizerJson(vocab, [], { normalizer: LEGACY_NORMALIZER, pre_tokenizer: null, post_processor: null, decoder });
}

function check(tok: TextTokenizer, seed: number, pick: (r: () => number) => number) {
  const rng = createRng(seed);
  for (const skipSpecialTokens of [true, false]) {
    for (let trial = 0; trial < 40; trial++) {
      const inc = tok.incrementalDecoder?.({ skipSpecialTokens });
      expect(inc).toBeDefined();
      const ids: number[] = [];
      const n = 1 + Math.floor(rng() * 30);
      for (let i = 0; i < n; i++) {
        ids.push(pick(rng));
        expect(inc!.push(ids[i]), JSON.stringify(ids)).toBe(tok.decode(ids, { skipSpecialTokens }));
      }
    }
  }
}

describe('TextTokenizer.incrementalDecoder', () => {
  it('equals a full decode after every id: demo tokenizer (SentencePiece decoder, special tokens)', async () => {
    const tok = await loadTokenizer(join(ROOT, 'models/demo/tokenizer.json'), { bosId: 1, eosId: 2 });
    check(tok, 1, (r) => (r() < 0.1 ? Math.floor(r() * 3) : Math.floor(r() * tok.vocabSize)));
  });

  it('equals a full decode after every id: byte fallback runs, incomplete UTF-8, specials in between', () => {
    const tok = createTokenizer(byteFallbackTokenizer());
    const bytes = [0xe2, 0x82, 0xac, 0xc3, 0xa9, 0x20, 0x41, 0xf0, 0x9f, 0x98, 0x80, 0xff, 0xef, 0xbb, 0xbf];
    check(tok, 2, (r) => {
      const x = r();
      if (x < 0.45) return 3 + bytes[Math.floor(r() * bytes.length)];
      if (x < 0.55) return Math.floor(r() * 3);
      return 259 + Math.floor(r() * 13);
    });
    const inc = tok.incrementalDecoder!({ skipSpecialTokens: true })!;
    expect([0xe2, 0x82, 0xac].map((b) => inc.push(3 + b))).toEqual([tok.decode([3 + 0xe2]), tok.decode([3 + 0xe2, 3 + 0x82]), '€']);
  });

  it('equals a full decode after every id: no decoder (pieces joined by spaces, the golden fixture)', async () => {
    const tok = await loadTokenizer(join(ROOT, 'test/fixtures/minigptv2-tiny/llama/tokenizer.json'));
    check(tok, 3, (r) => Math.floor(r() * tok.vocabSize));
  });

  it('is not offered for decoders it does not reproduce', () => {
    const tok = createTokenizer(byteFallbackTokenizer({ type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }));
    expect(tok.incrementalDecoder?.({ skipSpecialTokens: true })).toBeUndefined();
  });
});
