// scripts/gpu-compare.sh (issue 21) at toy size on the CPU (GPU_COMPARE_TOY=1): the steps the GPU run takes, with the
// interface the GPU run keeps: the last line of stdout is one JSON object with the baseline, every configuration of
// ours, the best one and the decode ratio. Needs Debian's python3-torch (npm test installs it first: scripts/test-tools.sh).
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers/cli.js';

interface Measured {
  vision_ms: number;
  ttft_ms: number;
  prompt_tokens: number;
  decode_tok_s: number;
  batch8_tok_s: number;
}

describe('scripts/gpu-compare.sh GPU_COMPARE_TOY=1', () => {
  it('runs every step at toy size and prints the comparison as one JSON line', async () => {
    const work = await mkdtemp(join(tmpdir(), 'minigpt-gpu-compare-'));
    try {
      const t0 = performance.now();
      // one layer and one ViT block, half the tiny preset's depths, as the GPU run is shallower than Llama-2-7B:
      // the JSON extrapolates to the preset's depths
      const r = await runCompare({ GPU_COMPARE_TOY: '1', MINIGPT_GPU_WORK: work }, ['1', '1']);
      expect(r.code, r.stderr).toBe(0);
      expect(performance.now() - t0).toBeLessThan(240_000); // the bound for the toy run
      const last = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as {
        device: string;
        layers: number;
        vit_depth: number;
        toy: boolean;
        baseline: Measured & { impl: string; dtype: string };
        ours: Record<
          string,
          Measured & {
            provider: string;
            dtype: string;
            graph: string;
            compute: string;
            vs_fp32?: { image_embeds_max_abs: number; logits_max_abs: number; same_top1: boolean };
            attention_check: { max_run_positions: number | null; exact: boolean; probes: [number, number, number][] } | null;
          }
        >;
        best: string;
        decode_ratio: number;
        at_full_depth: {
          layers: number;
          vit_depth: number;
          extrapolated: boolean;
          baseline: Omit<Measured, 'prompt_tokens'>;
          ours: Record<string, Omit<Measured, 'prompt_tokens'>>;
        };
        done_when: Record<'decode_2x_baseline' | 'ttft_under_150_ms' | 'batch8_4x_batch1' | 'verify_fp32_fp16', boolean | null>;
        profile: {
          config: string;
          provider: string;
          classes: { graph: string; rows: number | null; runs: number; wall_ms: number; kernel_ms: number; top: { op: string }[] }[];
        };
        skipped: string[];
        elapsed_s: number;
        verify: Record<
          string,
          { ok: boolean; dtype: string; compute: string; bound: number; max_abs_err: number; greedy_agreement: number }
        >;
      };
      expect(last).toMatchObject({ device: 'cpu', layers: 1, vit_depth: 1, toy: true });
      expect(['torch', 'transformers']).toContain(last.baseline.impl);
      expect(Object.keys(last.ours)).toEqual(['fp32', 'fp16-c16', 'fp16-c16-fused', 'int4', 'int4-fused', 'int4-c16-fused']);
      for (const [config, m] of Object.entries({ baseline: last.baseline, ...last.ours })) {
        for (const k of ['vision_ms', 'ttft_ms', 'decode_tok_s', 'batch8_tok_s'] as const)
          expect(m[k], `${config} ${k}`).toBeGreaterThan(0);
        // the same prompt on both sides: the image's 256 rows and about 45 text tokens
        expect(Math.abs(m.prompt_tokens - 300), config).toBeLessThanOrEqual(8);
      }
      // every configuration's image embeddings and prompt logits against fp32's, at the run's shape
      expect(last.ours.fp32.vs_fp32).toEqual({ image_embeds_max_abs: 0, logits_max_abs: 0, same_top1: true });
      for (const [config, m] of Object.entries(last.ours)) {
        expect(m.vs_fp32, config).toBeDefined();
        expect(m.vs_fp32!.image_embeds_max_abs, config).toBeLessThan(config.startsWith('int4') ? 1 : 0.05);
        expect(Number.isFinite(m.vs_fp32!.logits_max_abs), config).toBe(true);
      }
      // float16 weights and compute move the fp32 results, but not by nothing
      expect(last.ours['fp16-c16'].vs_fp32!.image_embeds_max_abs).toBeGreaterThan(0);
      for (const [config, m] of Object.entries(last.ours)) {
        expect(m.provider).toBe('cpu');
        expect(m.dtype).toBe(config.split('-')[0]);
        expect(m.graph).toBe(config.endsWith('-fused') ? 'fused' : 'plain');
        expect(m.compute).toBe(config.includes('-c16') ? 'float16' : 'float32');
        // the fused attention is checked off the CPU provider only (its kernel is the reference)
        expect(m.attention_check, config).toBeNull();
      }
      // minigpt verify on the same provider against the original's reference tensors, per weight / compute type
      expect(Object.keys(last.verify)).toEqual(['fp32', 'fp16', 'fp16-c16']);
      for (const [config, v] of Object.entries(last.verify)) {
        expect(v.ok, `${config}: ${JSON.stringify(v)}`).toBe(true);
        expect(v.dtype).toBe(config.split('-')[0]);
        expect(v.compute).toBe(config.endsWith('-c16') ? 'float16' : 'float32');
        expect(v.max_abs_err).toBeLessThan(v.bound);
        expect(v.greedy_agreement).toBe(1);
      }
      const best = Object.entries(last.ours).sort((a, b) => b[1].decode_tok_s - a[1].decode_tok_s)[0];
      expect(last.best).toBe(best[0]);
      expect(last.decode_ratio).toBeCloseTo(best[1].decode_tok_s / last.baseline.decode_tok_s, 2);
      // at the preset's depths (2 layers, 2 blocks: twice the run's), linear in depth: times x2, rates / 2
      expect(last.at_full_depth).toMatchObject({ layers: 2, vit_depth: 2, extrapolated: true });
      expect(Object.keys(last.at_full_depth.ours)).toEqual(Object.keys(last.ours));
      for (const [config, m] of Object.entries({ baseline: last.baseline, ...last.ours })) {
        const f = config === 'baseline' ? last.at_full_depth.baseline : last.at_full_depth.ours[config];
        expect(f.vision_ms, config).toBeCloseTo(2 * m.vision_ms, 0);
        expect(f.ttft_ms, config).toBeCloseTo(2 * m.vision_ms + 2 * (m.ttft_ms - m.vision_ms), 0);
        expect(f.decode_tok_s, config).toBeCloseTo(m.decode_tok_s / 2, 0);
        expect(f.batch8_tok_s, config).toBeCloseTo(m.batch8_tok_s / 2, 0);
      }
      // the targets, judged for the best configuration at those depths
      const full = last.at_full_depth.ours[last.best];
      expect(last.done_when).toEqual({
        decode_2x_baseline: full.decode_tok_s >= 2 * last.at_full_depth.baseline.decode_tok_s,
        ttft_under_150_ms: full.ttft_ms < 150,
        batch8_4x_batch1: best[1].batch8_tok_s >= 4 * best[1].decode_tok_s,
        verify_fp32_fp16: true,
      });
      // where the best configuration's time goes, from onnxruntime's profiles of the same work run once more
      expect(last.profile).toMatchObject({ config: last.best, provider: 'cpu' });
      const kind = (graph: string, rows: number | null) => last.profile.classes.find((c) => c.graph === graph && c.rows === rows);
      expect(kind('vision', 1025)?.top.length).toBeGreaterThan(0); // 448 px: 32 x 32 patches and the class token
      // the prompts' prefills (a warm-up, one answer, eight answers; in chunks of 128 positions on the CPU): every
      // prompt position once in each, and nothing else runs more than 8 rows
      const prefilled = last.profile.classes.filter((c) => c.graph === 'decoder' && c.rows! > 8).reduce((n, c) => n + c.rows! * c.runs, 0);
      expect(prefilled).toBe(10 * last.ours[last.best].prompt_tokens);
      expect(kind('decoder', 1)?.runs).toBeGreaterThanOrEqual(24 - 1);
      expect(kind('decoder', 8)?.runs).toBeGreaterThan(0); // the eight answers decoding together
      for (const c of last.profile.classes) expect(c.wall_ms, `${c.graph} ${c.rows}`).toBeGreaterThanOrEqual(c.kernel_ms);
      expect(r.stderr).toMatch(/^== profile: \S+ on cpu$/m);
      expect(await readFile(join(work, 'out', 'profile.txt'), 'utf8')).toMatch(/^vision, 1025 rows: \d+ runs; a run: wall /m);
      // nothing was left out for time
      expect(last.skipped).toEqual([]);
      expect(last.elapsed_s).toBeGreaterThan(0);
      // the raw log and the result are kept beside it
      expect(JSON.parse(await readFile(join(work, 'out', 'result.json'), 'utf8'))).toEqual(last);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }, 300_000);

  it('past GPU_COMPARE_LIMIT_S, the steps not started are skipped, named, and the JSON line still printed', async () => {
    const work = await mkdtemp(join(tmpdir(), 'minigpt-gpu-compare-limit-'));
    try {
      // (the checkpoint and the conversions always run; a limit of 1 s leaves no time for anything after them)
      const r = await runCompare({
        GPU_COMPARE_TOY: '1',
        MINIGPT_GPU_WORK: work,
        GPU_COMPARE_LIMIT_S: '1',
        GPU_COMPARE_CONFIGS: 'fp32 int4',
      });
      expect(r.code, r.stderr).toBe(0);
      const last = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as {
        skipped: string[];
        ours: object;
        baseline: unknown;
        verify: object;
      };
      expect(last.skipped).toEqual(['verify:fp32', 'verify:fp16', 'verify:fp16-c16', 'baseline', 'ours:fp32', 'ours:int4']);
      expect(last.ours).toEqual({});
      expect(last.baseline).toBeNull();
      expect(r.stderr).toMatch(/skipped ours:int4: -?\d+ s left of GPU_COMPARE_LIMIT_S=1/);
      // both packages were converted (in parallel where the machine has the cores)
      expect(r.stderr).toMatch(/converted fp32 in \d+ s/);
      expect(r.stderr).toMatch(/converted int4 in \d+ s/);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }, 120_000);
});

function runCompare(env: Record<string, string>, args: string[] = []): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn('bash', ['scripts/gpu-compare.sh', ...args], { cwd: ROOT, env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('error', reject);
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
