// The WebGPU path, run on this machine's CPU through Mesa's software Vulkan driver (lavapipe: the same WebGPU
// kernels a GPU runs, in software; scripts/test-tools.sh installs it). On WebGPU the KV cache stays in device
// memory ('present' mode), where JavaScript cannot read it: re-packing a batch, a conversation's kept prefix
// and copies run as a graph on the device (src/inference/kv-device.ts). Each must give the CPU's results.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiniGPT } from '../../src/inference/model.js';
import { conversationPrompt, type Turn } from '../../src/inference/prompt.js';
import type { CachedContext } from '../../src/inference/kv-reuse.js';
import type { KvCache } from '../../src/inference/kv-cache.js';
import { PresentBlock } from '../../src/inference/kv-blocks.js';
import { DeviceKvCopier } from '../../src/inference/kv-device.js';
import { withoutOutputs } from '../../src/inference/graph-prune.js';
import { GraphBuilder } from '../../src/convert/onnx/builder.js';
import { attentionGraph, checkAttention } from '../../src/inference/attention-check.js';
import { parseWebGpuValidation } from '../../src/inference/providers.js';
import { DTYPE_BOUNDS, verifyPackage } from '../../src/inference/verify.js';
import { argmax } from '../../src/inference/generation/index.js';
import { maxAbsDiff } from '../helpers/golden.js';
import { greedySteps } from '../helpers/greedy.js';
import { convertTinyV2, GOLDEN_V2 } from '../helpers/tiny-package.js';

let work: string;
let cpu: MiniGPT;
let gpu: MiniGPT;
let image: Float32Array;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-webgpu-'));
  await convertTinyV2(join(work, 'fp32'));
  cpu = await MiniGPT.load(join(work, 'fp32'), { provider: 'cpu', threads: 1 });
  gpu = await MiniGPT.load(join(work, 'fp32'), { provider: 'webgpu' });
  image = (await cpu.encodeImage(await readFile(join(GOLDEN_V2, 'input.png')))).embeds;
}, 180_000);

afterAll(async () => {
  await cpu?.close();
  await gpu?.close();
  await rm(work, { recursive: true, force: true });
});

const QUESTIONS = ['[grounding] describe this image', '[refer] the red square', 'what is it'];
const prompt = (q: string) => conversationPrompt(cpu.meta.prompt, [{ user: q }]);
const inDeviceMemory = (s: KvCache) => Object.values((s.storage as PresentBlock).feeds).every((t) => t.location === 'gpu-buffer');
const TOL = DTYPE_BOUNDS.fp32.tensor;

