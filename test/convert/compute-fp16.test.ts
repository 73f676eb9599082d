// `minigpt convert --compute fp16`: the decoder computes in float16 the way transformers' LlamaForCausalLM does
// in torch.float16 (RMSNorm's normalisation and the attention softmax in float32), for GPU providers. The CPU
// provider runs it too, which lets these tests hold its structure and its numbers: the graph's types at the
// border, where the float32 islands are, and logits within the fp16 bounds of the float32 PyTorch reference
// through the real runtime (prefill, KV-cached steps in both KV modes, batched rows of different lengths).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import onnxProto from 'onnx-proto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convert, ConvertError, type ConvertOptions } from '../../src/convert/convert.js';
import * as ort from 'onnxruntime-node';
import { loadPackage } from '../../src/inference/package.js';
import { MiniGPT } from '../../src/inference/model.js';
import { LlamaDecoder } from '../../src/inference/decoder.js';
import { AppendBlock } from '../../src/inference/kv-blocks.js';
import { argmax } from '../../src/inference/generation/index.js';
import { DTYPE_BOUNDS, verifyPackage } from '../../src/inference/verify.js';
import { convertTinyV2, GOLDEN_M4, GOLDEN_V2, TINY_M4_OPTIONS } from '../helpers/tiny-package.js';
import { maxAbsDiff } from '../helpers/golden.js';
import { conversationSteps } from '../helpers/greedy.js';

type Node = onnxProto.onnx.INodeProto;
const FLOAT = 1;

let work: string;
const dirs = new Map<string, string>();
const VARIANTS: Record<string, Partial<ConvertOptions>> = {
  'fp16-compute': { dtype: 'fp16', compute: 'fp16' },
  'fp16-compute-fused': { dtype: 'fp16', compute: 'fp16', fused: true },
  'int4-compute': { dtype: 'int4', compute: 'fp16' },
  'fp16-weights': { dtype: 'fp16' },
};

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-fp16-compute-'));
  for (const [name, opts] of Object.entries(VARIANTS)) {
    dirs.set(name, join(work, name));
    await convertTinyV2(join(work, name), opts);
  }
}, 240_000);
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function decoderNodes(
  dir: string,
  file = 'decoder.onnx',
): Promise<{ nodes: Node[]; producer: Map<string, Node>; initializers: Map<string, number> }> {
  const m = onnxProto.onnx.ModelProto.decode(await readFile(join(dir, file)));
  const nodes = m.graph!.node!;
  const producer = new Map<string, Node>();
  for (const n of nodes) for (const o of n.output!) producer.set(o, n);
  const initializers = new Map(m.graph!.initializer!.map((t) => [t.name!, t.dataType!]));
  return { nodes, producer, initializers };
}

const castTo = (n: Node | undefined) => (n?.opType === 'Cast' ? Number(n.attribute!.find((a) => a.name === 'to')!.i) : null);

