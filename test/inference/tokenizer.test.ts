import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTokenizer, loadTokenizer, type TextTokenizer } from '../../src/inference/tokenizer.js';
import { crc32 } from '../../src/convert/readers/zip.js';
import { bosTemplate, byteFallbackBpe, llamaDecoder, llamaNormalizer, llamaTokenizerHead } from '../../src/convert/tokenizer-json.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/minigptv2-tiny/', import.meta.url));
const TOKENIZER_JSON = join(FIXTURES, 'llama/tokenizer.json');
const SCRIPT = fileURLToPath(new URL('../../scripts/make-fixture-tokenizer.mjs', import.meta.url));

interface Segment {
  text: string;
  add_special_tokens: boolean;
  pieces: string[];
  ids: number[];
}
const manifest = JSON.parse(readFileSync(join(FIXTURES, 'manifest.json'), 'utf8')) as {
  prompt: string;
  chat_prompt: string;
  prompt_segments: Segment[];
  chat_prompt_segments: Segment[];
};

// --- the golden FAKE tokenizer, re-implemented (fixture README "Fake tokenizer") -------------------
const FAKE_RE = /<s>|<\/s>|\[\/?[A-Za-z]+\]|<\/?[A-Za-z]+>|[A-Za-z0-9]+|[^\sA-Za-z0-9]/gu;
const fakePieces = (text: string) => text.match(FAKE_RE) ?? [];
const fakeId = (p: string) => (p === '<s>' ? 1 : p === '</s>' ? 2 : 3 + (crc32(new TextEncoder().encode(p)) % 509));
const fakeEncode = (text: string, addBos: boolean) => [...(addBos ? [1] : []), ...fakePieces(text).map(fakeId)];

function readInt64(name: string): number[] {
  const b = readFileSync(join(FIXTURES, name));
  return Array.from(new BigInt64Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)), Number);
}

const TASK_TAGS = ['[grounding]', '[refer]', '[detection]', '[identify]', '[vqa]', '[caption]'];
const MARKUP = ['[INST]', '[/INST]', '<Img>', '</Img>', '<p>', '</p>', '<delim>', '{', '}', '<', '>'];
const DIGITS = Array.from({ length: 101 }, (_, i) => String(i));
const WORDS = ['the', 'a', 'is', 'of', 'in', 'on', 'with', 'man', 'woman', 'dog', 'red', 'left', 'What', 'There'];