describe('WebGPU (software Vulkan)', () => {
  it('opens the package on WebGPU with the KV cache in device memory', async () => {
    expect(gpu.provider).toBe('webgpu');
    expect(gpu.decoder.mode).toBe('present');
    // the token embedding (a table lookup) on the CPU: no device round trip per new token
    expect(gpu.embedder.provider).toBe('cpu');
    const pre = await gpu.prefill(await gpu.context(prompt(QUESTIONS[0]), [image]));
    try {
      expect(pre.state.storage).toBeInstanceOf(PresentBlock);
      expect(inDeviceMemory(pre.state)).toBe(true);
    } finally {
      pre.state.dispose();
    }
  });

  it('batched steps, a conversation leaving the batch, prefixes and copies of batch rows: the CPU logits', async () => {
    const run = async (model: MiniGPT) => {
      const d = model.decoder;
      const logits: Float32Array[] = [];
      const live = new Set<KvCache>();
      const keep = (s: KvCache) => {
        live.add(s);
        return s;
      };
      try {
        let states = await Promise.all(
          QUESTIONS.map(async (q) => keep((await d.forward((await model.context(prompt(q), [image])).embeds, null)).state)),
        );
        // three conversations of different lengths, together: rows re-packed (left-padded) into one batch
        for (let t = 0; t < 3; t++) {
          const r = await d.step(states, [5 + t, 9 + t, 13 + t]);
          logits.push(...r.logits.map((l) => l.slice()));
          states = r.states.map(keep);
        }
        // one leaves: the other two re-packed
        let two = (await d.step([states[2], states[0]], [4, 6])).states.map(keep);
        const r2 = await d.step(two, [7, 8]);
        logits.push(...r2.logits.map((l) => l.slice()));
        two = r2.states.map(keep);
        // a prefix of a batch row (the context a conversation keeps), and a copy, each stepped on its own
        const prefix = keep(await d.prefix(two[1], two[1].length - 2));
        const copy = keep(await d.clone(two[0]));
        for (const [s, token] of [
          [prefix, 11],
          [copy, 12],
        ] as const) {
          if (model === gpu) expect(inDeviceMemory(s)).toBe(true);
          logits.push((await d.step([s], [token])).logits[0].slice());
        }
        return { logits, repacks: d.stats.repacks };
      } finally {
        for (const s of live) s.dispose();
      }
    };
    const want = await run(cpu);
    const repacks = gpu.decoder.stats.repacks;
    const got = await run(gpu);
    expect(got.repacks - repacks).toBeGreaterThanOrEqual(2);
    expect(got.logits).toHaveLength(want.logits.length);
    got.logits.forEach((l, i) => {
      expect(maxAbsDiff(l, want.logits[i]), `logits ${i}`).toBeLessThan(TOL);
      expect(argmax(l), `argmax ${i}`).toBe(argmax(want.logits[i]));
    });
  });

  it('concurrent answers (one batch) and the contexts they keep for follow-ups: the CPU answers', async () => {
    /** greedy answer ids, and the context the answer keeps (its KV cache, copied out of the batch) */
    const answer = async (model: MiniGPT, turns: Turn[], reuse?: CachedContext) => {
      let ids: number[] = [];
      let kept: CachedContext | undefined;
      const keep = (c: CachedContext) => {
        kept = c;
      };
      const prompt = conversationPrompt(model.meta.prompt, turns);
      for await (const ev of model.answer(prompt, [image], { temperature: 0, maxNewTokens: 8 }, undefined, {
        imageKeys: ['img'],
        reuse,
        keep,
      })) {
        if (ev.type === 'done') ids = ev.tokenIds;
      }
      return { ids, kept };
    };
    const conversations = async (model: MiniGPT) => {
      const rows = model.engine.stats.rows;
      const steps = model.engine.stats.steps;
      const lent = model.handoff.lent;
      // (the first prefill's rows of the image lent to the two others, from device memory on WebGPU)
      const first = await Promise.all(QUESTIONS.map((q) => answer(model, [{ user: q }])));
      const handedOff = model.handoff.lent - lent;
      const follow = await Promise.all(
        first.map((f, i) => {
          const said = model.tokenizer.decode(f.ids, { skipSpecialTokens: true });
          return answer(model, [{ user: QUESTIONS[i], assistant: said }, { user: 'and what colour is it' }], f.kept);
        }),
      );
      for (const f of follow) f.kept?.dispose();
      const meanRows = (model.engine.stats.rows - rows) / (model.engine.stats.steps - steps);
      return { first: first.map((f) => f.ids), follow: follow.map((f) => f.ids), meanRows, handedOff };
    };
    const want = await conversations(cpu);
    const got = await conversations(gpu);
    expect(got.meanRows).toBeGreaterThan(1.5);
    expect([want.handedOff, got.handedOff]).toEqual([2, 2]);
    expect(got.first).toEqual(want.first);
    expect(got.follow).toEqual(want.follow);
  });

  it("a fused package: its MultiHeadAttention checked at load, a long prompt's logits and the steps after it the CPU's", async () => {
    const dir = join(work, 'fused-attention');
    await convertTinyV2(dir, { fused: true });
    const logs: string[] = [];
    const onGpu = await MiniGPT.load(dir, { provider: 'webgpu', log: (l) => logs.push(l) });
    const onCpu = await MiniGPT.load(dir, { provider: 'cpu', threads: 1 });
    try {
      const check = onGpu.attentionCheck;
      expect(check).not.toBeNull();
      if (!check) return;
      expect(check.exact).toBe(true);
      // what the decoder runs at most at once was measured within the bound (longer runs were what failed it)
      const limit = check.maxRunPositions ?? Number.POSITIVE_INFINITY;
      expect(onGpu.decoder.maxRunPositions).toBe(limit);
      for (const p of check.probes) if (p.positions <= limit) expect(p.error, JSON.stringify(p)).toBeLessThanOrEqual(check.tolerance);
      expect(logs.filter((l) => l.includes('MultiHeadAttention'))).toHaveLength(1);
      console.log(`${logs.find((l) => l.includes('MultiHeadAttention'))}\n  probes: ${JSON.stringify(check.probes)}`);
      // a prompt longer than WebGPU's flash-attention threshold (32 query positions), on both providers
      const q = 'describe every object in this picture, its colour, its size and where it is, one by one';
      const ctx = await onCpu.context(conversationPrompt(onCpu.meta.prompt, [{ user: q }]), [image]);
      expect(ctx.length).toBeGreaterThan(40);
      const V = onCpu.meta.llm.vocabSize;
      const [a, b] = [
        await onCpu.decoder.forward(ctx.embeds, null, undefined, 'all'),
        await onGpu.decoder.forward(ctx.embeds, null, undefined, 'all'),
      ];
      expect(maxAbsDiff(a.logits, b.logits)).toBeLessThan(TOL);
      const sa = await greedySteps(onCpu.decoder, a.state, a.logits.slice(a.logits.length - V), 3);
      const sb = await greedySteps(onGpu.decoder, b.state, b.logits.slice(b.logits.length - V), 3);
      expect(sb.ids).toEqual(sa.ids);
      for (let t = 0; t < 3; t++) expect(maxAbsDiff(sa.stepLogits[t], sb.stepLogits[t])).toBeLessThan(TOL);
    } finally {
      await onGpu.close();
      await onCpu.close();
    }
  }, 180_000);

  it('the attention check in float16 on WebGPU: the runs it allows are within the float16 bound', async () => {
    const shape = { heads: 4, headDim: 16, dtype: 'float16' as const };
    const s = await ort.InferenceSession.create(attentionGraph(shape), { executionProviders: ['webgpu'] });
    try {
      const check = await checkAttention(s, shape);
      expect(check.exact).toBe(true);
      const limit = check.maxRunPositions ?? Number.POSITIVE_INFINITY;
      for (const p of check.probes) if (p.positions <= limit) expect(p.error, JSON.stringify(p)).toBeLessThanOrEqual(check.tolerance);
      console.log(`float16 attention check on WebGPU: ${JSON.stringify(check)}`);
    } finally {
      await s.release();
    }
  });

  it('minigpt verify passes on WebGPU for fp32 and fp16 packages of the golden MiniGPT-v2', async () => {
    for (const dtype of ['fp32', 'fp16'] as const) {
      const dir = join(work, `golden-${dtype}`);
      await convertTinyV2(dir, { dtype });
      const r = await verifyPackage(dir, GOLDEN_V2, { provider: 'webgpu' });
      expect(r.ok, `${dtype}: ${JSON.stringify(r).slice(0, 400)}`).toBe(true);
    }
  }, 240_000);
});

