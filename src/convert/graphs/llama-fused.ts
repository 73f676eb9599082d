// The Llama decoder written with onnxruntime's fused kernels (`minigpt convert --fused`, model.json
// `graph: "fused"`): the same inputs, outputs and results as buildDecoderGraph (llama.ts), in fewer, larger
// nodes that the CPU and CUDA providers implement natively.
//
// - SimplifiedLayerNormalization (the first RMSNorm) and com.microsoft.SkipSimplifiedLayerNormalization for
//   every later one: residual add + RMSNorm in one kernel, whose 4th output is the residual sum the next
//   block adds to.
// - com.microsoft.RotaryEmbedding (interleaved = 0: the rotate_half layout of HF Llama) on q and k, with
//   cos/sin tables [maxPositions, headDim / 2] computed at conversion exactly as the plain graph computes
//   them at run time (fp32 position x fp32 inv_freq, then cos / sin).
// - com.microsoft.MultiHeadAttention with past_key / past_value in, present_key / present_value out (the
//   KV cache concatenated inside the kernel) and the causal + padding mask as an additive attention_bias
//   [B, 1, S, T] built from the same `attention_mask` and key/query indices as the plain graph. This keeps
//   the runtime contract whole: any attention_mask (left padding of 'present' mode, the hidden tail of each
//   row in 'append' mode's capacity buffers, rows of different lengths in one batch), position_ids per row,
//   multi-token runs after a past (KV reuse). GroupQueryAttention was not used (measured on onnxruntime 1.30):
//   with a past it takes several new tokens only for batch 1; on WebGPU it ignores position_ids when it
//   applies the rotary itself, so left-padded rows get the wrong angles; and its fixed-capacity cache written in
//   place needs pre-allocated GPU outputs, which Node's binding does not honour (docs/gpu.md).
// - q_proj / k_proj / v_proj as one Linear over their stacked weights and a Split (qkvProjection).
// - MatMulNBits for int8 / int4 Linears, as in every graph (src/convert/quantize.ts).
//
// MultiHeadAttention needs as many key/value heads as query heads; the published MiniGPT language models
// (Llama-2 7B, Vicuna 7B / 13B) all have kvHeads == heads. A grouped-query model is refused with --fused.
import type { GraphBuilder } from '../onnx/builder.js';
import { linear, silu, splitHeads } from './blocks.js';
import { allowedAttention, lmHead, projection, rotaryInvFreq, type DecoderGraphSpec, type LlamaShape } from './llama.js';
import { computeIO, computeMin, computeScalar, computeWeight, toCompute } from './precision.js';

const MS = { domain: 'com.microsoft' } as const;

