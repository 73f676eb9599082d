// `minigpt convert --fused`: the decoder written with onnxruntime's fused kernels (SimplifiedLayerNormalization,
// SkipSimplifiedLayerNormalization, q/k/v as one Linear, RotaryEmbedding, MultiHeadAttention with the KV cache;
// MatMulNBits for int4), and the ViT's residual + LayerNorm and bias + GELU fused, must give the plain graphs'
// image embeddings and logits on the tiny golden models, through the same MiniGPT runtime: prefill,
// decoding steps with the KV cache in both KV modes, batched steps over rows of different lengths, and a
// multi-token run after a reused prefix. `minigpt verify` must pass on the fused packages.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convert } from '../../src/convert/convert.js';
import { rotaryCaches } from '../../src/convert/graphs/llama-fused.js';
import { computeInvFreq } from '../../src/convert/graphs/llama.js';
import { MiniGPT } from '../../src/inference/model.js';
import { loadPackage, modelJsonSchema } from '../../src/inference/package.js';
import { LlamaDecoder, type KvMode } from '../../src/inference/decoder.js';
import { spliceContext } from '../../src/inference/context.js';
import { verifyPackage } from '../../src/inference/verify.js';
import { buildProgram } from '../../src/cli/main.js';
import { goldenIds, goldenTensor, maxAbsDiff } from '../helpers/golden.js';
import { greedySteps, conversationSteps } from '../helpers/greedy.js';
import { GOLDEN_M4, GOLDEN_V2, TINY_M4_OPTIONS, TINY_V2_OPTIONS } from '../helpers/tiny-package.js';

const ROOT = join(import.meta.dirname, '..', '..');
const FIXTURES = join(ROOT, 'test/fixtures');
/** the golden folders themselves when this checkout sits beside them, else their copies under test/fixtures */
const golden = (name: string) =>
  existsSync(join(ROOT, '../shared/golden', name, 'manifest.json')) ? join(ROOT, '../shared/golden', name) : join(FIXTURES, name);
const TOL = 1e-4;
const STEPS = 8;

async function decoderOps(dir: string, graph = 'decoder'): Promise<Map<string, number>> {
  const m = onnxProto.onnx.ModelProto.decode(await readFile(join(dir, `${graph}.onnx`)));
  const ops = new Map<string, number>();
  for (const n of m.graph!.node!) ops.set(n.opType!, (ops.get(n.opType!) ?? 0) + 1);
  return ops;
}

let work: string;
/** largest fused-vs-plain logits difference per case, printed at the end (docs/quantisation.md quotes it) */
const worst = new Map<string, number>();
function record(key: string, err: number): number {
  worst.set(key, Math.max(worst.get(key) ?? 0, err));
  return err;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-fused-'));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
  console.log(
    `fused vs plain decoder, max abs logits difference:\n${[...worst].map(([k, v]) => `  ${k}: ${v.toExponential(2)}`).join('\n')}`,
  );
});

/** A loaded package, with a decoder of its own in 'present' KV mode beside the model's ('append'). */
interface Loaded {
  model: MiniGPT;
  present: LlamaDecoder;
  presentSession: ort.InferenceSession;
}

async function load(dir: string): Promise<Loaded> {
  const model = await MiniGPT.load(dir, { provider: 'cpu', threads: 1 });
  const presentSession = await ort.InferenceSession.create(join(dir, 'decoder.onnx'), {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: 1,
  });
  const present = new LlamaDecoder(presentSession, model.embedder, model.meta.llm, { mode: 'present' });
  return { model, present, presentSession };
}

async function unload(l: Loaded | undefined): Promise<void> {
  await l?.model.close();
  await l?.presentSession.release();
}

interface Run {
  prefill: Float32Array;
  ids: number[];
  stepLogits: Float32Array[];
}

/** Prefill, then STEPS free-running greedy steps. */
async function greedy(model: MiniGPT, decoder: LlamaDecoder, embeds: Float32Array): Promise<Run> {
  const pre = await decoder.forward(embeds, null, undefined, 'all');
  const V = model.meta.llm.vocabSize;
  const { ids, stepLogits } = await greedySteps(decoder, pre.state, pre.logits.slice(pre.logits.length - V), STEPS);
  return { prefill: pre.logits, ids, stepLogits };
}

