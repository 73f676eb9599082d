// The report of `minigpt bench`: the table (markdown) every run prints, and the file --report writes
// (docs/benchmarks.md is one: `npm run bench -- --report docs/benchmarks.md`), the JSON object below the table.
// The table's rows and wording are what docs/benchmarks.md has always had: a new run replaces the file's table
// and keeps its hand-written notes, so a changed row would read as a changed measurement.
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { fmt } from './common.js';
import type { PackageResult } from './package.js';
import { boundText, LARGE_LAYERS } from './profiles.js';
import { weightsMarkdown, type WeightRatio, type WeightsResult } from './weights.js';

/** The machine a run measured, as the report's first line and the JSON's `machine` give it. */
export interface Machine {
  cpu: string;
  cores: number;
  memory_gb: number;
  load_average: number[];
  platform: string;
  node: string;
}

export function machine(): Machine {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    cores: os.availableParallelism(),
    memory_gb: Math.round(os.totalmem() / 2 ** 30),
    load_average: os.loadavg().map((x) => Math.round(x * 100) / 100),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
  };
}

const NOTES_MARKER = '<!-- notes: kept by minigpt bench -->';

const DOC_HEAD = `# Benchmarks

Produced by \`npm run bench -- --report docs/benchmarks.md\` (\`minigpt bench\`, src/cli/bench.ts); \`--json\` prints
the same JSON object alone, \`--quick\` a short profile of the demo package. Each package runs in a child
process of its own (its peak RSS is that process's), greedy decoding throughout; times are medians with the
p95 in brackets, after warm-up runs; every optimisation is a ratio against its baseline measured in the same
process right before or after it:

- **KV cache on / off**: a decoding step with the cache vs the whole sequence recomputed for the token.
- **follow-up with / without the last turn's cache**: time to first token of a follow-up in a thread whose
  prompt has the given number of tokens (image included), when the conversation kept its KV cache (as the
  conversation manager does: after each answer the cache is brought up to the next prompt's start, timed
  separately) vs a full prefill of the re-tokenised prompt.
- **8 conversations batched / one after another**: 8 threads about the same image each ask a follow-up
  (the first turn's cache kept, as above) and get a fixed-length greedy answer; all 8 at once through the
  model's engine (continuous batching: one session run per step for every conversation decoding) vs one
  after another. Both sides give the same tokens (checked).
- **image cache hit / miss**: time to first token of a conversation's first turn when the image's vision
  embeddings are cached (same image seen before, by hash) vs encoded.
- **JavaScript share**: of the wall time of a decoding loop (sampling, incremental detokenisation, streaming,
  KV bookkeeping, batching), the part spent outside \`session.run\`.

`;