describe('fixture tokenizer (test/fixtures/minigptv2-tiny/llama/tokenizer.json)', () => {
  let tok: TextTokenizer;
  beforeAll(async () => {
    tok = await loadTokenizer(TOKENIZER_JSON);
  });

  it('has 512 ids with <unk>=0, <s>=1 (BOS), </s>=2 (EOS)', () => {
    expect(tok.vocabSize).toBe(512);
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBe(2);
    expect(tok.tokenToId('<unk>')).toBe(0);
    expect(tok.tokenToId('<s>')).toBe(1);
    expect(tok.tokenToId('</s>')).toBe(2);
    expect(tok.tokenToId('no-such-piece')).toBeUndefined();
  });

  it('encodes the golden prompt segments to exactly the manifest / .bin ids', () => {
    const all = [...manifest.prompt_segments, ...manifest.chat_prompt_segments];
    for (const seg of all) {
      expect(tok.encode(seg.text, { addBos: seg.add_special_tokens })).toEqual(seg.ids);
    }
    expect(tok.encode('[INST] <Img>', { addBos: true })).toEqual([1, 232, 161]);
    expect(tok.encode('<s>[INST] <Img>', { addBos: true })).toEqual([1, 1, 232, 161]);
    expect(tok.encode('<s>[INST] <Img>', { addBos: false })).toEqual([1, 232, 161]);
    expect(tok.encode('[INST] <Img>', { addBos: false })).toEqual([232, 161]);
    expect(readInt64('prompt_seg0_ids.bin')).toEqual(manifest.prompt_segments[0].ids);
    expect(readInt64('prompt_seg1_ids.bin')).toEqual(manifest.prompt_segments[1].ids);
    expect(readInt64('chat_seg0_ids.bin')).toEqual(manifest.chat_prompt_segments[0].ids);
    expect(readInt64('chat_seg1_ids.bin')).toEqual(manifest.chat_prompt_segments[1].ids);
    // Whole prompts split the way get_context_emb splits them.
    for (const prompt of [manifest.prompt, manifest.chat_prompt]) {
      const segs = prompt.split('<ImageHere>');
      segs.forEach((s, i) => expect(tok.encode(s, { addBos: i === 0 })).toEqual(fakeEncode(s, i === 0)));
    }
  });

  it('gives every needed piece its fake-tokenizer id', () => {
    for (const p of [...TASK_TAGS, ...MARKUP, ...DIGITS, ...WORDS]) {
      expect(tok.encode(p, { addBos: false }), p).toEqual([fakeId(p)]);
    }
    const text = '[refer] where is the dog? {<12><34><56><78>} <p>man</p> <delim> [vqa] What is in this image?';
    expect(tok.encode(text, { addBos: true })).toEqual(fakeEncode(text, true));
    // Pieces outside the 512-id vocabulary become <unk>.
    expect(tok.encode('zyxwvut', { addBos: false })).toEqual([0]);
  });

  it('decodes by joining pieces with spaces; round-trips the golden pieces', () => {
    for (const seg of [...manifest.prompt_segments, ...manifest.chat_prompt_segments]) {
      const pieces = fakePieces(seg.text);
      const ids = tok.encode(seg.text, { addBos: seg.add_special_tokens });
      const expected = [...(seg.add_special_tokens ? ['<s>'] : []), ...pieces].join(' ');
      expect(tok.decode(ids)).toBe(expected);
      expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(pieces.filter((p) => p !== '<s>').join(' '));
    }
    expect(tok.decode(manifest.prompt_segments[1].ids)).toBe('</Img> [grounding] describe this image [/INST]');
    for (const p of [...TASK_TAGS, ...MARKUP]) expect(tok.decode(tok.encode(p, { addBos: false }))).toBe(p);
    expect(tok.decode([])).toBe('');
  });

  it('assigns every id a distinct printable piece consistent with the fake tokenizer', () => {
    const seen = new Set<string>();
    for (let id = 0; id < 512; id++) {
      const piece = tok.decode([id]);
      expect(piece.length, `id ${id}`).toBeGreaterThan(0);
      expect(piece, `id ${id}`).toMatch(/^[\x21-\x7e]+$/);
      expect(seen.has(piece), `duplicate piece ${piece}`).toBe(false);
      seen.add(piece);
      if (id >= 3) expect(tok.encode(piece, { addBos: false }), piece).toEqual([id]);
    }
    expect(seen.size).toBe(512);
    // Ids beyond the vocabulary are dropped rather than crashing decode.
    expect(tok.decode([232, 9999, 161])).toBe('[INST] <Img>');
  });

  it('is exactly what scripts/make-fixture-tokenizer.mjs generates', async () => {
    const scriptPath: string = SCRIPT;
    const mod = (await import(scriptPath)) as {
      buildFixtureTokenizer: (m: unknown) => { tokenizer: unknown; collisions: { id: number; canonical: string; aliases: string[] }[] };
    };
    const { tokenizer, collisions } = mod.buildFixtureTokenizer(manifest);
    expect(JSON.parse(readFileSync(TOKENIZER_JSON, 'utf8'))).toEqual(tokenizer);
    // The golden prompt pieces are never shadowed by a colliding piece when decoding.
    const golden = new Set(manifest.prompt_segments.flatMap((s) => fakePieces(s.text)));
    for (const c of collisions) for (const a of c.aliases) expect(golden.has(a), a).toBe(false);
  });
});

// --- a tiny Llama-style BPE tokenizer (byte fallback, ▁ metaspace, <s>/</s> added tokens) ---------
function tinyLlamaTokenizerJson(variant: 'legacy' | 'metaspace') {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const pieces = [
    '▁',
    'H',
    'e',
    'l',
    'o',
    'w',
    'r',
    'd',
    '[',
    ']',
    'I',
    'N',
    'S',
    'T',
    'll',
    'He',
    'Hell',
    'Hello',
    '▁Hello',
    'or',
    'ld',
    'wor',
    'world',
    '▁world',
    '▁[',
  ];
  for (const p of pieces) vocab[p] = Object.keys(vocab).length;
  const merges = ['l l', 'H e', 'He ll', 'Hell o', '▁ Hello', 'o r', 'l d', 'w or', 'wor ld', '▁ world', '▁ ['];
  const base = {
    ...llamaTokenizerHead(),
    post_processor: bosTemplate(true),
    decoder: llamaDecoder(),
    model: byteFallbackBpe(vocab, merges),
  };
  const json =
    variant === 'legacy'
      ? {
          ...base,
          // Llama-2 style (transformers "legacy" conversion): prepend ▁ + spaces -> ▁ in the normalizer.
          normalizer: llamaNormalizer(),
          pre_tokenizer: null,
        }
      : {
          ...base,
          normalizer: null,
          pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
        };
  return { json, vocab };
}