/** cos / sin of every position [maxPositions, headDim / 2], rounded as the plain graph's fp32 ops round them. */
export function rotaryCaches(invFreq: Float32Array, maxPositions: number): { cos: Float32Array; sin: Float32Array } {
  const half = invFreq.length;
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let j = 0; j < half; j++) {
      const angle = Math.fround(p * invFreq[j]);
      cos[p * half + j] = Math.cos(angle);
      sin[p * half + j] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** Why a model cannot get the fused graph, or null. */
export function fusedUnsupported(shape: LlamaShape): string | null {
  if (shape.kvHeads !== shape.heads) {
    return `--fused uses MultiHeadAttention, which needs as many key/value heads as query heads (this model has ${shape.heads} and ${shape.kvHeads})`;
  }
  if (shape.headDim % 2 !== 0) return `--fused: RotaryEmbedding needs an even head size (this model has ${shape.headDim})`;
  return null;
}

/**
 * q_proj, k_proj and v_proj as one Linear over their weights stacked along the output ([q; k; v], torch layout)
 * and a Split: two kernels a layer where three MatMuls (or MatMulNBits) were, the launches being a decoding
 * step's fixed cost on a GPU. Each output row is quantised on its own (quantize.ts), so the stacked int8 / int4
 * weights are the three projections' codes and scales, unchanged. (onnxruntime's own MatMulNBitsQkv fusion does
 * not apply here: it matches only grouped-query shapes, where q's width differs from k's and v's.)
 */
async function qkvProjection(g: GraphBuilder, h: string, i: number, spec: DecoderGraphSpec): Promise<[string, string, string]> {
  const p = `model.layers.${i}.self_attn`;
  const names = ['q_proj', 'k_proj', 'v_proj'];
  const shapes = names.map((n) => spec.llm.info(`${p}.${n}.weight`).shape);
  const inFeatures = shapes[0][1];
  if (shapes.some(([, inF]) => inF !== inFeatures)) throw new Error(`${p}: q/k/v projections of different input widths cannot be stacked`);
  const widths = shapes.map(([out]) => out);
  // one projection in memory at a time beside the stacked weight (LoRA merged into it by projection())
  const weight = new Float32Array(widths.reduce((a, b) => a + b, 0) * inFeatures);
  let at = 0;
  for (const name of names) {
    const w = await projection(spec, i, name, 'self_attn');
    weight.set(w.weight, at);
    at += w.weight.length;
  }
  const qkv = linear(g, h, `${p}.qkv_proj`, { weight, outFeatures: weight.length / inFeatures, inFeatures });
  const [q, k, v] = g.opMulti('Split', [qkv, g.constInt64(widths)], { axis: -1 }, { count: 3, name: `${p}.qkv_split` });
  return [q, k, v];
}

interface FusedContext {
  positions: string;
  cosCache: string;
  sinCache: string;
  bias: string;
}

async function fusedAttention(g: GraphBuilder, h: string, i: number, ctx: FusedContext, spec: DecoderGraphSpec): Promise<string> {
  const { shape } = spec;
  const p = `model.layers.${i}.self_attn`;
  const rope = (x: string, name: string) =>
    g.op('RotaryEmbedding', [x, ctx.positions, ctx.cosCache, ctx.sinCache], { interleaved: 0 }, { ...MS, name });
  const [qLin, kLin, vLin] = await qkvProjection(g, h, i, spec);
  const q = rope(qLin, `${p}.q_rot`);
  const k = rope(kLin, `${p}.k_rot`);
  const v = vLin;

  const pastDims = ['batch', shape.kvHeads, 'past_sequence_length', shape.headDim];
  const kv = computeIO(g);
  const pastK = g.input(`past_key_values.${i}.key`, kv, pastDims);
  const pastV = g.input(`past_key_values.${i}.value`, kv, pastDims);
  const [attn, presentK, presentV] = g.opMulti(
    'MultiHeadAttention',
    [q, k, v, '', '', ctx.bias, pastK, pastV],
    { num_heads: shape.heads, scale: { float: 1 / Math.sqrt(shape.headDim) } },
    { ...MS, count: 3, name: `${p}.mha` },
  );
  const presentDims = ['batch', shape.kvHeads, 'total_sequence_length', shape.headDim];
  g.output(presentK, `present.${i}.key`, kv, presentDims);
  g.output(presentV, `present.${i}.value`, kv, presentDims);
  // the new positions alone, [B, kvHeads, S, hd], for the runtime's 'append' KV mode (see llama.ts)
  const newDims = ['batch', shape.kvHeads, 'sequence_length', shape.headDim];
  g.output(splitHeads(g, k, shape.kvHeads, shape.headDim, `${p}.k_new`), `present_new.${i}.key`, kv, newDims);
  g.output(splitHeads(g, v, shape.kvHeads, shape.headDim, `${p}.v_new`), `present_new.${i}.value`, kv, newDims);
  return linear(g, attn, `${p}.o_proj`, await projection(spec, i, 'o_proj', 'self_attn'));
}

async function fusedMlp(g: GraphBuilder, h: string, i: number, spec: DecoderGraphSpec): Promise<string> {
  const p = `model.layers.${i}.mlp`;
  const gate = silu(g, linear(g, h, `${p}.gate_proj`, await projection(spec, i, 'gate_proj', 'mlp')), `${p}.act`);
  const up = linear(g, h, `${p}.up_proj`, await projection(spec, i, 'up_proj', 'mlp'));
  return linear(g, g.op('Mul', [gate, up], {}, { name: `${p}.gated` }), `${p}.down_proj`, await projection(spec, i, 'down_proj', 'mlp'));
}

/** residual + delta, then RMSNorm with `weightKey`: returns [normed, residual + delta]. */
async function skipNorm(
  g: GraphBuilder,
  delta: string,
  residual: string,
  weightKey: string,
  spec: DecoderGraphSpec,
  name: string,
): Promise<[string, string]> {
  const w = await spec.llm.readFloat32(weightKey);
  const gamma = computeWeight(g, weightKey, [w.length], w);
  const [normed, , , sum] = g.opMulti(
    'SkipSimplifiedLayerNormalization',
    [delta, residual, gamma],
    { epsilon: { float: spec.shape.rmsNormEps } },
    { ...MS, outputs: [`${name}.normed`, '', '', `${name}.residual`], name },
  );
  return [normed, sum];
}

/** Same contract as buildDecoderGraph: `inputs_embeds, attention_mask, position_ids, past_key_values.*, logits_to_keep` -> `logits, present.*, present_new.*`. */
export async function buildFusedDecoderGraph(g: GraphBuilder, spec: DecoderGraphSpec): Promise<void> {
  const { shape } = spec;
  const why = fusedUnsupported(shape);
  if (why) throw new Error(why);
  const embedsIn = g.input('inputs_embeds', 'float32', ['batch', 'sequence_length', shape.hidden]);
  const embeds = toCompute(g, embedsIn, 'inputs_embeds.cast');
  const mask = g.input('attention_mask', 'int64', ['batch', 'total_sequence_length']);
  const positions = g.input('position_ids', 'int64', ['batch', 'sequence_length']);

  const invFreq = await rotaryInvFreq(spec);
  // The plain graph's mask logic (causal by key index <= past + query index, and attention_mask), as a bias.
  const allowed = allowedAttention(g, embeds, mask);
  // HF fills masked scores with finfo(dtype).min; as a bias it is added to them instead, with the same softmax.
  const bias = g.op(
    'Where',
    [allowed, computeScalar(g, 0, 'bias_zero'), computeScalar(g, computeMin(g), 'fp32_min')],
    {},
    { name: 'attention_bias' },
  );
  const { cos, sin } = rotaryCaches(invFreq, shape.maxPositions);
  const half = invFreq.length;
  const ctx: FusedContext = {
    positions,
    cosCache: computeWeight(g, 'rotary_emb.cos_cache', [shape.maxPositions, half], cos),
    sinCache: computeWeight(g, 'rotary_emb.sin_cache', [shape.maxPositions, half], sin),
    bias,
  };

  const w0 = await spec.llm.readFloat32('model.layers.0.input_layernorm.weight');
  let h = g.op(
    'SimplifiedLayerNormalization',
    [embeds, computeWeight(g, 'model.layers.0.input_layernorm.weight', [w0.length], w0)],
    { axis: -1, epsilon: { float: shape.rmsNormEps }, stash_type: 1 },
    { name: 'model.layers.0.input_layernorm' },
  );
  let residual = embeds;
  for (let i = 0; i < shape.layers; i++) {
    const pre = `model.layers.${i}`;
    const attn = await fusedAttention(g, h, i, ctx, spec);
    let h2: string;
    [h2, residual] = await skipNorm(g, attn, residual, `${pre}.post_attention_layernorm.weight`, spec, `${pre}.post_attention_layernorm`);
    const mlp = await fusedMlp(g, h2, i, spec);
    const nextNorm = i + 1 < shape.layers ? `model.layers.${i + 1}.input_layernorm` : 'model.norm';
    [h, residual] = await skipNorm(g, mlp, residual, `${nextNorm}.weight`, spec, nextNorm);
  }
  await lmHead(g, h, spec);
}