/** A prefix of the prompt prefilled, a reused view of part of it, then the rest as one multi-token run. */
async function reused(decoder: LlamaDecoder, embeds: Float32Array, hidden: number): Promise<Float32Array> {
  const rows = embeds.length / hidden;
  const cut = rows - 6;
  const first = await decoder.forward(embeds.subarray(0, cut * hidden), null);
  const prefix = first.state.prefix(cut - 4);
  first.state.dispose();
  try {
    const rest = await decoder.forward(embeds.subarray((cut - 4) * hidden), prefix, undefined, 'all');
    rest.state.dispose();
    return rest.logits;
  } finally {
    prefix.dispose();
  }
}

const FIXTURE_RUNS = [
  {
    name: 'MiniGPT-v2',
    golden: golden('minigptv2-tiny'),
    source: GOLDEN_V2,
    prompts: ['prompt', 'chat'],
    options: TINY_V2_OPTIONS,
    dtypes: ['fp32', 'int4'] as const,
  },
  {
    name: 'MiniGPT-4 (Q-Former)',
    golden: golden('minigpt4-tiny'),
    source: GOLDEN_M4,
    prompts: ['vicuna0', 'llama2'],
    options: TINY_M4_OPTIONS,
    dtypes: ['fp32'] as const,
  },
];

