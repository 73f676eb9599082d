// A package against its PROVENANCE.json (models/demo/train/publish.mjs): the files are the recorded ones, they
// were converted from the recorded published files, and the model still scores the recorded held-out items.
import { expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadPackage, packageFiles } from '../../src/inference/package.js';
import { sha256Hex } from '../../src/conversation/store.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'minigpt.js');
export const TASKS = ['refer', 'identify', 'vqa', 'caption'] as const;

interface FileRecord {
  sha256: string;
  bytes: number;
}
interface CheckRecord {
  n: number;
  accuracy: number;
  scores: number[];
}
/** A run's arguments and the run (or package) it started from, back to the first. */
export interface TrainRecord {
  train_args: Record<string, unknown>;
  started_from?: TrainRecord;
}
export interface Provenance extends TrainRecord {
  published: Record<string, FileRecord>;
  package: Record<string, FileRecord>;
  /** shapes: the generator's shape set (`demo-data --shapes`); records written before it existed are classic */
  heldout: { seed: number; images: number; shapes?: string; eval: Record<(typeof TASKS)[number], { n: number; accuracy: number }> };
  check: { images: number; threads: number } & Record<(typeof TASKS)[number], CheckRecord>;
  /** the final test split: evaluated once, after selection, on the published package; chose nothing */
  test?: {
    seed: number;
    images: number;
    shapes: string;
    evaluated_once: boolean;
    after_selection: boolean;
    package_sha256: Record<string, string>;
    /** the seeds it is not: training, validation, selection, the web examples, train.py's own */
    seeds_not_this: Record<string, number[] | string>;
    eval: Record<(typeof TASKS)[number], { n: number; accuracy: number }>;
  };
}

interface Publish {
  itemScore: (d: unknown) => number;
}
const publish = async () => (await import(pathToFileURL(join(ROOT, 'models/demo/train/publish.mjs')).href)) as Publish;

/** The package files and model.json's sources are the ones PROVENANCE.json records; returns the record. */
export async function expectRecordedFiles(dir: string): Promise<Provenance> {
  const record = JSON.parse(await readFile(join(dir, 'PROVENANCE.json'), 'utf8')) as Provenance;
  const pkg = await loadPackage(dir);
  const files = ['model.json', ...packageFiles(pkg.meta)];
  expect(Object.keys(record.package).sort()).toEqual([...files].sort());
  for (const f of files) expect(sha256Hex(await readFile(join(dir, f))), f).toBe(record.package[f].sha256);
  const published: Record<string, string> = {
    vit: 'eva_vit.pth',
    checkpoint: 'minigptv2_ckpt.pth',
    'llm-config': 'llama/config.json',
    'llm-weights': 'llama/pytorch_model.bin',
    tokenizer: 'llama/tokenizer.json',
  };
  expect(pkg.meta.provenance.sources.map((s) => s.role).sort()).toEqual(Object.keys(published).sort());
  for (const s of pkg.meta.provenance.sources) {
    expect(s.sha256, s.role).toBe(record.published[published[s.role]].sha256);
    expect(s.bytes, s.role).toBe(record.published[published[s.role]].bytes);
  }
  expect(pkg.meta.provenance.options).toMatchObject({
    arch: 'minigpt-v2',
    imageSize: record.train_args.image_size,
    vitHeads: record.train_args.vit_heads,
    loraAlpha: record.train_args.lora_alpha,
  });
  expect(pkg.meta.llm).toMatchObject({ layers: record.train_args.layers, hidden: record.train_args.hidden });
  return record;
}

/**
 * Regenerates the recorded check scenes (`minigpt demo-data`, the held-out seed) into `work` and evaluates the
 * package on them (`minigpt eval`, one thread): every item scores as recorded, but for at most one in 30 (another
 * CPU's kernels may round differently and flip a near tie).
 */
export async function expectRecordedScores(dir: string, record: Provenance, work: string): Promise<void> {
  const { itemScore } = await publish();
  const split = join(work, 'provenance-check');
  execFileSync(
    process.execPath,
    [
      CLI,
      'demo-data',
      '--seed',
      String(record.heldout.seed),
      '--count',
      String(record.check.images),
      '--shapes',
      record.heldout.shapes ?? 'classic',
      '--out',
      split,
    ],
    {
      cwd: ROOT,
      stdio: 'pipe',
    },
  );
  for (const task of TASKS) {
    const want = record.check[task];
    const out = execFileSync(
      process.execPath,
      [
        CLI,
        'eval',
        '--model',
        dir,
        '--data',
        split,
        '--task',
        task,
        '--threads',
        String(record.check.threads),
        '--provider',
        'cpu',
        '--json',
      ],
      {
        cwd: ROOT,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
        maxBuffer: 1 << 26,
      },
    );
    const r = JSON.parse(out) as { n: number; accuracy: number; details: unknown[] };
    expect(r.n, task).toBe(want.n);
    expect(want.scores, task).toHaveLength(want.n);
    const differ = r.details.map(itemScore).filter((s, i) => Math.abs(s - want.scores[i]) > 1e-3).length;
    expect(differ, `${task}: items scored differently from PROVENANCE.json`).toBeLessThanOrEqual(Math.floor(want.n / 30));
    expect(Math.abs(r.accuracy - want.accuracy), task).toBeLessThanOrEqual(0.04);
  }
}