/**
 * The kernels one run of `dir`'s decoder (a decoding step) or vision graph (one image) launched on WebGPU, and
 * the ops left to the CPU.
 */
async function placement(
  dir: string,
  graph: 'decoder' | 'vision' = 'decoder',
  /** the graph as the runtime opens it on WebGPU (MiniGPT.load: the decoder without present_new) */
  asRuntime = false,
): Promise<{ gpu: Record<string, number>; cpu: Record<string, number> }> {
  const prefix = join(work, `profile-${Date.now()}`);
  const file = join(dir, `${graph}.onnx`);
  const options: ort.InferenceSession.SessionOptions = { executionProviders: ['webgpu'], enableProfiling: true, profileFilePrefix: prefix };
  const session = asRuntime
    ? await ort.InferenceSession.create(withoutOutputs(await readFile(file), (n) => n.startsWith('present_new.')).model, {
        ...options,
        extra: { session: { model_external_initializers_file_folder_path: dir } },
      })
    : await ort.InferenceSession.create(file, options);
  try {
    if (graph === 'vision') {
      const S = cpu.meta.vision.imageSize;
      await session.run({ pixel_values: new ort.Tensor('float32', new Float32Array(3 * S * S).fill(0.1), [1, 3, S, S]) });
      session.endProfiling();
      return await kernels(prefix);
    }
    const { hidden, layers, kvHeads, headDim } = cpu.meta.llm;
    const past = 5;
    const cache = session.inputNames.includes('cache_key_values.0.key');
    const feeds: Record<string, ort.Tensor> = {
      inputs_embeds: new ort.Tensor('float32', new Float32Array(hidden).fill(0.1), [1, 1, hidden]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(past + 1 + (cache ? 1 : 0)).fill(1n), [1, past + 1 + (cache ? 1 : 0)]),
      position_ids: new ort.Tensor('int64', BigInt64Array.of(BigInt(past)), [1, 1]),
      logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(1n), [1]),
    };
    for (let i = 0; i < layers; i++)
      for (const kv of ['key', 'value']) {
        feeds[`past_key_values.${i}.${kv}`] = new ort.Tensor('float32', new Float32Array(kvHeads * past * headDim), [
          1,
          kvHeads,
          past,
          headDim,
        ]);
        if (cache)
          feeds[`cache_key_values.${i}.${kv}`] = new ort.Tensor('float32', new Float32Array(kvHeads * headDim), [1, kvHeads, 1, headDim]);
      }
    await session.run(feeds);
    session.endProfiling();
    return await kernels(prefix);
  } finally {
    await session.release();
  }
}

