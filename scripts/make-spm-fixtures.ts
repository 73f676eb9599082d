// Makes test/fixtures/sentencepiece: the SentencePiece models of test/convert/sentencepiece.test.ts, trained once
// with Debian's spm_train on the test's generated corpus, and what Debian's spm_encode / spm_decode /
// spm_export_vocab give for the test's strings, so that `npm test` needs none of the tools.
//
//   apt-get install -y sentencepiece                 # the tools (Debian 12: 0.1.97)
//   npx vite-node scripts/make-spm-fixtures.ts       # rewrites test/fixtures/sentencepiece/*
//
// Inputs (test/convert/sentencepiece-inputs.ts): the model configs, the 6,000-line corpus and the 3,000 strings,
// all deterministic. Outputs: <name>.model per config and expected.json.gz, which holds the sha256 of the strings
// and the corpus, each config's spm_train options and spm_encode --output_format=id line per string, the
// strings whose spm_decode text differs from the string itself, and the llama model's spm_export_vocab.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { CONFIGS, SPM_TRAIN_COMMON, spmInputs, type SpmFixture } from '../test/convert/sentencepiece-inputs.js';

const OUT = join(import.meta.dirname, '../test/fixtures/sentencepiece');

function tool(name: string, args: string[], input?: string): string {
  try {
    return execFileSync(name, args, { input, maxBuffer: 1 << 28, stdio: ['pipe', 'pipe', 'pipe'] }).toString('utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT') throw new Error(`${name} not found: apt-get install -y sentencepiece`);
    throw new Error(`${name} ${args.join(' ')} failed: ${err.stderr?.toString() ?? err.message}`);
  }
}

const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');

function version(): string {
  try {
    // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format syntax
    return `sentencepiece ${execFileSync('dpkg-query', ['-W', '-f', '${Version}', 'sentencepiece']).toString().trim()} (Debian package)`;
  } catch {
    return tool('spm_train', ['--version']).trim();
  }
}

async function main(): Promise<void> {
  const { strings, corpus } = spmInputs();
  const work = await mkdtemp(join(tmpdir(), 'minigpt-spm-fixtures-'));
  try {
    const corpusText = `${corpus.join('\n')}\n`;
    await writeFile(join(work, 'corpus.txt'), corpusText);
    await mkdir(OUT, { recursive: true });
    const fixture: SpmFixture = {
      about:
        "What Debian's sentencepiece tools give for test/convert/sentencepiece.test.ts (its inputs: test/convert/sentencepiece-inputs.ts). Written by scripts/make-spm-fixtures.ts.",
      made_with: version(),
      strings: strings.length,
      strings_sha256: sha256(JSON.stringify(strings)),
      corpus_sha256: sha256(corpusText),
      models: {},
      llama_vocab: [],
    };
    for (const c of CONFIGS) {
      const spmTrain = [...SPM_TRAIN_COMMON, ...c.args];
      const prefix = join(work, c.name);
      tool('spm_train', [`--input=${join(work, 'corpus.txt')}`, `--model_prefix=${prefix}`, ...spmTrain]);
      const model = `${prefix}.model`;
      const encode = tool('spm_encode', [`--model=${model}`, '--output_format=id'], `${strings.join('\n')}\n`)
        .split('\n')
        .slice(0, strings.length)
        .map((l) => l.trim());
      if (encode.length !== strings.length) throw new Error(`spm_encode gave ${encode.length} lines for ${strings.length} strings`);
      // an empty line is not a valid id list for spm_decode: decode the non-empty ones
      const rows = encode.map((ids, i) => ({ ids, i })).filter((v) => v.ids.length > 0);
      const decoded = tool('spm_decode', [`--model=${model}`, '--input_format=id'], `${rows.map((v) => v.ids).join('\n')}\n`).split('\n');
      const decodeDiffers: Record<string, string> = {};
      rows.forEach((v, k) => {
        if (decoded[k] !== strings[v.i]) decodeDiffers[String(v.i)] = decoded[k];
      });
      await copyFile(model, join(OUT, `${c.name}.model`));
      fixture.models[c.name] = { spm_train: spmTrain, model_sha256: sha256(await readFile(model)), encode, decode_differs: decodeDiffers };
      if (c.name === 'llama') {
        fixture.llama_vocab = tool('spm_export_vocab', [`--model=${model}`])
          .split('\n')
          .filter(Boolean)
          .map((l) => l.split('\t') as [string, string]);
      }
      console.log(`${c.name}: ${encode.length} strings encoded, ${Object.keys(decodeDiffers).length} decode to another text`);
    }
    // mtime 0 and no name in the gzip header: the same fixture gives the same bytes
    await writeFile(join(OUT, 'expected.json.gz'), gzipSync(`${JSON.stringify(fixture)}\n`, { level: 9 }));
    console.log(`wrote ${OUT} (${fixture.made_with})`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

await main();
