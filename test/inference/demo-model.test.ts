// models/demo, the embedded default package: a model trained by models/demo/train (train.py on synthetic scenes,
// saved in the published formats) and converted by `minigpt convert` (publish.mjs). The committed files must be
// the ones its PROVENANCE.json records, converted from the recorded published files, and still score the recorded
// held-out items.
import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { loadTokenizer } from '../../src/inference/tokenizer.js';
import { MiniGPT } from '../../src/inference/model.js';
import { conversationPrompt } from '../../src/inference/prompt.js';
import { DEFAULT_SHAPE_SET } from '../../src/demo-data/scene.js';
import { TASKS, expectRecordedFiles, expectRecordedScores, type Provenance, type TrainRecord } from '../helpers/provenance.js';
import { EXAMPLE_SEED } from '../../adapters/web/examples.js';
import { tempDirPerFile } from '../helpers/temp-dir.js';

const ROOT = join(import.meta.dirname, '..', '..');
const DEMO = join(ROOT, 'models', 'demo');
let work: string;

tempDirPerFile('minigpt-demo-', (dir) => (work = dir));

describe('models/demo', () => {
  it('is the package PROVENANCE.json records, and scores the recorded held-out items again', async () => {
    const record = await expectRecordedFiles(DEMO);
    // trained on seeds other than the held-out one, on every task, and evaluated on all of them
    expect(record.heldout.seed).toBe(1000);
    expect(record.heldout.images).toBeGreaterThanOrEqual(300);
    for (const t of TASKS) expect(record.heldout.eval[t].n, t).toBeGreaterThan(250);
    expect(record.train_args).toMatchObject({ image_size: 112, aux_weight: 1, attn_sup: 1, name_sup: 1, sup_about: true });
    // the first run of the chain (a continuation or fine-tune records the run it started from) set up the grid
    // tokens and the position embeddings
    let first: TrainRecord = record;
    while (first.started_from) first = first.started_from;
    expect(first.train_args).toMatchObject({ coord_init: true, pos_init_scale: 4 });
    // evaluated on the shapes the generator draws by default (the web demo's scenes, README's example)
    expect(record.heldout.shapes ?? 'classic').toBe(DEFAULT_SHAPE_SET);
    let bytes = 0;
    for (const f of Object.values(record.package)) bytes += f.bytes;
    expect(bytes).toBeLessThanOrEqual(30 * 1024 * 1024); // the size limit
    await expectRecordedScores(DEMO, record, work);
  }, 300_000);

  it('reports a final test split, evaluated once after selection, whose seed no training or selection used', async () => {
    const record = JSON.parse(await readFile(join(DEMO, 'PROVENANCE.json'), 'utf8')) as Provenance;
    const test = record.test;
    expect(test, 'PROVENANCE.json has no final test split (test)').toBeDefined();
    // the same scene count, shape set and tasks as the selection split, on exactly the committed package
    expect(test).toMatchObject({
      evaluated_once: true,
      after_selection: true,
      images: record.heldout.images,
      shapes: record.heldout.shapes,
    });
    expect(test!.package_sha256, 'the package changed after its test split was evaluated').toEqual(
      Object.fromEntries(Object.entries(record.package).map(([f, r]) => [f, r.sha256])),
    );
    for (const t of TASKS) expect(test!.eval[t].n, t).toBeGreaterThan(250);

    // every seed recorded as used: the training data of the whole chain of runs (PROVENANCE.json's data lines),
    // the selection (held-out) seeds, train.py's seeds, the recipe's and gpu.sh's demo-data seeds (but for the
    // recipe's section on this split), the web demo's examples
    const used = new Set<number>([EXAMPLE_SEED]);
    type Run = TrainRecord & { data?: string; heldout?: { seed?: number }; package?: { heldout?: { seed?: number } } };
    for (let run: Run | undefined = record; run; run = run.started_from as Run | undefined) {
      for (const m of (run.data ?? '').matchAll(/seeds? (\d+)(?:-(\d+))?/g))
        for (let k = Number(m[1]); k <= Number(m[2] ?? m[1]); k++) used.add(k);
      for (const seed of [run.heldout?.seed, run.package?.heldout?.seed, run.train_args.seed]) if (typeof seed === 'number') used.add(seed);
    }
    const recipe = (await readFile(join(DEMO, 'train', 'README.md'), 'utf8')).replace(/^## The final test split[\s\S]*?(?=^## )/m, '');
    const gpu = await readFile(join(DEMO, 'train', 'gpu.sh'), 'utf8');
    for (const m of `${recipe}\n${gpu}`.matchAll(/--seed (\d+)|seeds? (\d+)(?:-(\d+))?/g)) {
      const [a, b] = m[1] ? [m[1], m[1]] : [m[2], m[3] ?? m[2]];
      for (let k = Number(a); k <= Number(b); k++) used.add(k);
    }
    expect(
      [0, 1, 8, 16, 999, 1000, 4242].every((s) => used.has(s)),
      'the lists were read',
    ).toBe(true);
    const listed = new Set(Object.values(test!.seeds_not_this).flatMap((v) => (Array.isArray(v) ? v : [])));
    expect(
      [...used].filter((s) => !listed.has(s)),
      'seeds used but not in test.seeds_not_this',
    ).toEqual([]);
    expect(used.has(test!.seed)).toBe(false);
    expect(listed.has(test!.seed)).toBe(false);
  });

  it('has a 512-piece tokenizer that round-trips ASCII text and box syntax exactly', async () => {
    const tok = await loadTokenizer(join(DEMO, 'tokenizer.json'), { bosId: 1, eosId: 2 });
    expect(tok.vocabSize).toBe(512);
    for (const text of [
      '<p>a red square</p> {<10><20><30><40>}<delim>{<0><0><100><100>}',
      '[refer] give me the location of the blue circle',
      'Hello, World! 42 ~`|\\',
    ]) {
      const ids = tok.encode(text, { addBos: false });
      expect(ids.every((i) => i > 2 && i < 512)).toBe(true);
      expect(tok.decode(ids)).toBe(text);
    }
    expect(tok.encode('<s>[INST] hi', { addBos: true }).slice(0, 2)).toEqual([1, 1]);
  });

  it('answers through the forced-answer test hook with exactly the given text', async () => {
    const forced = '<p>red square</p>{<10><20><30><40>}';
    const model = await MiniGPT.load(DEMO, { provider: 'cpu', forcedAnswer: forced });
    try {
      const { embeds } = await model.encodeImage(await readFile(join(ROOT, 'test/fixtures/minigptv2-tiny/input.png')));
      const pieces: string[] = [];
      let final = '';
      let reason = '';
      for await (const ev of model.answer(conversationPrompt(model.meta.prompt, [{ user: '[refer] red square' }]), [embeds], {
        temperature: 0,
      })) {
        if (ev.type === 'text') pieces.push(ev.text);
        if (ev.type === 'done') [final, reason] = [ev.text, ev.finishReason];
      }
      expect(final).toBe(forced);
      expect(pieces.length).toBeGreaterThan(3);
      expect(pieces.join('')).toBe(forced);
      expect(reason).toBe('stop');
    } finally {
      await model.close();
    }
  });

  it("writes README's annotated example: its commands, run as written, give the answer README shows and an annotated PNG", async () => {
    const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
    const block = /npx minigpt demo-data (--seed \d+ --count \d+) --out scenes\nnpx minigpt ask (.*) \\\n\s+"([^"]+)"\n# (.*)\n/.exec(
      readme,
    );
    expect(block, 'the example block in README.md').not.toBeNull();
    const [, dataArgs, askArgs, prompt, shown] = block!;
    const run = promisify(execFile);
    const cli = join(ROOT, 'bin', 'minigpt.js');
    await run(process.execPath, [cli, 'demo-data', ...dataArgs.split(' '), '--out', join(work, 'scenes')], { cwd: work });
    // run in a scratch folder (scenes/ and the PNG land there), with the package README names from the repository
    const args = askArgs.split(' ').map((a) => (a === 'models/demo' ? DEMO : a));
    const { stdout } = await run(process.execPath, [cli, 'ask', ...args, prompt], { cwd: work });
    expect(stdout.trim()).toBe(shown);
    const png = await sharp(join(work, 'demo-example.png')).metadata();
    expect(png.format).toBe('png');
  }, 120_000);
});