/** Kernel launches per provider and op in the profile written under `prefix`. */
async function kernels(prefix: string): Promise<{ gpu: Record<string, number>; cpu: Record<string, number> }> {
  const file = (await readdir(work)).find((f) => join(work, f).startsWith(prefix));
  const events = JSON.parse(await readFile(join(work, file!), 'utf8')) as {
    cat: string;
    name: string;
    args: { provider?: string; op_name?: string };
  }[];
  const out = { gpu: {} as Record<string, number>, cpu: {} as Record<string, number> };
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || !e.args.op_name) continue;
    const side = e.args.provider === 'WebGpuExecutionProvider' ? out.gpu : out.cpu;
    side[e.args.op_name] = (side[e.args.op_name] ?? 0) + 1;
  }
  return out;
}

describe('WebGPU placement', () => {
  // What may run on the CPU inside a WebGPU session: the attention mask's and positions' bookkeeping (small int64
  // tensors from the inputs), uploaded once per run. Anything heavier there would cross PCIe at every layer.
  const BOOKKEEPING = new Set(['Shape', 'Gather', 'Range', 'Sub', 'Unsqueeze', 'LessOrEqual', 'Concat', 'Cast', 'Neg', 'Slice']);

  it('the plain, fused and int4 decoders and the vision graphs leave only bookkeeping to the CPU; fused ones launch fewer kernels', async () => {
    const counts: Record<string, number> = {};
    for (const [name, opts] of [
      ['fp32', {}],
      ['fp32-fused', { fused: true }],
      ['int4-fused', { fused: true, dtype: 'int4' as const }],
    ] as const) {
      const dir = name === 'fp32' ? join(work, 'fp32') : join(work, name);
      if (name !== 'fp32') await convertTinyV2(dir, opts);
      const { gpu: onGpu, cpu: onCpu } = await placement(dir);
      expect(
        Object.keys(onCpu).filter((op) => !BOOKKEEPING.has(op)),
        name,
      ).toEqual([]);
      const heavy = name.endsWith('fused')
        ? [name === 'int4-fused' ? 'MatMulNBits' : 'MatMul', 'MultiHeadAttention', 'RotaryEmbedding', 'SkipSimplifiedLayerNormalization']
        : ['MatMul', 'Softmax', 'ReduceMean', 'Sin', 'Cos'];
      for (const op of heavy) expect(onGpu[op], `${name}: ${op}`).toBeGreaterThan(0);
      counts[name] = Object.values(onGpu).reduce((a, b) => a + b, 0);
    }
    // the fused kernels: fewer than half the plain graph's launches a step (dispatches are the fixed cost of a step)
    expect(counts['fp32-fused']).toBeLessThan(counts.fp32 / 2);
    // as the runtime opens them on WebGPU: without present_new, whose Reshape + Transpose of k and v a layer
    // ('append' mode's) 'present' mode never reads
    for (const name of ['fp32', 'fp32-fused']) {
      const pruned = await placement(join(work, name), 'decoder', true);
      counts[`${name} (runtime)`] = Object.values(pruned.gpu).reduce((a, b) => a + b, 0);
      expect(counts[`${name} (runtime)`], name).toBeLessThanOrEqual(counts[name] - 2 * cpu.meta.llm.layers);
    }
    console.log(`WebGPU kernels per decoding step (${cpu.meta.llm.layers} layers): ${JSON.stringify(counts)}`);

    // the vision graph of one image: the ViT's blocks fused, 7 launches a block fewer, nothing heavy on the CPU
    const vision: Record<string, number> = {};
    for (const name of ['fp32', 'fp32-fused']) {
      const { gpu: onGpu, cpu: onCpu } = await placement(join(work, name), 'vision');
      expect(
        Object.keys(onCpu).filter((op) => !BOOKKEEPING.has(op)),
        name,
      ).toEqual([]);
      vision[name] = Object.values(onGpu).reduce((a, b) => a + b, 0);
      if (name === 'fp32-fused') for (const op of ['SkipLayerNormalization', 'BiasGelu']) expect(onGpu[op], op).toBeGreaterThan(0);
    }
    // (SkipLayerNormalization: 2 Adds + LayerNorm -> 1 kernel, twice a block; BiasGelu: 6 -> 1)
    expect(vision.fp32 - vision['fp32-fused']).toBeGreaterThanOrEqual(7 * cpu.meta.vision.layers);
    console.log(`WebGPU kernels per image (${cpu.meta.vision.layers} ViT blocks): ${JSON.stringify(vision)}`);
  }, 120_000);
});

