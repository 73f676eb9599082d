// Where a run's time goes (src/inference/profile.ts): onnxruntime's own traces, written by real sessions of the demo
// package on the CPU provider and on WebGPU (lavapipe), summed per graph and kind of run; and the reading of a
// trace, held against one written by hand.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiniGPT } from '../../src/inference/model.js';
import { conversationPrompt } from '../../src/inference/prompt.js';
import { formatProfile, summariseProfiles, type ProfileSummary, type RunClass } from '../../src/inference/profile.js';
import type { Timings } from '../../src/inference/model.js';

const DEMO = join(import.meta.dirname, '..', '..', 'models', 'demo');
const IMAGE = join(import.meta.dirname, '..', 'fixtures', 'minigptv2-tiny', 'input.png');
const NEW_TOKENS = 6;

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-profile-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** One image and one greedy answer of NEW_TOKENS through a package loaded with profiling, then its summary. */
async function profiledAnswer(provider: 'cpu' | 'webgpu', dir: string): Promise<{ summary: ProfileSummary; timings: Timings }> {
  const m = await MiniGPT.load(DEMO, { provider, threads: 1, profileDir: dir });
  let timings: Timings | null = null;
  try {
    const img = await m.encodeImage(await readFile(IMAGE));
    const prompt = conversationPrompt(m.meta.prompt, [{ user: '[grounding] describe this image' }]);
    const greedy = { temperature: 0, maxNewTokens: NEW_TOKENS, stopIds: [], stopStrings: [], repetitionPenalty: 1 };
    for await (const ev of m.answer(prompt, [img.embeds], greedy)) if (ev.type === 'timings') timings = ev.timings;
  } finally {
    await m.close();
  }
  return { summary: await summariseProfiles(dir), timings: timings! };
}

const find = (s: ProfileSummary, graph: string, rows: number | null): RunClass | undefined =>
  s.classes.find((c) => c.graph === graph && c.rows === rows);