for (const fx of FIXTURE_RUNS) {
  for (const dtype of fx.dtypes) {
    describe(`${fx.name} ${dtype}: fused decoder against the plain one`, () => {
      const plainDir = () => join(work, `${fx.name.replace(/\W+/g, '_')}-${dtype}-plain`);
      const fusedDir = () => join(work, `${fx.name.replace(/\W+/g, '_')}-${dtype}-fused`);
      let plain: Loaded | undefined;
      let fused: Loaded | undefined;
      const contexts = new Map<string, Float32Array>();

      beforeAll(async () => {
        // int4 with float32 compute (accuracy level 1): the fused norms round differently in the last bits, and
        // int8 compute would turn that into whole quantisation steps of the activations; this compares graphs
        const level = dtype === 'int4' ? { accuracyLevel: 1 } : {};
        await convert({ ...fx.options, dtype, ...level, out: plainDir() });
        await convert({ ...fx.options, dtype, ...level, out: fusedDir(), fused: true });
        plain = await load(plainDir());
        fused = await load(fusedDir());
        const b = await goldenTensor(fx.source, 'pixel_values');
        const image = await plain.model.vision.encode(new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)));
        for (const p of fx.prompts) {
          const segs: number[][] = [];
          for (let s = 0; ; s++) {
            try {
              segs.push(await goldenIds(fx.source, `${p}_seg${s}_ids`));
            } catch {
              break;
            }
          }
          const ctx = await spliceContext(segs, Array(segs.length - 1).fill(image), plain.model.embedder);
          contexts.set(p, ctx.embeds);
        }
      }, 300_000);

      afterAll(async () => {
        await unload(plain);
        await unload(fused);
      });

      it('records the graph kind in model.json; the graphs keep their inputs and outputs', async () => {
        const p = await loadPackage(plainDir());
        const f = await loadPackage(fusedDir());
        expect(p.meta.graph).toBe('plain');
        expect(f.meta.graph).toBe('fused');
        expect(f.meta.provenance.options.fused).toBe(true);
        // The fused attention kernel takes one past: no `cache_key_values` inputs (the runtime then feeds its
        // buffers as the past); everything else is the same.
        const plainInputs = p.meta.graphs.decoder.inputs;
        expect(plainInputs.filter((io) => io.name.startsWith('cache_key_values.'))).toHaveLength(2 * p.meta.llm.layers);
        expect(f.meta.graphs.decoder.inputs).toEqual(plainInputs.filter((io) => !io.name.startsWith('cache_key_values.')));
        const names = (ios: { name: string }[]) => ios.map((io) => io.name);
        expect(names(f.meta.graphs.decoder.outputs)).toEqual(names(p.meta.graphs.decoder.outputs));
        // the embedding graph is the same file; the vision graph has the same weights and contract (its attention
        // differs: see below)
        for (const g of ['embed.onnx', 'embed.onnx.data', 'vision.onnx.data'])
          expect(Buffer.compare(await readFile(join(plainDir(), g)), await readFile(join(fusedDir(), g))), g).toBe(0);
        expect(f.meta.graphs.vision).toEqual(p.meta.graphs.vision);
      });

      it("is made of onnxruntime's fused kernels", async () => {
        const { layers } = (await loadPackage(fusedDir())).meta.llm;
        const ops = await decoderOps(fusedDir());
        expect(ops.get('SimplifiedLayerNormalization')).toBe(1);
        expect(ops.get('SkipSimplifiedLayerNormalization')).toBe(2 * layers);
        expect(ops.get('RotaryEmbedding')).toBe(2 * layers);
        expect(ops.get('MultiHeadAttention')).toBe(layers);
        for (const gone of ['Softmax', 'ReduceMean', 'Sqrt', 'Cos', 'Sin']) expect(ops.get(gone), gone).toBeUndefined();
        // no rotate_half: the one Neg left turns logits_to_keep into the head's slice start
        expect(ops.get('Neg')).toBe(1);
        // q, k and v projected by one Linear over their stacked weights, then split: 5 Linears a layer, not 7
        expect(ops.get('Split')).toBe(layers);
        if (dtype === 'int4') {
          expect(ops.get('MatMulNBits')).toBe(5 * layers + 1);
          expect(ops.get('MatMul')).toBeUndefined();
        } else {
          expect(ops.get('MatMul')).toBe(5 * layers + 1);
        }
        const plainOps = await decoderOps(plainDir());
        const count = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
        expect(count(ops)).toBeLessThan(count(plainOps) / 2);
      });

      it("the ViT's blocks are fused kernels (residual + LayerNorm, bias + GELU); the image embeddings are the plain package's", async () => {
        const depth = (await loadPackage(fusedDir())).meta.vision.layers;
        const ops = await decoderOps(fusedDir(), 'vision');
        // norm2 and the next norm1 (ln_vision after the last block) with the residual adds; block 0's norm1 alone
        expect(ops.get('SkipLayerNormalization')).toBe(2 * depth);
        expect(ops.get('BiasGelu')).toBe(depth);
        // the attention stays MatMul + Softmax (onnxruntime's WebGPU MultiHeadAttention is off by ~1e-2 at ViT lengths)
        expect(ops.get('MultiHeadAttention')).toBeUndefined();
        // (MiniGPT-4's Q-Former, in the same graph, keeps its own LayerNorms and GELUs)
        const plainOps = await decoderOps(plainDir(), 'vision');
        expect(ops.get('Softmax')).toBe(plainOps.get('Softmax'));
        expect(ops.get('Erf') ?? 0).toBe((plainOps.get('Erf') ?? 0) - depth);
        expect(ops.get('LayerNormalization')).toBe(plainOps.get('LayerNormalization')! - 2 * depth);
        const count = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
        expect(count(ops)).toBeLessThan(count(plainOps));
        const b = await goldenTensor(fx.source, 'pixel_values');
        const pixels = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
        const [a, f] = [await plain!.model.vision.encode(pixels), await fused!.model.vision.encode(pixels)];
        expect(f).toHaveLength(a.length);
        expect(record(`${fx.name} ${dtype} image embeddings`, maxAbsDiff(f, a))).toBeLessThan(TOL);
      });

      for (const mode of ['append', 'present'] as KvMode[]) {
        it(`prefill and ${STEPS} greedy steps with the KV cache (${mode} mode): logits within ${TOL}, the same ids`, async () => {
          for (const p of fx.prompts) {
            const dec = (l: Loaded) => (mode === 'append' ? l.model.decoder : l.present);
            expect(dec(plain!).mode).toBe(mode);
            expect(dec(fused!).mode).toBe(mode);
            // the plain graph reads the runtime's own cache buffers without copying them; the fused kernel takes a past
            expect(dec(plain!).kvInput).toBe(mode === 'append' ? 'cache' : 'past');
            expect(dec(fused!).kvInput).toBe('past');
            const a = await greedy(plain!.model, dec(plain!), contexts.get(p)!);
            const b = await greedy(fused!.model, dec(fused!), contexts.get(p)!);
            expect(record(`${fx.name} ${dtype} prefill`, maxAbsDiff(b.prefill, a.prefill)), `${p} prefill`).toBeLessThan(TOL);
            expect(b.ids, p).toEqual(a.ids);
            for (let t = 0; t < STEPS; t++)
              expect(
                record(`${fx.name} ${dtype} decode steps`, maxAbsDiff(b.stepLogits[t], a.stepLogits[t])),
                `${p} step ${t}`,
              ).toBeLessThan(TOL);
          }
        });

        it(`batched steps over rows of different lengths (${mode} mode) match the plain graph's`, async () => {
          const dec = (l: Loaded) => (mode === 'append' ? l.model.decoder : l.present);
          const { hidden } = plain!.model.meta.llm;
          const ctx = contexts.get(fx.prompts[0])!;
          const a = await conversationSteps(dec(plain!), ctx, hidden, 4);
          const b = await conversationSteps(dec(fused!), ctx, hidden, 4);
          for (let t = 0; t < a.length; t++)
            for (let r = 0; r < a[t].length; r++)
              expect(record(`${fx.name} ${dtype} batched steps`, maxAbsDiff(b[t][r], a[t][r])), `step ${t} row ${r}`).toBeLessThan(TOL);
        });

        it(`a multi-token run after a reused prefix of the KV cache (${mode} mode) matches the plain graph's`, async () => {
          const dec = (l: Loaded) => (mode === 'append' ? l.model.decoder : l.present);
          const { hidden } = plain!.model.meta.llm;
          const ctx = contexts.get(fx.prompts[0])!;
          expect(
            record(
              `${fx.name} ${dtype} after a reused prefix`,
              maxAbsDiff(await reused(dec(fused!), ctx, hidden), await reused(dec(plain!), ctx, hidden)),
            ),
          ).toBeLessThan(TOL);
        });
      }

      if (dtype === 'fp32') {
        it('minigpt verify passes on the fused package against the golden folder', async () => {
          const report = await verifyPackage(fusedDir(), fx.golden, { provider: 'cpu', threads: 1 });
          expect(report.ok, JSON.stringify(report, null, 1)).toBe(true);
          for (const p of Object.values(report.prompts)) {
            expect(p.greedy_ids_match).toBe(true);
            expect(p.stages.logits.max_abs_err).toBeLessThan(TOL);
          }
        }, 120_000);
      }
    });
  }
}

