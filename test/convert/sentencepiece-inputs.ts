// The inputs of test/convert/sentencepiece.test.ts, shared with scripts/make-spm-fixtures.ts (which trains the
// SentencePiece models on CORPUS with Debian's spm_train and records spm_encode / spm_decode / spm_export_vocab
// on STRINGS under test/fixtures/sentencepiece): deterministic, so the test can check that the committed
// fixture was made from exactly these.
import { rng } from '../helpers/rng.js';

export const STRINGS = 3000;
const CORPUS_LINES = 6000;

const SYLLABLES = [
  'th',
  'e',
  'an',
  'in',
  'er',
  'on',
  're',
  'at',
  'st',
  'en',
  'ou',
  'ing',
  'ch',
  'qu',
  'ly',
  'a',
  'o',
  'i',
  'u',
  's',
  't',
  'k',
  'm',
  'p',
  'l',
];
const UNICODE = [
  'café',
  'naïve',
  'Zürich',
  'façade',
  'Ελλάδα',
  'москва',
  '日本語',
  'テキスト',
  '中文字符',
  '한국어',
  'עברית',
  'العربية',
  'हिन्दी',
  '😀',
  '👍🏽',
  '🇫🇷',
  '∑∫',
  '©®',
  'ß',
  'ﬁ',
];
/** never in the training corpus: byte fallback (or NFKC) territory */
const RARE = ['\u{1F9EC}', 'ŋ', 'Ω', 'e\u0301', '𝔘', '\u00A0', '€', 'ā', '繁', '\u3000', '\u200B', '½'];
const PUNCT = [',', '.', '!', '?', "'", '...', '—', '#', '$', '%', '<', '>', '[', ']'];
const GAPS = [' ', ' ', ' ', ' ', '', '  ', '   ', '\t', ' \t ', '      '];

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

export interface SpmConfig {
  name: string;
  /** spm_train options after the common ones (makeFixtures adds --minloglevel=2 --num_threads=1 --seed_sentencepiece_size=20000) */
  args: string[];
  /** exact agreement expected (the Unigram lattice ties are broken in float32 by SentencePiece, float64 here) */
  minAgreement: number;
}

export const SPM_TRAIN_COMMON = ['--minloglevel=2', '--num_threads=1', '--seed_sentencepiece_size=20000'];

export const CONFIGS: SpmConfig[] = [
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
  {
    name: 'bpe-squeeze-whitespace',
    args: ['--model_type=bpe', '--vocab_size=600', '--byte_fallback=true', '--normalization_rule_name=identity'],
    minAgreement: 1,
  },
  { name: 'bpe-nmt-nfkc', args: ['--model_type=bpe', '--vocab_size=600', '--byte_fallback=true'], minAgreement: 1 },
  {
    name: 'bpe-no-dummy-prefix',
    args: [
      '--model_type=bpe',
      '--vocab_size=500',
      '--byte_fallback=true',
      '--normalization_rule_name=identity',
      '--remove_extra_whitespaces=false',
      '--add_dummy_prefix=false',
    ],
    minAgreement: 1,
  },
  {
    name: 'unigram',
    args: ['--model_type=unigram', '--vocab_size=600', '--normalization_rule_name=identity', '--remove_extra_whitespaces=false'],
    minAgreement: 0.99,
  },
];

/** The test strings and the training corpus, from one seeded stream (strings first, then the corpus). */
export function spmInputs(): { strings: string[]; corpus: string[] } {
  const r = rng(20240611);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)];

  function word(): string {
    let w = '';
    for (let i = 1 + Math.floor(r() * 3); i > 0; i--) w += pick(SYLLABLES);
    return r() < 0.1 ? w[0].toUpperCase() + w.slice(1) : w;
  }

  function corpusLine(): string {
    const parts: string[] = [];
    for (let i = 3 + Math.floor(r() * 12); i > 0; i--) {
      const x = r();
      parts.push(
        x < 0.75
          ? word()
          : x < 0.85
            ? String(Math.floor(r() * 10000))
            : x < 0.95
              ? pick(UNICODE)
              : pick([',', '.', '!', '?', '(', ')', '-', ':', '"']),
      );
    }
    return (r() < 0.1 ? '    ' : '') + parts.join(' ');
  }

  function testString(): string {
    const parts: string[] = [];
    for (let i = 1 + Math.floor(r() * 10); i > 0; i--) {
      const x = r();
      parts.push(
        x < 0.5 ? word() : x < 0.62 ? String(Math.floor(r() * 1e6)) : x < 0.75 ? pick(UNICODE) : x < 0.85 ? pick(RARE) : pick(PUNCT),
      );
      parts.push(pick(GAPS));
    }
    let s = parts.join('');
    const lead = r();
    if (lead < 0.15) s = ` ${s}`;
    else if (lead < 0.25) s = `   ${s}`;
    if (r() < 0.2) s = s.replace(/\s+$/, '');
    return s;
  }

  const strings = [...EDGE, ...Array.from({ length: STRINGS - EDGE.length }, testString)];
  const corpus = Array.from({ length: CORPUS_LINES }, corpusLine);
  return { strings, corpus };
}

export interface SpmFixture {
  about: string;
  made_with: string;
  strings: number;
  strings_sha256: string;
  corpus_sha256: string;
  models: Record<string, { spm_train: string[]; model_sha256: string; encode: string[]; decode_differs: Record<string, string> }>;
  /** spm_export_vocab --model=llama.model, one [piece, score] per line */
  llama_vocab: [string, string][];
}