describe('convert --compute fp16', () => {
  it('records the compute type, keeps inputs_embeds and logits float32 and moves the KV cache in float16', async () => {
    for (const name of ['fp16-compute', 'fp16-compute-fused', 'int4-compute']) {
      const { meta } = await loadPackage(dirs.get(name)!);
      expect(meta.compute, name).toBe('float16');
      expect(meta.provenance.options.compute).toBe('fp16');
      const io = [...meta.graphs.decoder.inputs, ...meta.graphs.decoder.outputs];
      const type = (n: string) => io.find((x) => x.name === n)?.dtype;
      expect(type('inputs_embeds')).toBe('float32');
      expect(type('logits')).toBe('float32');
      const kv = io.filter((x) => /^(past_key_values|cache_key_values|present|present_new)\./.test(x.name));
      expect(kv.length).toBeGreaterThan(0);
      expect(new Set(kv.map((x) => x.dtype)), name).toEqual(new Set(['float16']));
    }
    const { meta } = await loadPackage(dirs.get('fp16-weights')!);
    expect(meta.compute).toBe('float32');
    expect(new Set(meta.graphs.decoder.inputs.filter((x) => x.name.startsWith('past_')).map((x) => x.dtype))).toEqual(new Set(['float32']));
  });

  it('multiplies the float16 weights as stored (no cast to float32), normalises and softmaxes in float32', async () => {
    const { nodes, producer, initializers } = await decoderNodes(dirs.get('fp16-compute')!);
    expect(nodes.filter((n) => n.name!.includes('weight_cast'))).toEqual([]);
    const matmuls = nodes.filter((n) => n.opType === 'MatMul' && initializers.has(n.input![1]));
    expect(matmuls.length).toBeGreaterThan(0);
    for (const m of matmuls) expect(initializers.get(m.input![1]), m.name!).toBe(onnxProto.onnx.TensorProto.DataType.FLOAT16);
    // every RMSNorm: mean(x^2) of x cast to float32
    const means = nodes.filter((n) => n.opType === 'ReduceMean');
    expect(means.length).toBe(2 * 2 + 1); // two per layer of the 2-layer tiny model, and the final norm
    for (const mean of means) {
      const sq = producer.get(mean.input![0])!;
      expect(sq.opType).toBe('Mul');
      expect(castTo(producer.get(sq.input![0])), mean.name!).toBe(FLOAT);
    }
    // every softmax: scores cast to float32 before scaling and masking, probabilities cast back after
    const softmaxes = nodes.filter((n) => n.opType === 'Softmax');
    expect(softmaxes.length).toBe(2);
    for (const sm of softmaxes) {
      const where = producer.get(sm.input![0])!;
      const div = producer.get(where.input![1])!;
      expect(div.opType).toBe('Div');
      expect(castTo(producer.get(div.input![0])), sm.name!).toBe(FLOAT);
      const after = nodes.filter((n) => n.input!.includes(sm.output![0]));
      expect(after.map(castTo)).toEqual([onnxProto.onnx.TensorProto.DataType.FLOAT16]);
    }
  });

  it('quantised weights take float16 scales; the fused graph float16 norm weights and rotary tables', async () => {
    const q = await decoderNodes(dirs.get('int4-compute')!);
    const nbits = q.nodes.filter((n) => n.opType === 'MatMulNBits');
    expect(nbits.length).toBeGreaterThan(0);
    for (const n of nbits) expect(q.initializers.get(n.input![2]), n.name!).toBe(onnxProto.onnx.TensorProto.DataType.FLOAT16);
    const f = await decoderNodes(dirs.get('fp16-compute-fused')!);
    for (const n of f.nodes.filter((x) =>
      ['SimplifiedLayerNormalization', 'SkipSimplifiedLayerNormalization', 'RotaryEmbedding'].includes(x.opType!),
    )) {
      const weights = n.input!.filter((i) => f.initializers.has(i));
      expect(weights.length, n.name!).toBeGreaterThan(0);
      for (const w of weights) expect(f.initializers.get(w), `${n.name} ${w}`).toBe(onnxProto.onnx.TensorProto.DataType.FLOAT16);
    }
  });

  it('runs the ViT trunk in float16 (LayerNorm statistics and softmax in float32) and what follows ln_vision in float32', async () => {
    const { nodes, producer, initializers } = await decoderNodes(dirs.get('fp16-compute')!, 'vision.onnx');
    const HALF = onnxProto.onnx.TensorProto.DataType.FLOAT16;
    const conv = nodes.find((n) => n.opType === 'Conv')!;
    expect(castTo(producer.get(conv.input![0]))).toBe(HALF);
    expect(initializers.get(conv.input![1])).toBe(HALF);
    for (const ln of nodes.filter((n) => n.opType === 'LayerNormalization')) {
      expect(initializers.get(ln.input![1]), ln.name!).toBe(HALF);
      expect(ln.attribute!.find((a) => a.name === 'stash_type')).toBeUndefined(); // default 1: float32 statistics
    }
    for (const sm of nodes.filter((n) => n.opType === 'Softmax')) expect(castTo(producer.get(sm.input![0])), sm.name!).toBe(FLOAT);
    // llama_proj: float32 activations, its float16 weight cast to float32 as in a float32-compute package
    const proj = nodes.find((n) => n.name!.startsWith('llama_proj.matmul'))!;
    expect(castTo(producer.get(proj.input![1]))).toBe(FLOAT);
  });

  it('MiniGPT-4 with the Q-Former: the ViT in float16, the Q-Former in float32; minigpt verify passes the fp16 bounds', async () => {
    const out = join(work, 'm4-fp16-compute');
    await convert({ ...TINY_M4_OPTIONS, dtype: 'fp16', compute: 'fp16', out });
    const r = await verifyPackage(out, GOLDEN_M4, { provider: 'cpu', threads: 1 });
    expect(r.compute).toBe('float16');
    expect(r.ok, JSON.stringify(r.prompts)).toBe(true);
    for (const p of Object.values(r.prompts)) expect(p.forced_top1).toBe(1);
  }, 120_000);

  it('refuses float16 compute over float32 weights, with what to add', async () => {
    await expect(convertTinyV2(join(work, 'refused'), { compute: 'fp16' })).rejects.toThrow(ConvertError);
    await expect(convertTinyV2(join(work, 'refused'), { compute: 'fp16' })).rejects.toThrow(/--dtype fp16/);
  });
});

