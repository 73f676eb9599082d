// `minigpt bench --quick --json` on the demo package: one JSON object with the keys issue 8 asks for, every
// optimisation checked to give the same greedy tokens as its baseline; the table and progress otherwise.
import { describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stat } from '../../src/cli/bench/common.js';
import { BENCH_TOP_KEYS } from '../../src/cli/bench/run.js';
import type { ApiBenchResult } from '../../src/cli/bench/api.js';
import {
  medianResult,
  parseDtypes,
  weightRatios,
  weightsMarkdown,
  type ThreadResult,
  type WeightsResult,
} from '../../src/cli/bench/weights.js';
import { minigpt } from '../helpers/cli.js';
import { convertTinyV2 } from '../helpers/tiny-package.js';

describe('minigpt bench', () => {
  it('--quick --json prints one JSON object with the numbers, progress going to stderr', async () => {
    const work = await mkdtemp(join(tmpdir(), 'minigpt-bench-'));
    try {
      const report = join(work, 'bench.md');
      const t0 = performance.now();
      const r = await minigpt(['bench', '--quick', '--json', '--report', report]);
      expect(r.code, r.stderr).toBe(0);
      expect(performance.now() - t0).toBeLessThan(60_000);
      const lines = r.stdout.trim().split('\n');
      expect(lines).toHaveLength(1);
      const j = JSON.parse(lines[0]) as Record<string, unknown>;
      for (const k of BENCH_TOP_KEYS) {
        expect(typeof j[k], k).toBe('number');
        expect(Number.isFinite(j[k]), k).toBe(true);
      }
      expect((j.targets as { identical_greedy_tokens: boolean }).identical_greedy_tokens).toBe(true);
      expect(r.stderr).toMatch(/\[bench models\/demo\] decode/);
      const md = await readFile(report, 'utf8');
      expect(md).toMatch(/^# Benchmarks/);
      expect(md).toContain('| **8 conversations** batched / one after another |');
      // the grounding answer about the web demo's first example scene, with its target (issue 7: under 1 s)
      expect(r.stderr).toMatch(/grounding answer about a demo scene/);
      expect(md).toContain('| **grounding answer** about a demo scene (image bytes to last token) |');
      const g = (j.targets as Record<string, { value: number; target: number }>).grounding_answer_ms;
      expect(g.target).toBe(1000);
      expect(g.value).toBe(j.grounding_answer_ms);
      const primary = (j.packages as { primary: { grounding_answer_tokens: number; grounding_answer_text: string } }).primary;
      expect(primary.grounding_answer_tokens).toBeGreaterThan(0);
      expect(typeof primary.grounding_answer_text).toBe('string');
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });

  it("--thread: a new image, a follow-up, then another thread about the image from the first one's kept rows", async () => {
    const r = await minigpt(['bench', '--thread', 'models/demo', '--rounds', '2', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as ThreadResult;
    expect(j.layers).toBe(4);
    for (const k of ['ttft_new_image_ms', 'followup_ttft_ms', 'other_thread_ttft_ms', 'decode_tok_s'] as const)
      expect(j[k], k).toBeGreaterThan(0);
    // the follow-up prefills its own question; the other thread its question, not the image nor the text before it
    expect(j.followup_prefilled_tokens).toBeLessThan(j.followup_prompt_tokens - j.prompt_tokens);
    expect(j.other_thread_prompt_tokens - j.other_thread_prefilled_tokens).toBeGreaterThan(16);
    expect(j.other_thread_prefilled_tokens).toBeLessThan(j.other_thread_prompt_tokens - 16);
    expect(r.stderr).toMatch(/another thread about the image/);
  });

  it('--api: a conversation through the OpenAI-compatible API, the follow-up with and without the kept KV cache', async () => {
    const r = await minigpt(['bench', '--api', 'models/demo', '--rounds', '2', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as ApiBenchResult;
    expect(j.rounds).toBe(1); // the first is a warm-up
    expect(j.identical).toBe(true);
    // the follow-up's prompt is the first's, its 32-token answer and the new question; all but the question cached
    expect(j.followup_prompt_tokens).toBeGreaterThan(j.first_prompt_tokens + 32);
    expect(j.followup_cached_tokens).toBeGreaterThan(j.first_prompt_tokens + 31);
    expect(j.followup_cached_tokens).toBeLessThan(j.followup_prompt_tokens);
    for (const k of ['first_ttft_ms', 'followup_ttft_ms', 'followup_ttft_nocache_ms'] as const) expect(j[k], k).toBeGreaterThan(0);
    expect(j.followup_ratio).toBeCloseTo(j.followup_ttft_ms / j.followup_ttft_nocache_ms, 3);
    expect(r.stderr).toMatch(/\[bench api fp32 .*models\/demo\] round 2\/2/);
  });

  it('reports medians and nearest-rank p95', () => {
    expect(stat([5, 1, 3])).toEqual({ median: 3, p95: 5, n: 3 });
    expect(stat([4, 1, 3, 2])).toEqual({ median: 2.5, p95: 4, n: 4 });
    expect(stat(Array.from({ length: 20 }, (_, i) => i + 1)).p95).toBe(19);
  });

  it('measures each weight type of a package in a child process: vision, prefill, decoding step, RSS; ratios to fp32', async () => {
    const work = await mkdtemp(join(tmpdir(), 'minigpt-bench-weights-'));
    try {
      const results: WeightsResult[] = [];
      for (const dtype of ['fp32', 'int4'] as const) {
        const dir = join(work, dtype);
        await convertTinyV2(dir, { dtype });
        const r = await minigpt(['bench', '--child-weights', dir, '--threads', '1']);
        expect(r.code, r.stderr).toBe(0);
        const j = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as WeightsResult;
        expect(j.dtype).toBe(dtype);
        expect(j.accuracy_level).toBe(dtype === 'int4' ? 4 : null);
        expect(j.block_size).toBe(dtype === 'int4' ? 32 : null);
        for (const k of ['load_ms', 'vision_ms', 'prefill_ms', 'decode_step_ms', 'peak_rss_mb'] as const)
          expect(j[k], k).toBeGreaterThan(0);
        expect(j.prompt_tokens).toBeGreaterThan(20); // the image's tokens and the prompt's
        if (results[0]) expect(j.prompt_tokens).toBe(results[0].prompt_tokens);
        results.push(j);
      }
      // the packages' files: int4 is the smaller
      expect(results[1].bytes).toBeLessThan(results[0].bytes);
      const ratios = weightRatios(results);
      expect(ratios[0]).toMatchObject({ variant: 'fp32', decode_speedup: 1, prefill_ratio: 1, size_ratio: 1 });
      expect(ratios[1].decode_speedup).toBeCloseTo(results[0].decode_step_ms / results[1].decode_step_ms, 10);
      expect(ratios[1].size_ratio).toBeCloseTo(results[1].bytes / results[0].bytes, 10);
      const md = weightsMarkdown(results, ratios, { llm: 4, vit: 4 });
      expect(md.filter((l) => l.startsWith('| int4 | 32, 4 |'))).toHaveLength(1);
      expect(md.filter((l) => l.startsWith('| fp32 | - |'))).toHaveLength(1);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }, 120_000);

  it('--dtypes: fp32 always measured as the baseline, block sizes for int8 / int4, none skips the table, unknown types refused', () => {
    const names = (v: string | undefined) => parseDtypes(v).map((x) => x.name);
    expect(names(undefined)).toEqual(['fp32', 'fp16', 'int8', 'int4', 'int4-b128']);
    expect(names('int4,int8')).toEqual(['fp32', 'int4', 'int8']);
    expect(parseDtypes('int4-b64')).toEqual([
      { name: 'fp32', dtype: 'fp32' },
      { name: 'int4-b64', dtype: 'int4', blockSize: 64 },
    ]);
    expect(parseDtypes('none')).toEqual([]);
    expect(() => parseDtypes('int3')).toThrow(/int3 is not a weight type/);
    expect(() => parseDtypes('fp16-b64')).toThrow(/a block size is for int8 \/ int4/);
  });

  it('a variant measured in several processes: the median of each time, the largest peak RSS', () => {
    const run = (decode: number, prefill: number, rss: number): WeightsResult => ({
      package: 'p',
      dtype: 'int4',
      block_size: 32,
      accuracy_level: 4,
      bytes: 1,
      load_ms: 1,
      vision_ms: 2,
      prefill_ms: prefill,
      prompt_tokens: 9,
      decode_step_ms: decode,
      peak_rss_mb: rss,
    });
    const m = medianResult([run(30, 900, 1000), run(10, 1100, 1200), run(20, 1000, 1100)]);
    expect(m).toMatchObject({ decode_step_ms: 20, prefill_ms: 1000, peak_rss_mb: 1200, runs: 3, vision_ms: 2 });
  });
});
