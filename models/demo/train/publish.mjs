#!/usr/bin/env node
// Turns a finished training run (train.py's published files) into the committed demo package, and records
// where it came from in OUT/PROVENANCE.json: the run's arguments and losses, the sha256 of every published
// file it was converted from, the sha256 of every package file, and `minigpt eval` on a held-out split.
// The record is what a test of the committed package compares against: the package files' hashes, the
// published files' hashes (model.json's provenance names them too), and `check`, every item's score on the
// first held-out scenes, which a test can recompute with `minigpt demo-data` + `minigpt eval`.
//
//   npm run build && node models/demo/train/publish.mjs --run RUN_DIR --heldout SPLIT_DIR [--data SEEDS] [--out models/demo]
//     [--check-images N (default 24)]
//
// --heldout is a `minigpt demo-data` split of a seed never used in training (the recipe uses 1000);
// --data records the training split (e.g. "seeds 1-2 x 4000 images") in words.
// PROVENANCE.json's `test` (the final test split) is not written here, on purpose: it is evaluated once, by
// hand, on a seed no run or choice has used, after a package is chosen (README.md, "The final test split").
// A republished package has none until then, and test/inference/demo-model.test.ts fails until it has.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { arg } from './args.mjs';

/** model.json's name for the published demo package */
const DEMO_NAME = 'minigpt-v2-demo';
const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..', '..');
const { loadPackage, packageFiles } = await import(pathToFileURL(join(ROOT, 'dist', 'src', 'inference', 'package.js')).href);
const CLI = join(ROOT, 'bin', 'minigpt.js');
const TASKS = ['refer', 'identify', 'vqa', 'caption'];
export const CHECK_IMAGES = 24;

const sha256 = async (p) =>
  createHash('sha256')
    .update(await readFile(p))
    .digest('hex');
const minigpt = (args) =>
  execFileSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', maxBuffer: 1 << 28, stdio: ['ignore', 'pipe', 'inherit'] });

/** One item's score in an eval report: right / wrong (refer, identify), VQA accuracy, caption recall. */
export function itemScore(d) {
  const v = typeof d.correct === 'boolean' ? Number(d.correct) : typeof d.accuracy === 'number' ? d.accuracy : d.recall;
  return Math.round(v * 1000) / 1000;
}

/** Stage-2 wall time of a run that may have been stopped and resumed: each resumed process restarts its clock. */
export function wallSeconds(steps) {
  let total = 0;
  let last = 0;
  for (const r of steps) {
    if (typeof r.elapsed_s !== 'number') continue;
    if (r.elapsed_s < last) total += last;
    last = r.elapsed_s;
  }
  return total + last;
}

const readLog = async (run) =>
  (await readFile(join(run, 'train_log.jsonl'), 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));

/**
 * A run's arguments (without its local paths) and losses; for a run that started from an earlier one's weights
 * (train.py --init-from OTHER/state.pt), that run too, as `started_from`, and so on back to the first.
 */
export async function describeRun(run) {
  const args = JSON.parse(await readFile(join(run, 'train_args.json'), 'utf8'));
  if (args.from_package) return describePackage(run);
  const log = await readLog(run);
  const steps = log.filter((r) => typeof r.step === 'number' && typeof r.loss_avg === 'number');
  // stage 1 is in the run's own log, or in that of the stage 1 it loaded (--vit-from: gpu.sh's shared one, or
  // a fine-tune's own --vit-only run)
  const stage1From = args.vit_from ? await runFolder(run, args.vit_from) : null;
  const stage1Log = stage1From ? await readLog(stage1From) : log;
  const vit = stage1Log.filter((r) => typeof r.vit_step === 'number');
  const vals = log.filter((r) => typeof r.val_loss === 'number');
  const description = {
    train_args: Object.fromEntries(
      Object.entries(args).filter(([k]) => !['data', 'out', 'state', 'val', 'vit_from', 'init_from'].includes(k)),
    ),
    training: {
      stage1: vit.length ? vit[vit.length - 1] : null,
      last: steps.length ? steps[steps.length - 1] : null,
      ...(vals.length ? { last_val: vals[vals.length - 1] } : {}),
      minutes: Math.round((((vit.at(-1)?.elapsed_s ?? 0) + wallSeconds(steps)) / 60) * 10) / 10,
    },
  };
  if (args.init_from) {
    const from = await runFolder(run, args.init_from);
    if (!from) throw new Error(`${run} started from ${args.init_from}: no train_args.json in its folder nor beside ${run}`);
    description.started_from = await describeRun(from);
  }
  return description;
}

/**
 * A package's weights taken back by from_package.py (a fine-tune's start): the record of how that package was
 * made, from the PROVENANCE.json it copied, and the sha256 of its files.
 */
async function describePackage(dir) {
  const prov = JSON.parse(
    await readFile(join(dir, 'PROVENANCE.json'), 'utf8').catch(() => {
      throw new Error(`${dir}: from_package.py's folder has no PROVENANCE.json (the package it read had none)`);
    }),
  );
  const { data, train_args, training, started_from, package: files, heldout } = prov;
  return { package: { files, heldout }, data, train_args, training, ...(started_from ? { started_from } : {}) };
}