describe("the WebGPU provider's validationMode (MINIGPT_WEBGPU_VALIDATION)", () => {
  it('is parsed with a clear error, and the Node binding hands it to the provider', async () => {
    expect(parseWebGpuValidation(undefined)).toBeUndefined();
    expect(parseWebGpuValidation(' ')).toBeUndefined();
    expect(parseWebGpuValidation('Disabled')).toBe('disabled');
    expect(parseWebGpuValidation('wgpuonly')).toBe('wgpuOnly');
    expect(() => parseWebGpuValidation('none')).toThrow(/MINIGPT_WEBGPU_VALIDATION=none: expected one of full, basic, wgpuOnly, disabled/);
    // the provider reads the key (an invalid value is refused by onnxruntime itself, not ignored)
    const graph = attentionGraph({ heads: 2, headDim: 8 });
    await expect(
      ort.InferenceSession.create(graph, {
        executionProviders: [{ name: 'webgpu', validationMode: 'bogus' } as ort.InferenceSession.ExecutionProviderConfig],
      }),
    ).rejects.toThrow(/Invalid validation mode: bogus/);
  });

  it('a package opened with validation disabled says so and gives the same logits', async () => {
    const before = process.env.MINIGPT_WEBGPU_VALIDATION;
    process.env.MINIGPT_WEBGPU_VALIDATION = 'disabled';
    const logs: string[] = [];
    let m: MiniGPT | undefined;
    try {
      m = await MiniGPT.load(join(work, 'fp32'), { provider: 'webgpu', log: (l) => logs.push(l) });
    } finally {
      if (before === undefined) delete process.env.MINIGPT_WEBGPU_VALIDATION;
      else process.env.MINIGPT_WEBGPU_VALIDATION = before;
    }
    try {
      expect(logs).toContain('execution provider: webgpu (requested; validationMode disabled)');
      const ctx = await cpu.context(prompt(QUESTIONS[1]), [image]);
      const [a, b] = [await cpu.prefill(ctx), await m.prefill(ctx)];
      expect(maxAbsDiff(a.logits, b.logits)).toBeLessThan(TOL);
      a.state.dispose();
      b.state.dispose();
    } finally {
      await m.close();
    }
  });
});