export function markdown(report: Record<string, unknown>, results: PackageResult[]): string {
  const m = report.machine as Machine;
  const lines: string[] = [];
  lines.push(
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memory_gb} GB, ${m.platform}, Node ${m.node}; load average at the end ${m.load_average.join(' / ')}.`,
  );
  lines.push(
    `Profile: ${report.profile}; ${report.seconds} s in all. Times are medians (p95) after warm-up; each ratio's two sides ran in the same process.`,
  );
  if (results.length > 1) {
    lines.push('');
    lines.push(
      `\`${results[1].package}\` is the 7B-layer-shaped package: ${LARGE_LAYERS.llm} decoder layers of Llama-2-7B (hidden 4096, 32 heads, MLP 11008) with its ` +
        `32000-token embedding and head, and ${LARGE_LAYERS.vit} EVA ViT-g blocks at 448 px, random weights written in the published formats by ` +
        'src/convert/random-checkpoints.ts and converted to fp32 by `minigpt convert`: per-layer cost at real width on this CPU. A full 7B model ' +
        `has 32 layers: its steps and prefills would take roughly ${Math.round(32 / LARGE_LAYERS.llm)} times the layer part of these.`,
    );
  }
  lines.push('');
  const head = ['', ...results.map((r) => `\`${r.package}\``)];
  lines.push(`| ${head.join(' | ')} |`);
  lines.push(`| ${head.map(() => '---').join(' | ')} |`);
  const row = (label: string, f: (r: PackageResult) => string) => lines.push(`| ${label} | ${results.map(f).join(' | ')} |`);
  const dist = (r: PackageResult, k: string, unit = ' ms') =>
    r.stats[k] ? `${fmt(r.stats[k].median, unit)} (${fmt(r.stats[k].p95, unit)})` : '-';
  row('model', (r) => `${r.shape.llm}; vision ${r.shape.vision}; ${r.shape.dtype}`);
  row('threads', (r) => String(r.threads));
  row('load', (r) => fmt(r.load_ms, ' ms'));
  row('image preprocessing', (r) => dist(r, 'preprocess_ms'));
  row('vision encoder', (r) => dist(r, 'vision_ms'));
  row('prefill (prompt tokens)', (r) => `${dist(r, 'prefill_ms')} (${r.prompt_tokens} tokens)`);
  row('time to first token (new image)', (r) => dist(r, 'ttft_ms'));
  row('decode', (r) => `${fmt(r.decode_tok_s)} tok/s; ${dist(r, 'decode_step_ms')} per step`);
  row('end-to-end answer', (r) => `${dist(r, 'e2e_ms')} (${r.answer_tokens} tokens)`);
  row('peak RSS', (r) => fmt(r.peak_rss_mb, ' MB'));
  row(
    '**KV cache** on / off (per token)',
    (r) =>
      `**${fmt(r.kv_cache_speedup, 'x')}** faster: ${dist(r, 'decode_step_ms')} vs ${dist(r, 'kv_off_step_ms')}; same tokens: ${r.kv_cache_identical}`,
  );
  row(
    "**follow-up** TTFT with / without the last turn's cache",
    (r) =>
      `**${fmt(r.followup_ttft_ratio)}**: ${dist(r, 'followup_ttft_ms')} vs ${dist(r, 'full_prefill_ttft_ms')}; ${r.followup_history_tokens}-token prompt, ${r.followup_prefill_tokens} prefilled; cache brought up to date after the previous answer in ${fmt(r.followup_extend_ms, ' ms')}; same tokens: ${r.followup_identical}`,
  );
  row(
    '**8 conversations** batched / one after another',
    (r) =>
      `**${fmt(r.batch8_speedup, 'x')}** faster: ${dist(r, 'batch8_batched_ms')} vs ${dist(r, 'batch8_sequential_ms')} (follow-ups, ${r.batch8_tokens} tokens each; ${fmt(r.batch8_mean_rows)} rows per step); same tokens: ${r.batch8_identical}${r.batch8_cold_speedup ? `; first turns about one new image (one after another: 8 full prefills; together: the image's rows prefilled once): ${fmt(r.batch8_cold_speedup, 'x')}` : ''}`,
  );
  row(
    '**image cache** hit / miss (TTFT of a first turn)',
    (r) => `**${fmt(r.image_cache_ttft_ratio)}**: ${dist(r, 'image_cache_hit_ttft_ms')} vs ${dist(r, 'image_cache_miss_ttft_ms')}`,
  );
  row(
    "**shared prefix**: another conversation's first turn about the image, with / without the first one's cached rows",
    (r) =>
      `**${fmt(r.shared_prefix_ttft_ratio)}**: ${dist(r, 'shared_prefix_ttft_ms')} vs ${dist(r, 'image_cache_hit_ttft_ms')} (the image's embeddings cached on both sides); same answer: ${r.shared_prefix_identical}`,
  );
  row(
    '**grounding answer** about a demo scene (image bytes to last token)',
    (r) =>
      `**${dist(r, 'grounding_answer_ms')}** (${r.grounding_answer_tokens} tokens${r.grounding_answer_tokens ? `: \`${r.grounding_answer_text.replace(/`/g, "'").replace(/\|/g, '\\|').slice(0, 160)}\`` : ''})`,
  );
  row(
    '**JavaScript** share of a decoding step',
    (r) =>
      `**${fmt(r.js_overhead_share * 100, '%')}** (${fmt(r.js_overhead_us_per_step, ' µs')} of ${fmt(r.decode_step_ms * 1000, ' µs')})`,
  );
  lines.push('');
  const t = report.targets as Record<
    string,
    { package: string; value: number; target: number; met: boolean; history_tokens?: number } | boolean
  >;
  lines.push('Targets:');
  for (const [k, v] of Object.entries(t)) {
    if (typeof v === 'boolean') lines.push(`- ${k}: ${v ? 'yes' : 'NO'}`);
    else
      lines.push(
        `- ${k} on \`${v.package}\`${v.history_tokens ? ` (${v.history_tokens}-token prompt)` : ''}: ${v.value} (target ${boundText(k)} ${v.target}): ${v.met ? 'met' : 'NOT met'}`,
      );
  }
  const w = report.weights as { results: WeightsResult[]; ratios: WeightRatio[] } | undefined;
  if (w) lines.push('', ...weightsMarkdown(w.results, w.ratios, LARGE_LAYERS));
  lines.push('');
  lines.push('```json');
  lines.push(JSON.stringify(report));
  lines.push('```');
  return `${lines.join('\n')}\n`;
}

/** Writes the report file: this run's table, and the hand-written notes below the marker of the old one. */
export async function writeReport(file: string, md: string): Promise<void> {
  const old = existsSync(file) ? await readFile(file, 'utf8') : '';
  const at = old.indexOf(NOTES_MARKER);
  await writeFile(file, `${DOC_HEAD}${md}${at >= 0 ? `\n${old.slice(at)}` : ''}`);
}
