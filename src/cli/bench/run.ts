// A whole `minigpt bench` run: each package in a child process of its own (its peak RSS is that package's),
// the 7B-layer-shaped random package written when missing, the weight-type table, the targets of the profile
// table checked, and the report printed (and written with --report).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { round, roundAll } from './common.js';
import type { PackageResult } from './package.js';
import { LARGE_LAYERS, meets, ROOT, TARGETS, WEIGHT_TARGETS, type ProfileName, type Target } from './profiles.js';
import { machine, markdown, writeReport } from './report.js';
import {
  isCurrentPackage,
  medianResult,
  parseVariant,
  variantDir,
  WEIGHTS_ROUNDS,
  weightRatios,
  type WeightRatio,
  type WeightsResult,
  type WeightVariant,
} from './weights.js';

export interface BenchOptions {
  model: string;
  /** the 7B-layer-shaped package folder (built when missing), or false to skip it */
  large: string | false;
  /** weight types of the 7B-layer-shaped package to compare (none: no weight-type table) */
  dtypes: WeightVariant[];
  quick: boolean;
  json: boolean;
  threads?: number;
  /** also write the readable report (markdown, with the JSON) here */
  report?: string;
  log: (s: string) => void;
  write: (s: string) => void;
}

/** A figure against its target, as the report's `targets` give it. */
interface HeldFigure {
  value: number;
  target: number;
  met: boolean;
}

function held(value: number, t: Pick<Target, 'target' | 'held'>): HeldFigure {
  return { value: round(value), target: t.target, met: meets(value, t) };
}

/**
 * Writes the 7B-layer-shaped random package in each of `variants` (random checkpoints in the published
 * formats, written once and converted to each; fp32 in `dir`, the others beside it: variantDir).
 */
export async function ensureLargePackage(
  dir: string,
  log: (s: string) => void,
  variants: readonly WeightVariant[] = [parseVariant('fp32')],
): Promise<void> {
  const missing: WeightVariant[] = [];
  for (const v of variants) {
    const out = variantDir(dir, v);
    if (await isCurrentPackage(out)) continue;
    // A package from an older converter would measure the older graph: written again.
    if (existsSync(out)) log(`[bench] ${out} is from an older converter (no cache or logits_to_keep input): converting it again`);
    await rm(out, { recursive: true, force: true });
    missing.push(v);
  }
  if (missing.length === 0) return;
  // loaded here only: the converter is a large import that no other bench run needs
  const { randomShape, writeRandomMiniGPTv2 } = await import('../../convert/random-checkpoints.js');
  const { convert } = await import('../../convert/convert.js');
  const src = `${dir}-checkpoints`;
  log(
    `[bench] writing random Llama-2-7B / EVA ViT-g checkpoints (${LARGE_LAYERS.llm} LLM layers, ${LARGE_LAYERS.vit} ViT blocks) to ${src}`,
  );
  await mkdir(dirname(dir), { recursive: true });
  const shape = randomShape('llama2-7b', { llmLayers: LARGE_LAYERS.llm, vitDepth: LARGE_LAYERS.vit });
  try {
    const r = await writeRandomMiniGPTv2(src, shape, { seed: 0, log });
    for (const v of missing) {
      log(`[bench] converting to ${variantDir(dir, v)} (${v.name})`);
      await convert({
        ...r.convertArgs,
        vit: r.vit,
        llm: r.llm,
        ckpt: r.ckpt,
        dtype: v.dtype,
        blockSize: v.blockSize,
        out: variantDir(dir, v),
        log,
      });
    }
  } finally {
    await rm(src, { recursive: true, force: true });
  }
}

async function child(dir: string, profile: ProfileName, threads: number): Promise<PackageResult> {
  return runChild<PackageResult>(dir, ['--child', dir, '--profile', profile, '--threads', String(threads)]);
}