describe('profiles of real sessions', () => {
  it('CPU: the image, the prefill and each decoding step are told apart, with their kernels', async () => {
    const { summary, timings } = await profiledAnswer('cpu', join(work, 'cpu'));
    expect(summary.files.map((f) => f.split('/').pop()!.split('_')[0]).sort()).toEqual(['decoder-1', 'embed-2', 'vision-0']);
    // 112 px in 14 px patches: 64 patches and the class token
    const vision = find(summary, 'vision', 65);
    expect(vision).toMatchObject({ runs: 1, measured: 1, gpu_ms: null });
    expect(vision!.top.map((o) => o.op)).toContain('MatMul');
    const prefill = find(summary, 'decoder', timings.promptTokens);
    const steps = find(summary, 'decoder', 1);
    expect(prefill?.runs).toBe(1);
    // the first token comes from the prefill; each later one is a step of one row
    expect(steps).toMatchObject({ runs: NEW_TOKENS - 1, measured: NEW_TOKENS - 2, gpu_ms: null });
    // each token looked up once on the CPU (the prompt's text in one run, then one a step), no Linear in it
    expect(find(summary, 'embed', null)?.top[0]?.op).toBe('Gather');
    for (const c of [vision!, prefill!, steps!]) {
      expect(c.kernel_ms).toBeGreaterThan(0);
      expect(c.wall_ms).toBeGreaterThanOrEqual(c.kernel_ms);
      // the top ops are a part of the kernels' time, sorted
      const top = c.top.map((o) => o.ms);
      expect(top.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(c.kernel_ms * 1.001);
      expect([...top].sort((a, b) => b - a)).toEqual(top);
      expect(c.kernels).toBeGreaterThan(c.top.length);
    }
    // every decoder layer's q/k/v/o and gate/up/down projections run in each step
    const stepMatMuls = steps!.top.find((o) => o.op === 'MatMul')!;
    expect(stepMatMuls.count).toBeGreaterThanOrEqual(7 * 4);
    const text = formatProfile(summary);
    expect(text).toMatch(
      new RegExp(`^decoder, 1 row: ${NEW_TOKENS - 1} runs; a run: wall [\\d.]+ ms, kernels \\(CPU\\) [\\d.]+ ms, \\d+ kernels$`, 'm'),
    );
    expect(text).toMatch(/^vision, 65 rows: 1 run;/m);
    // a summary of traces written since a later time has nothing in it
    expect((await summariseProfiles(join(work, 'cpu'), { since: Date.now() + 60_000 })).classes).toEqual([]);
  }, 60_000);

  it('WebGPU: GPU time per run from its timestamp queries, by program', async () => {
    const { summary, timings } = await profiledAnswer('webgpu', join(work, 'webgpu'));
    const vision = find(summary, 'vision', 65)!;
    const steps = find(summary, 'decoder', 1)!;
    expect(find(summary, 'decoder', timings.promptTokens)?.runs).toBe(1);
    expect(steps.runs).toBe(NEW_TOKENS - 1);
    // every program placed in a run, and each step ran the same programs
    expect(summary.unmatched_programs).toBe(0);
    expect(Number.isInteger(steps.kernels), String(steps.kernels)).toBe(true);
    for (const c of [vision, steps]) {
      expect(c.gpu_ms).toBeGreaterThan(0);
      expect(c.top.reduce((a, o) => a + o.ms, 0)).toBeLessThanOrEqual(c.gpu_ms! * 1.001);
    }
    // the patch embedding's convolution runs as WebGPU's Conv2dMM program
    expect(vision.top.map((o) => o.op)).toContain('Conv:Conv2dMM');
    // the token embedding stays on the CPU provider: no GPU time
    expect(find(summary, 'embed', null)?.gpu_ms).toBeNull();
    expect(formatProfile(summary)).toMatch(
      /^decoder, 1 row: \d+ runs; a run: wall [\d.]+ ms, kernels \(CPU\) [\d.]+ ms, GPU [\d.]+ ms, \d+ kernels$/m,
    );
  }, 120_000);
});

describe('reading a trace', () => {
  it('places GPU programs in their runs by node order, counts Linear rows, and leaves the first run of a kind out', async () => {
    const dir = join(work, 'hand');
    await mkdir(dir);
    const run = (ts: number, dur: number) => ({ cat: 'Session', name: 'model_run', ts, dur });
    const node = (name: string, ts: number, dur: number, op: string, shapes: number[][], provider = 'WebGpuExecutionProvider') => ({
      cat: 'Node',
      name: `${name}_kernel_time`,
      ts,
      dur,
      args: { op_name: op, provider, input_type_shape: shapes.map((s) => ({ float: s })) },
    });
    // per run: a Linear (q), attention's product of two activations (not a Linear), the fused MLP, a CPU node
    const nodes = (t: number, rows: number, us: [number, number, number]) => [
      node('q', t + 10, us[0], 'MatMul', [
        [1, rows, 8],
        [8, 8],
      ]),
      node('scores', t + 20, us[1], 'MatMul', [
        [1, 4, rows, 2],
        [1, 4, 2, rows + 9],
      ]),
      node('mlp', t + 30, us[2], 'MatMulNBitsMlp', [
        [1, rows, 8],
        [8, 1, 16],
      ]),
      node('shape', t + 40, 10, 'Shape', [[1, rows, 8]], 'CPUExecutionProvider'),
    ];
    // GPU programs: after all the CPU events, in the order they ran, on a clock of their own (times meaningless)
    const api = (name: string, dur: number) => ({ cat: 'Api', name, ts: 7, dur, ph: 'X', args: {} });
    const quantize = api('mlp&MatMulNBitsMlp&DP4AMatMulQuantize', 0);
    const events = [
      run(0, 5000),
      ...nodes(0, 1, [1000, 100, 200]),
      run(10_000, 3000),
      ...nodes(10_000, 1, [500, 100, 100]),
      run(20_000, 1000),
      ...nodes(20_000, 1, [300, 50, 50]),
      run(30_000, 9000),
      ...nodes(30_000, 12, [2000, 500, 1000]),
      // run 0 (the fused MLP quantises its input twice: once for gate, once for up)
      api('q&MatMul&MatMul', 4000),
      { ...quantize, dur: 100 },
      { ...quantize, dur: 100 },
      api('mlp&MatMulNBitsMlp&DP4AMatMulNBits', 300),
      // run 1
      api('q&MatMul&MatMul', 1000),
      api('scores&MatMul&MatMul', 100),
      { ...quantize, dur: 50 },
      { ...quantize, dur: 50 },
      api('mlp&MatMulNBitsMlp&DP4AMatMulNBits', 200),
      // run 2: the same nodes, fewer programs
      api('q&MatMul&MatMul', 200),
      api('mlp&MatMulNBitsMlp&DP4AMatMulNBits', 100),
      // run 3 (12 rows)
      api('q&MatMul&MatMul', 6000),
      api('scores&MatMul&MatMul', 400),
      api('mlp&MatMulNBitsMlp&DP4AMatMulNBits', 1000),
      // a node no run has
      api('ghost&Add&Add', 5),
    ];
    // one GPU node per run: a program it has already run in this run starts the next
    const check = [
      ...[0, 100, 200].flatMap((t) => [run(t, 50), node('mha', t + 1, 5, 'MultiHeadAttention', [[1, 1, 8]])]),
      api('mha&MultiHeadAttention&CopyKVCache', 1000),
      api('mha&MultiHeadAttention&FlashAttention', 1000),
      api('mha&MultiHeadAttention&CopyKVCache', 1000),
      api('mha&MultiHeadAttention&FlashAttention', 3000),
      api('mha&MultiHeadAttention&CopyKVCache', 1000),
      api('mha&MultiHeadAttention&FlashAttentionDecodeQKV', 1000),
      api('mha&MultiHeadAttention&FlashAttentionDecodeVxReduce', 2000),
    ];
    await writeFile(join(dir, 'decoder-3_2026-12-06_10-00-00_001.json'), JSON.stringify(events));
    await writeFile(join(dir, 'check-4_2026-12-06_10-00-01_002.json'), JSON.stringify(check));
    await writeFile(join(dir, 'notes.json'), '[]');
    const s = await summariseProfiles(dir);
    expect(s.files.map((f) => f.slice(dir.length + 1))).toEqual([
      'check-4_2026-12-06_10-00-01_002.json',
      'decoder-3_2026-12-06_10-00-00_001.json',
    ]);
    expect(s.unmatched_programs).toBe(1);
    expect(s.classes).toEqual([
      {
        graph: 'check',
        rows: null,
        runs: 3,
        measured: 2,
        wall_ms: 0.05,
        kernel_ms: 0.005,
        gpu_ms: 4,
        kernels: 2.5,
        top: [
          { op: 'MultiHeadAttention:FlashAttention', ms: 1.5, count: 0.5 },
          { op: 'MultiHeadAttention:CopyKVCache', ms: 1, count: 1 },
          { op: 'MultiHeadAttention:FlashAttentionDecodeVxReduce', ms: 1, count: 0.5 },
          { op: 'MultiHeadAttention:FlashAttentionDecodeQKV', ms: 0.5, count: 0.5 },
        ],
      },
      {
        graph: 'decoder',
        rows: 1,
        runs: 3,
        measured: 2,
        wall_ms: 2,
        kernel_ms: 0.56,
        gpu_ms: 0.85,
        kernels: 3.5,
        top: [
          { op: 'MatMul', ms: 0.65, count: 1.5 },
          { op: 'MatMulNBitsMlp:DP4AMatMulNBits', ms: 0.15, count: 1 },
          { op: 'MatMulNBitsMlp:DP4AMatMulQuantize', ms: 0.05, count: 1 },
        ],
      },
      {
        graph: 'decoder',
        rows: 12,
        runs: 1,
        measured: 1,
        wall_ms: 9,
        kernel_ms: 3.51,
        gpu_ms: 7.4,
        kernels: 3,
        top: [
          { op: 'MatMul', ms: 6.4, count: 2 },
          { op: 'MatMulNBitsMlp:DP4AMatMulNBits', ms: 1, count: 1 },
        ],
      },
    ]);
  });
});