/**
 * The folder here of the run that wrote `file` (a path in `run`'s train_args.json): train.py's OUT/state.pt or
 * OUT/vision_stage1.pt, or gpu.sh's runs/NAME.state.pt beside runs/NAME/. A run brought back from another
 * machine names that machine's path: then the folder of that name beside `run` (a sweep's runs, its shared
 * stage 1s included, are copied together). null when neither has a train_args.json.
 */
export async function runFolder(run, file) {
  const m = basename(file).match(/^(.+)\.state\.pt$/);
  const there = m ? join(dirname(file), m[1]) : dirname(file);
  for (const dir of [there, join(dirname(run), basename(there))]) {
    if (
      await stat(join(dir, 'train_args.json')).then(
        () => true,
        () => false,
      )
    )
      return dir;
  }
  return null;
}

async function fileRecord(p) {
  return { sha256: await sha256(p), bytes: (await stat(p)).size };
}

async function main() {
  const run = arg('--run');
  const heldout = arg('--heldout');
  const out = arg('--out', join(ROOT, 'models', 'demo'));
  const dataNote = arg('--data', '');
  const description = await describeRun(run);
  const args = description.train_args; // what convert needs (shapes) is kept there

  const tmp = await mkdtemp(join(tmpdir(), 'minigpt-publish-'));
  let files;
  try {
    const convertArgs = [
      '--arch',
      'minigpt-v2',
      '--vit',
      join(run, 'eva_vit.pth'),
      '--llm',
      join(run, 'llama'),
      '--ckpt',
      join(run, 'minigptv2_ckpt.pth'),
      '--vit-heads',
      String(args.vit_heads),
      '--image-size',
      String(args.image_size),
      '--lora-alpha',
      String(args.lora_alpha),
    ];
    // converted in a temp folder: the package is named for where it is published, not after that folder
    minigpt(['convert', ...convertArgs, '--name', DEMO_NAME, '--out', tmp]);
    files = ['model.json', ...packageFiles((await loadPackage(tmp)).meta)];
    await mkdir(out, { recursive: true });
    for (const f of files) await rename(join(tmp, f), join(out, f));
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }

  const evals = {};
  for (const task of TASKS) {
    console.error(`publish: eval ${task} on ${heldout}`);
    const r = JSON.parse(
      minigpt(['eval', '--model', out, '--data', heldout, '--task', task, '--batch', '8', '--provider', 'cpu', '--json']),
    );
    evals[task] = {
      n: r.n,
      accuracy: r.accuracy,
      metric: r.metric,
      ...(r.by_type ? { by_type: r.by_type } : {}),
      ...(r.background ? { background: r.background } : {}),
    };
  }
  const manifest = JSON.parse(await readFile(join(heldout, 'manifest.json'), 'utf8'));
  // the generator's shape set of the held-out split (demo-data --shapes): the check scenes are drawn from it too
  const shapes = manifest.scene?.shapes ?? 'classic';

  // The check that CI repeats (test/inference/demo-model.test.ts): the first CHECK_IMAGES scenes of the held-out
  // seed, one thread, every item's right / wrong recorded.
  const checkImages = Number(arg('--check-images', String(CHECK_IMAGES)));
  const check = { images: checkImages, threads: 1 };
  const checkDir = await mkdtemp(join(tmpdir(), 'minigpt-publish-check-'));
  try {
    minigpt(['demo-data', '--seed', String(manifest.seed), '--count', String(checkImages), '--shapes', shapes, '--out', checkDir]);
    for (const task of TASKS) {
      const r = JSON.parse(
        minigpt(['eval', '--model', out, '--data', checkDir, '--task', task, '--threads', '1', '--provider', 'cpu', '--json']),
      );
      check[task] = { n: r.n, accuracy: r.accuracy, scores: r.details.map(itemScore) };
    }
  } finally {
    await rm(checkDir, { recursive: true, force: true });
  }

  const published = {};
  for (const f of ['eva_vit.pth', 'minigptv2_ckpt.pth', 'llama/config.json', 'llama/pytorch_model.bin', 'llama/tokenizer.json'])
    published[f] = await fileRecord(join(run, f));
  const pkg = {};
  for (const f of files) pkg[f] = await fileRecord(join(out, f));

  const record = {
    about:
      'How models/demo was made: train.py (models/demo/train) on synthetic scenes, saved in the published formats, converted by minigpt convert. Written by models/demo/train/publish.mjs.',
    data: dataNote,
    ...description,
    convert: `minigpt convert --arch minigpt-v2 --vit eva_vit.pth --llm llama --ckpt minigptv2_ckpt.pth --vit-heads ${args.vit_heads} --image-size ${args.image_size} --lora-alpha ${args.lora_alpha} --name ${DEMO_NAME}`,
    published,
    package: pkg,
    heldout: { seed: manifest.seed, images: manifest.count, shapes, split: basename(heldout), eval: evals },
    check,
  };
  await writeFile(join(out, 'PROVENANCE.json'), `${JSON.stringify(record, null, 2)}\n`);
  console.error(`publish: ${relative(process.cwd(), out) || out} <- ${run}`);
  for (const [t, e] of Object.entries(evals)) console.error(`  ${t}: ${(e.accuracy * 100).toFixed(1)}% of ${e.n}`);
  const present = await readdir(out);
  console.error(`  files: ${present.join(', ')}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