/** One package's bench in a child process of its own (its peak RSS is that package's); the JSON it prints. */
async function runChild<T>(dir: string, args: string[]): Promise<T> {
  const cli = join(ROOT, 'bin', 'minigpt.js');
  const proc = spawn(process.execPath, [cli, 'bench', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((r) => proc.on('close', r));
  if (code !== 0) throw new Error(`bench of ${dir} failed (exit ${code})`);
  return JSON.parse(out.trim().split('\n').at(-1)!) as T;
}

interface WeightTable {
  results: WeightsResult[];
  ratios: WeightRatio[];
  /** absent where the run had no such variant */
  targets: Record<keyof typeof WEIGHT_TARGETS, HeldFigure | undefined>;
}

/** The weight-type table: the 7B-layer-shaped package (converted) in each of `variants`, ratios against fp32 (weights.ts). */
async function weightTable(
  dir: string,
  variants: readonly WeightVariant[],
  threads: number,
  log: (s: string) => void,
): Promise<WeightTable> {
  // Rounds over all variants, interleaved, so that a slow minute of this shared machine falls on every
  // variant alike rather than on one; each figure is the median over the rounds.
  const runs: WeightsResult[][] = variants.map(() => []);
  for (let round = 0; round < WEIGHTS_ROUNDS; round++) {
    for (const [i, v] of variants.entries()) {
      log(`[bench] weight types, round ${round + 1}/${WEIGHTS_ROUNDS}: ${v.name}`);
      runs[i].push(
        await runChild<WeightsResult>(variantDir(dir, v), ['--child-weights', variantDir(dir, v), '--threads', String(threads)]),
      );
    }
  }
  const results = runs.map((rs, i) => ({ ...medianResult(rs), variant: variants[i].name }));
  const ratios = weightRatios(results);
  const at = (name: string) => ratios.find((r) => r.variant === name);
  const quantPrefill = ratios.filter((r) => /^int[48]/.test(r.variant)).map((r) => r.prefill_ratio);
  const figures: Record<keyof typeof WEIGHT_TARGETS, number | undefined> = {
    int4_decode_speedup: at('int4')?.decode_speedup,
    int8_decode_speedup: at('int8')?.decode_speedup,
    quantised_prefill_ratio: quantPrefill.length ? Math.max(...quantPrefill) : undefined,
  };
  const check = (k: keyof typeof WEIGHT_TARGETS) => {
    const value = figures[k];
    return value === undefined || !Number.isFinite(value) ? undefined : held(value, WEIGHT_TARGETS[k]);
  };
  return {
    results: results.map(roundAll),
    ratios: ratios.map(roundAll),
    targets: {
      int4_decode_speedup: check('int4_decode_speedup'),
      int8_decode_speedup: check('int8_decode_speedup'),
      quantised_prefill_ratio: check('quantised_prefill_ratio'),
    },
  };
}

/** The package scenarios' targets (profiles.ts: TARGETS), each on the package the table names. */
function packageTargets(
  primary: PackageResult,
  widest: PackageResult,
): Record<string, { package: string; history_tokens?: number } & HeldFigure> {
  const out: Record<string, { package: string; history_tokens?: number } & HeldFigure> = {};
  for (const k of Object.keys(TARGETS) as (keyof typeof TARGETS)[]) {
    const r = TARGETS[k].on === 'widest' ? widest : primary;
    // a follow-up's ratio depends on its prompt's length: the report says which
    out[k] = {
      package: r.package,
      ...(k === 'followup_ttft_ratio' ? { history_tokens: r.followup_history_tokens } : {}),
      ...held(r[k], TARGETS[k]),
    };
  }
  return out;
}

/** The primary package's figures that head the JSON report. */
export const BENCH_TOP_KEYS = [
  'ttft_ms',
  'decode_tok_s',
  'vision_ms',
  'peak_rss_mb',
  'kv_cache_speedup',
  'followup_ttft_ratio',
  'batch8_speedup',
  'js_overhead_share',
  'preprocess_ms',
  'prefill_ms',
  'e2e_ms',
  'image_cache_ttft_ratio',
  'shared_prefix_ttft_ratio',
  'grounding_answer_ms',
] as const;

export async function runBench(o: BenchOptions): Promise<Record<string, unknown>> {
  const threads = o.threads ?? os.availableParallelism();
  const t0 = performance.now();
  const results: PackageResult[] = [];
  results.push(await child(resolve(o.model), o.quick ? 'quick' : 'full', threads));
  let weights: WeightTable | undefined;
  if (o.large !== false && !o.quick) {
    // fp32 and every weight type at once: the random checkpoints are written once for all of them
    await ensureLargePackage(o.large, o.log, o.dtypes.length > 0 ? o.dtypes : undefined);
    results.push(await child(o.large, 'large', threads));
    if (o.dtypes.length > 0) weights = await weightTable(o.large, o.dtypes, threads, o.log);
  }
  const primary = results[0];
  const large = results[1];
  const report: Record<string, unknown> = {
    ...Object.fromEntries(BENCH_TOP_KEYS.map((k) => [k, round(primary[k])])),
    package: primary.package,
    profile: o.quick ? 'quick' : 'full',
    machine: machine(),
    seconds: Math.round((performance.now() - t0) / 100) / 10,
    targets: {
      ...packageTargets(primary, large ?? primary),
      identical_greedy_tokens: results.every(
        (r) => r.kv_cache_identical && r.followup_identical && r.batch8_identical && r.shared_prefix_identical,
      ),
      ...(weights
        ? Object.fromEntries(
            Object.entries(weights.targets)
              .filter(([, v]) => v)
              .map(([k, v]) => [k, { package: 'weight types', ...v }]),
          )
        : {}),
    },
    ...(weights ? { weights: { results: weights.results, ratios: weights.ratios } } : {}),
    packages: Object.fromEntries(results.map((r, i) => [i === 0 ? 'primary' : 'large', roundAll(r)])),
  };
  if (large)
    (report.packages as Record<string, unknown>).large_description =
      `random Llama-2-7B-shaped package, ${LARGE_LAYERS.llm} LLM layers and ${LARGE_LAYERS.vit} EVA ViT-g blocks (src/convert/random-checkpoints.ts, fp32): per-layer cost at real width`;
  const md = markdown(report, results);
  if (o.report) await writeReport(o.report, md);
  o.write(o.json ? `${JSON.stringify(report)}\n` : md);
  return report;
}