describe('Llama-style tokenizer.json behaviour of the wrapper', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tok-test-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const byte = (b: number) => 3 + b;

  for (const variant of ['legacy', 'metaspace'] as const) {
    describe(variant, () => {
      const { json, vocab } = tinyLlamaTokenizerJson(variant);
      const tok = createTokenizer(json);

      it('adds BOS only when asked, never EOS', () => {
        expect(tok.bosId).toBe(1);
        expect(tok.eosId).toBe(2);
        expect(tok.vocabSize).toBe(Object.keys(vocab).length);
        expect(tok.encode('Hello world', { addBos: true })).toEqual([1, vocab['▁Hello'], vocab['▁world']]);
        expect(tok.encode('Hello world', { addBos: false })).toEqual([vocab['▁Hello'], vocab['▁world']]);
        expect(tok.encode('', { addBos: true })).toEqual([1]);
        expect(tok.encode('', { addBos: false })).toEqual([]);
      });

      it('encodes a literal <s> / </s> as the special token', () => {
        const hello = variant === 'legacy' ? vocab['▁Hello'] : vocab.Hello; // legacy adds ▁ after specials
        expect(tok.encode('<s>Hello', { addBos: false })).toEqual([1, hello]);
        expect(tok.encode('<s>Hello', { addBos: true })).toEqual([1, 1, hello]);
        expect(tok.encode('Hello</s>', { addBos: false })).toEqual([vocab['▁Hello'], 2]);
        const chat = tok.encode('<s>[INST] Hello', { addBos: true });
        expect(chat.slice(0, 2)).toEqual([1, 1]);
        expect(chat.at(-1)).toBe(vocab['▁Hello']);
      });

      it('falls back to bytes for unknown characters and decodes them as UTF-8', () => {
        // '€' = E2 82 AC, 'é' = C3 A9
        expect(tok.encode('Hello €é', { addBos: false })).toEqual([
          vocab['▁Hello'],
          vocab['▁'],
          byte(0xe2),
          byte(0x82),
          byte(0xac),
          byte(0xc3),
          byte(0xa9),
        ]);
        expect(tok.decode([byte(0xe2), byte(0x82), byte(0xac)])).toBe('€');
        expect(tok.decode([vocab['▁Hello'], vocab['▁'], byte(0xe2), byte(0x82), byte(0xac)])).toBe('Hello €');
        for (const s of ['Hello world', 'Hello €é', 'Hello\u{1F600} world']) {
          expect(tok.decode(tok.encode(s, { addBos: false }))).toBe(s);
          expect(tok.decode(tok.encode(s, { addBos: true }), { skipSpecialTokens: true })).toBe(s);
        }
        // An incomplete UTF-8 sequence decodes to U+FFFD (tokenizers.js emits one per broken sequence).
        expect(tok.decode([byte(0xe2), byte(0x82)])).toContain('\uFFFD');
      });

      it("gives each token's bytes: ▁ as a space, a byte piece as its byte, a special token as its name", () => {
        const bytes = (id: number) => Array.from(tok.tokenBytes(id));
        expect(bytes(vocab['▁Hello'])).toEqual([...Buffer.from(' Hello')]);
        expect(bytes(byte(0xe2))).toEqual([0xe2]);
        expect(bytes(2)).toEqual([...Buffer.from('</s>')]);
        expect(bytes(Object.keys(vocab).length + 5)).toEqual([]);
        // the tokens' bytes make the text (before the decoder strips the leading space)
        const ids = tok.encode('Hello €é', { addBos: false });
        expect(Buffer.concat(ids.map((id) => tok.tokenBytes(id))).toString('utf8')).toBe(' Hello €é');
      });

      it('decodes ▁ as a space, strips the leading one, keeps or skips special tokens', () => {
        const ids = [1, vocab['▁Hello'], vocab['▁world'], 2];
        expect(tok.decode(ids)).toBe('<s> Hello world</s>');
        expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('Hello world');
        expect(tok.decode([vocab['▁Hello']])).toBe('Hello');
      });
    });
  }

  it('loadTokenizer reads tokenizer_config.json (AddedToken objects) and honours explicit ids', async () => {
    const { json } = tinyLlamaTokenizerJson('legacy');
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(json));
    writeFileSync(
      join(dir, 'tokenizer_config.json'),
      JSON.stringify({
        bos_token: { __type: 'AddedToken', content: '<s>', lstrip: false, normalized: true, rstrip: false, single_word: false },
        eos_token: { __type: 'AddedToken', content: '</s>', lstrip: false, normalized: true, rstrip: false, single_word: false },
        unk_token: '<unk>',
        clean_up_tokenization_spaces: false,
        tokenizer_class: 'LlamaTokenizer',
      }),
    );
    const tok = await loadTokenizer(join(dir, 'tokenizer.json'));
    expect([tok.bosId, tok.eosId]).toEqual([1, 2]);
    expect(tok.encode('Hello', { addBos: true })[0]).toBe(1);
    const custom = await loadTokenizer(join(dir, 'tokenizer.json'), { bosId: 2, eosId: 0 });
    expect([custom.bosId, custom.eosId]).toEqual([2, 0]);
    expect(custom.encode('Hello', { addBos: true })[0]).toBe(2);
    await expect(loadTokenizer(join(dir, 'missing.json'))).rejects.toThrow(/cannot read tokenizer/);
  });
});