describe('float16 compute through the runtime (CPU provider)', () => {
  it('minigpt verify holds it to the fp16 bounds, plain and fused, with every greedy token kept; the logits are its own', async () => {
    const reports = new Map<string, Awaited<ReturnType<typeof verifyPackage>>>();
    for (const name of ['fp16-compute', 'fp16-compute-fused', 'fp16-weights'])
      reports.set(name, await verifyPackage(dirs.get(name)!, GOLDEN_V2, { provider: 'cpu', threads: 1 }));
    const logitsErr = (name: string) => Math.max(...Object.values(reports.get(name)!.prompts).map((p) => p.stages.logits.max_abs_err));
    for (const name of ['fp16-compute', 'fp16-compute-fused']) {
      const r = reports.get(name)!;
      expect(r.compute).toBe('float16');
      expect(r.bounds.tensor).toBe(DTYPE_BOUNDS.fp16.tensor);
      expect(r.ok, `${name}: ${JSON.stringify(r.prompts)}`).toBe(true);
      for (const p of Object.values(r.prompts)) {
        expect(p.greedy_agreement).toBe(1);
        expect(p.forced_top1).toBe(1);
      }
      // rounded differently from the same weights computed in float32 (so float16 arithmetic did run), within the bound
      expect(logitsErr(name)).not.toBe(logitsErr('fp16-weights'));
      expect(logitsErr(name)).toBeLessThan(DTYPE_BOUNDS.fp16.tensor);
    }
    expect(reports.get('fp16-weights')!.compute).toBe('float32');
  }, 120_000);

  it('keeps the KV cache in float16 (half the bytes), and steps rows of different lengths together as each alone, in both KV modes', async () => {
    const half = await MiniGPT.load(dirs.get('fp16-compute')!, { provider: 'cpu', threads: 1 });
    const full = await MiniGPT.load(dirs.get('fp16-weights')!, { provider: 'cpu', threads: 1 });
    const session = await ort.InferenceSession.create(join(dirs.get('fp16-compute')!, 'decoder.onnx'), {
      executionProviders: ['cpu'],
      intraOpNumThreads: 1,
    });
    try {
      const { hidden, vocabSize: V } = half.meta.llm;
      const rows = 24;
      const embeds = Float32Array.from({ length: rows * hidden }, (_, i) => Math.sin(i * 0.37) * 0.8);
      const present = new LlamaDecoder(session, half.embedder, half.meta.llm, { mode: 'present' });
      for (const decoder of [half.decoder, present]) {
        const a = await decoder.forward(embeds, null);
        const b = await full.decoder.forward(embeds, null);
        for (const t of Object.values(a.state.feeds())) expect(t.type).toBe('float16');
        if (decoder === half.decoder) {
          expect(a.state.storage).toBeInstanceOf(AppendBlock);
          expect(a.state.bytes).toBe(b.state.bytes / 2);
        }
        a.state.dispose();
        b.state.dispose();

        // three conversations (prefixes of the embeddings) stepped alone, then together
        const alone = await conversationSteps(decoder, embeds, hidden, 4, true);
        const together = await conversationSteps(decoder, embeds, hidden, 4);
        expect(together.flat()).toHaveLength(12);
        expect(alone.flat()).toHaveLength(12);
        together.forEach((row, t) =>
          row.forEach((l, i) => {
            expect(l.length).toBe(V);
            expect(maxAbsDiff(l, alone[t][i]), `${decoder.mode} row ${i} step ${t}`).toBeLessThan(1e-4);
            expect(argmax(l)).toBe(argmax(alone[t][i]));
          }),
        );
      }
    } finally {
      await half.close();
      await full.close();
      await session.release();
    }
  }, 120_000);
});