describe('the fused graph pieces', () => {
  it('rotary tables hold cos / sin of the fp32 angle the plain graph computes', () => {
    const invFreq = computeInvFreq(16, 10000);
    const { cos, sin } = rotaryCaches(invFreq, 300);
    for (const p of [0, 1, 17, 299]) {
      for (let j = 0; j < 8; j++) {
        const angle = Math.fround(p * invFreq[j]);
        expect(cos[p * 8 + j]).toBe(Math.fround(Math.cos(angle)));
        expect(sin[p * 8 + j]).toBe(Math.fround(Math.sin(angle)));
      }
    }
    expect(cos[0]).toBe(1);
    expect(sin[0]).toBe(0);
  });

  it('a model.json from before --fused reads as the plain graph', async () => {
    const dir = join(work, 'old');
    await convert({ ...TINY_V2_OPTIONS, out: dir });
    const meta = JSON.parse(await readFile(join(dir, 'model.json'), 'utf8')) as Record<string, unknown>;
    delete meta.graph;
    expect(modelJsonSchema.parse(meta).graph).toBe('plain');
    await writeFile(join(dir, 'model.json'), JSON.stringify(meta));
    expect((await loadPackage(dir)).meta.graph).toBe('plain');
    expect(modelJsonSchema.safeParse({ ...meta, graph: 'gqa' }).success).toBe(false);
  });

  it('minigpt convert --fused writes a fused package', async () => {
    const out = join(work, 'cli-fused');
    const o = TINY_V2_OPTIONS;
    const args = [
      'convert',
      '--arch',
      o.arch,
      '--vit',
      o.vit,
      '--llm',
      o.llm,
      '--ckpt',
      o.ckpt,
      '--vit-heads',
      '4',
      '--image-size',
      '112',
      '--dtype',
      'int4',
      '--fused',
      '--out',
      out,
    ];
    const stderr = process.stderr.write;
    process.stderr.write = (() => true) as typeof process.stderr.write;
    try {
      await buildProgram().parseAsync(['node', 'minigpt', ...args]);
    } finally {
      process.stderr.write = stderr;
    }
    const { meta } = await loadPackage(out);
    expect(meta.graph).toBe('fused');
    expect(meta.dtype).toBe('int4');
    expect((await decoderOps(out)).get('MultiHeadAttention')).toBe(meta.llm.layers);
  });

  it('refuses --fused for a grouped-query model (MultiHeadAttention needs kvHeads == heads)', async () => {
    const llm = join(work, 'gqa-llama');
    await mkdir(llm, { recursive: true });
    for (const f of await readdir(TINY_V2_OPTIONS.llm)) if (f !== 'config.json') await symlink(join(TINY_V2_OPTIONS.llm, f), join(llm, f));
    const cfg = JSON.parse(await readFile(join(TINY_V2_OPTIONS.llm, 'config.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(join(llm, 'config.json'), JSON.stringify({ ...cfg, num_key_value_heads: 2 }));
    await expect(convert({ ...TINY_V2_OPTIONS, llm, out: join(work, 'gqa'), fused: true })).rejects.toThrow(
      /as many key\/value heads as query heads/,
    );
  });
});