describe("what Node's binding allows on WebGPU", () => {
  // Why the KV cache is not one fixed-capacity GPU buffer written in place (GroupQueryAttention's shared
  // past/present) and why there is no graph capture: both need a run to write into GPU buffers given to it.
  // If a later onnxruntime-node writes into them, this fails, and docs/gpu.md's "What Node's binding rules out"
  // should be revisited.
  it('a pre-allocated gpu-buffer output is not written (a new buffer is allocated); a CPU one is', async () => {
    const g = new GraphBuilder('plus_one');
    const x = g.input('x', 'float32', [4]);
    g.output(g.op('Add', [x, g.constFloat([1, 1, 1, 1])]), 'y', 'float32', [4]);
    const model = g.encode();
    const id = new GraphBuilder('read');
    id.output(id.op('Identity', [id.input('a', 'float32', [4])]), 'b', 'float32', [4]);
    const onGpu = await ort.InferenceSession.create(model, {
      executionProviders: ['webgpu'],
      preferredOutputLocation: { y: 'gpu-buffer' },
    });
    const reader = await ort.InferenceSession.create(id.encode(), { executionProviders: ['webgpu'] });
    const onCpu = await ort.InferenceSession.create(model, { executionProviders: ['cpu'] });
    const input = (...v: number[]) => ({ x: new ort.Tensor('float32', Float32Array.from(v), [4]) });
    const read = async (t: ort.Tensor) => Array.from((await reader.run({ a: t })).b.data as Float32Array);
    try {
      const first = (await onGpu.run(input(1, 2, 3, 4))).y;
      expect(first.location).toBe('gpu-buffer');
      const second = (await onGpu.run(input(10, 20, 30, 40), { y: first })).y;
      expect(await read(second)).toEqual([11, 21, 31, 41]);
      expect(await read(first)).toEqual([2, 3, 4, 5]);
      second.dispose();
      first.dispose();
      const out = new ort.Tensor('float32', new Float32Array(4), [4]);
      await onCpu.run(input(1, 2, 3, 4), { y: out });
      expect(Array.from(out.data as Float32Array)).toEqual([2, 3, 4, 5]);
    } finally {
      await onGpu.release();
      await reader.release();
      await onCpu.release();
    }
  });
});

describe('DeviceKvCopier', () => {
  it("gathers rows of several storages into one left-padded batch, as 'present' mode lays them out", async () => {
    const names = ['a', 'b'];
    const [H, D] = [2, 3];
    // two storages: 2 rows x 5 positions, 1 row x 4 positions; values = their own coordinates
    const storage = (id: number, rows: number, total: number) =>
      Object.fromEntries(
        names.map((n, i) => [
          n,
          new ort.Tensor(
            'float32',
            Float32Array.from({ length: rows * H * total * D }, (_, x) => id * 1000 + i * 100 + x),
            [rows, H, total, D],
          ),
        ]),
      );
    const s1 = storage(1, 2, 5);
    const s2 = storage(2, 1, 4);
    const copier = new DeviceKvCopier(names, (graph) => ort.InferenceSession.create(graph, { executionProviders: ['cpu'] }));
    try {
      const rows = [
        { tensors: s1, row: 1, from: 2, n: 3 },
        { tensors: s2, row: 0, from: 1, n: 3 },
        { tensors: s1, row: 0, from: 4, n: 1 },
      ];
      const T = 4;
      const out = await copier.gather(rows, T);
      for (const n of names) {
        expect(out[n].dims).toEqual([3, H, T, D]);
        const want = new Float32Array(3 * H * T * D);
        rows.forEach((r, j) => {
          const src = r.tensors[n];
          const total = src.dims[2];
          for (let h = 0; h < H; h++)
            for (let p = 0; p < r.n; p++)
              for (let e = 0; e < D; e++)
                want[((j * H + h) * T + (T - r.n + p)) * D + e] = (src.data as Float32Array)[
                  ((r.row * H + h) * total + r.from + p) * D + e
                ];
        });
        expect(Array.from(out[n].data as Float32Array)).toEqual(Array.from(want));
      }
    } finally {
      await copier.close();
    }
  });
});
