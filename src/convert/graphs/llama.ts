// Llama decoder (Hugging Face LlamaForCausalLM semantics) with a KV cache, fed `inputs_embeds` so the
// image embeddings can be spliced in; plus the token-embedding graph. LoRA deltas are merged into
// q_proj / v_proj while the weights stream through.
import type { TensorSource } from '../readers/index.js';
import type { GraphBuilder } from '../onnx/builder.js';
import { linear, mergeHeads, rmsNorm, silu, splitHeads, type LinearWeights } from './blocks.js';
import { embeddingLookup } from '../quantize.js';
import { computeIO, toCompute, toFloat32 } from './precision.js';

export interface LlamaShape {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  maxPositions: number;
  tieWordEmbeddings: boolean;
}

/** Reads the shape from a Hugging Face `config.json` object. */
export function llamaShapeFromConfig(cfg: Record<string, unknown>): LlamaShape {
  const num = (key: string, fallback?: number): number => {
    const v = cfg[key];
    if (typeof v === 'number') return v;
    if (fallback !== undefined) return fallback;
    throw new Error(`config.json has no numeric "${key}"`);
  };
  const hidden = num('hidden_size');
  const heads = num('num_attention_heads');
  if (cfg.rope_scaling != null) throw new Error('config.json sets rope_scaling, which the published MiniGPT language models do not use');
  return {
    layers: num('num_hidden_layers'),
    hidden,
    heads,
    kvHeads: num('num_key_value_heads', heads),
    headDim: hidden / heads,
    intermediate: num('intermediate_size'),
    vocabSize: num('vocab_size'),
    rmsNormEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    maxPositions: num('max_position_embeddings', 2048),
    tieWordEmbeddings: cfg.tie_word_embeddings === true,
  };
}

export interface LoraSpec {
  /** MiniGPT checkpoint tensors (with the `model.` wrapper stripped) */
  source: TensorSource;
  r: number;
  alpha: number;
}

/** Finds the LoRA A/B pair of one projection under the key spellings of peft 0.2 and peft >= 0.3. */
export function loraKeys(source: TensorSource, layer: number, proj: string): { a: string; b: string } | null {
  const base = `llama_model.base_model.model.model.layers.${layer}.self_attn.${proj}`;
  for (const adapter of ['', 'default.']) {
    const a = `${base}.lora_A.${adapter}weight`;
    const b = `${base}.lora_B.${adapter}weight`;
    if (source.has(a) && source.has(b)) return { a, b };
  }
  return null;
}

/** W[out,in] += (alpha / r) * B[out,r] @ A[r,in], in place. */
export function mergeLora(w: Float32Array, out: number, inF: number, a: Float32Array, b: Float32Array, r: number, scaling: number): void {
  if (a.length !== r * inF || b.length !== out * r) {
    throw new Error(
      `LoRA shapes do not match r=${r}: A has ${a.length} values (expected ${r}x${inF}), B has ${b.length} (expected ${out}x${r})`,
    );
  }
  const row = new Float64Array(inF);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let k = 0; k < r; k++) {
      const bk = b[o * r + k];
      if (bk === 0) continue;
      const aRow = k * inF;
      for (let i = 0; i < inF; i++) row[i] += bk * a[aRow + i];
    }
    const wRow = o * inF;
    for (let i = 0; i < inF; i++) w[wRow + i] = w[wRow + i] + Math.fround(scaling * Math.fround(row[i]));
  }
}

export interface DecoderGraphSpec {
  llm: TensorSource;
  shape: LlamaShape;
  lora?: LoraSpec;
}

export async function projection(spec: DecoderGraphSpec, layer: number, name: string, module: 'self_attn' | 'mlp'): Promise<LinearWeights> {
  const key = `model.layers.${layer}.${module}.${name}.weight`;
  const [outFeatures, inFeatures] = spec.llm.info(key).shape;
  const weight = await spec.llm.readFloat32(key);
  if (spec.lora && (name === 'q_proj' || name === 'v_proj')) {
    const keys = loraKeys(spec.lora.source, layer, name);
    if (!keys) throw new Error(`the MiniGPT checkpoint has no LoRA weights for layer ${layer} ${name}`);
    const a = await spec.lora.source.readFloat32(keys.a);
    const b = await spec.lora.source.readFloat32(keys.b);
    mergeLora(weight, outFeatures, inFeatures, a, b, spec.lora.r, spec.lora.alpha / spec.lora.r);
  }
  return { weight, outFeatures, inFeatures };
}

/** Shared by every layer: the allowed-attention mask [B,1,S,T] and rotary cos/sin [B,1,S,hd]. */
function attentionContext(g: GraphBuilder, embeds: string, mask: string, positions: string, invFreq: Float32Array) {
  const allowed = allowedAttention(g, embeds, mask);

  const invFreqName = g.weight('rotary_emb.inv_freq', [invFreq.length], invFreq);
  const pos = g.op(
    'Unsqueeze',
    [g.op('Cast', [positions], { to: 1 }, { name: 'positions_f' }), g.constInt64([-1])],
    {},
    { name: 'positions_col' },
  );
  const freqs = g.op('Mul', [pos, invFreqName], {}, { name: 'rotary_freqs' });
  const emb = g.op('Concat', [freqs, freqs], { axis: -1 }, { name: 'rotary_emb' });
  // computed in fp32, then in the compute type (HF: `cos.to(dtype=x.dtype)`)
  const cos = toCompute(g, g.op('Unsqueeze', [g.op('Cos', [emb]), g.constInt64([1])], {}, { name: 'rotary_cos' }), 'rotary_cos.cast');
  const sin = toCompute(g, g.op('Unsqueeze', [g.op('Sin', [emb]), g.constInt64([1])], {}, { name: 'rotary_sin' }), 'rotary_sin.cast');
  // every layer's cache has the same length: layer 0's input gives it
  const cacheLen = g.op('Gather', [g.op('Shape', ['cache_key_values.0.key']), g.constInt64([2])], { axis: 0 }, { name: 'cache_len' });
  const total = g.op('Gather', [g.op('Shape', [mask]), g.constInt64([1])], { axis: 0 }, { name: 'keys_len' });
  const cacheSplit = g.op('Concat', [cacheLen, g.op('Sub', [total, cacheLen])], { axis: 0 }, { name: 'cache_split' });
  return { allowed, cos, sin, cacheSplit };
}

/**
 * Which keys each query may attend to, [B,1,S,T] bool: key index <= past + query index (past = T - S, the
 * keys being the past then the new positions) and attention_mask[key] = 1.
 */
export function allowedAttention(g: GraphBuilder, embeds: string, mask: string): string {
  const seqLen = g.op('Gather', [g.op('Shape', [embeds]), g.constInt64([1], [], 'idx1')], { axis: 0 }, { name: 'seq_len' });
  const total = g.op('Gather', [g.op('Shape', [mask]), g.constInt64([1], [], 'idx1')], { axis: 0 }, { name: 'total_len' });
  const past = g.op('Sub', [total, seqLen], {}, { name: 'past_len' });
  const one = g.constInt64([1], [], 'one');
  const qPos = g.op(
    'Unsqueeze',
    [g.op('Range', [past, total, one], {}, { name: 'query_index' }), g.constInt64([1])],
    {},
    { name: 'query_index_col' },
  );
  const kPos = g.op('Range', [g.constInt64([0], [], 'zero'), total, one], {}, { name: 'key_index' });
  const causal = g.op('LessOrEqual', [kPos, qPos], {}, { name: 'causal' });
  const padOk = g.op('Unsqueeze', [g.op('Cast', [mask], { to: 9 }, { name: 'mask_bool' }), g.constInt64([1, 2])], {}, { name: 'mask_4d' });
  return g.op('And', [causal, padOk], {}, { name: 'allowed' });
}

/** x*cos + rotate_half(x)*sin with rotate_half([x1, x2]) = [-x2, x1] (HF layout). */
function rotary(g: GraphBuilder, x: string, cos: string, sin: string, headDim: number, name: string): string {
  const [x1, x2] = g.opMulti('Split', [x, g.constInt64([headDim / 2, headDim / 2])], { axis: -1 }, { count: 2, name: `${name}.halves` });
  const rotated = g.op('Concat', [g.op('Neg', [x2]), x1], { axis: -1 }, { name: `${name}.rotate_half` });
  return g.op('Add', [g.op('Mul', [x, cos]), g.op('Mul', [rotated, sin])], {}, { name });
}

/** [B, kvHeads, T, hd] -> [B, heads, T, hd] by repeating each kv head (grouped-query attention). */
function repeatKv(g: GraphBuilder, x: string, shape: LlamaShape, name: string): string {
  const rep = shape.heads / shape.kvHeads;
  if (rep === 1) return x;
  const expanded = g.op(
    'Expand',
    [g.op('Unsqueeze', [x, g.constInt64([2])]), g.constInt64([1, 1, rep, 1, 1])],
    {},
    { name: `${name}.expand` },
  );
  return g.op('Reshape', [expanded, g.constInt64([0, shape.heads, -1, shape.headDim])], {}, { name: `${name}.reshape` });
}

interface LayerContext {
  allowed: string;
  cos: string;
  sin: string;
  /** [cache positions, past + new positions]: where the attention probabilities split */
  cacheSplit: string;
}

async function selfAttention(g: GraphBuilder, x: string, i: number, ctx: LayerContext, spec: DecoderGraphSpec): Promise<string> {
  const { shape } = spec;
  const p = `model.layers.${i}.self_attn`;
  const q = splitHeads(
    g,
    linear(g, x, `${p}.q_proj`, await projection(spec, i, 'q_proj', 'self_attn')),
    shape.heads,
    shape.headDim,
    `${p}.q`,
  );
  const k = splitHeads(
    g,
    linear(g, x, `${p}.k_proj`, await projection(spec, i, 'k_proj', 'self_attn')),
    shape.kvHeads,
    shape.headDim,
    `${p}.k`,
  );
  const v = splitHeads(
    g,
    linear(g, x, `${p}.v_proj`, await projection(spec, i, 'v_proj', 'self_attn')),
    shape.kvHeads,
    shape.headDim,
    `${p}.v`,
  );
  const qRot = rotary(g, q, ctx.cos, ctx.sin, shape.headDim, `${p}.q_rot`);
  const kRot = rotary(g, k, ctx.cos, ctx.sin, shape.headDim, `${p}.k_rot`);

  // Keys and values come from two inputs: `cache_key_values.*`, attended to but NOT copied into `present`, and
  // `past_key_values.*`, concatenated with the new positions into `present.*` (onnxruntime runs every node, so
  // a `present` output costs its copy whether fetched or not). A runtime that keeps the cache itself feeds
  // its buffers as the cache and an empty past: a step then copies nothing that grows with the past (at 8
  // rows x 675 positions of Llama-2-7B width the Concats took ~32 ms of a 100-140 ms step; docs/benchmarks.md).
  // A runtime that keeps `present` feeds the past as before and a one-position cache masked out (no
  // zero-sized MatMul).
  const kvDims = (len: string) => ['batch', shape.kvHeads, len, shape.headDim];
  const kv = computeIO(g);
  const cacheK = g.input(`cache_key_values.${i}.key`, kv, kvDims('cache_sequence_length'));
  const cacheV = g.input(`cache_key_values.${i}.value`, kv, kvDims('cache_sequence_length'));
  const pastK = g.input(`past_key_values.${i}.key`, kv, kvDims('past_sequence_length'));
  const pastV = g.input(`past_key_values.${i}.value`, kv, kvDims('past_sequence_length'));
  const keys = g.op('Concat', [pastK, kRot], { axis: 2 }, { name: `${p}.cat_k` });
  const values = g.op('Concat', [pastV, v], { axis: 2 }, { name: `${p}.cat_v` });
  g.output(keys, `present.${i}.key`, kv, kvDims('present_sequence_length'));
  g.output(values, `present.${i}.value`, kv, kvDims('present_sequence_length'));
  // The new positions alone: what a runtime keeping the cache appends (equal to `present` when the past is empty).
  g.output(kRot, `present_new.${i}.key`, kv, kvDims('sequence_length'));
  g.output(v, `present_new.${i}.value`, kv, kvDims('sequence_length'));

  // softmax(q k^T / sqrt(d)) v over the keys [cache | past | new], with the scores of the two parts
  // computed apart and joined (small: [B, heads, S, T]), and the context summed from the two parts.
  const scoresOf = (k: string, name: string) =>
    g.op('MatMul', [qRot, g.op('Transpose', [repeatKv(g, k, shape, `${name}.rep`)], { perm: [0, 1, 3, 2] })], {}, { name });
  const raw = g.op(
    'Concat',
    [scoresOf(cacheK, `${p}.scores_cache`), scoresOf(keys, `${p}.scores_present`)],
    { axis: -1 },
    { name: `${p}.scores` },
  );
  // scaled, masked and normalised in fp32 (HF: softmax(..., dtype=torch.float32)), used in the compute type
  const scores = g.op('Div', [toFloat32(g, raw, `${p}.scores_fp32`), g.scalar(Math.sqrt(shape.headDim))], {}, { name: `${p}.scale` });
  // HF fills masked scores with finfo(float32).min rather than -inf.
  const masked = g.op('Where', [ctx.allowed, scores, g.scalar(-3.4028234663852886e38, 'fp32_min')], {}, { name: `${p}.mask` });
  const probs = toCompute(g, g.op('Softmax', [masked], { axis: -1 }, { name: `${p}.softmax` }), `${p}.probs_cast`);
  const [pCache, pPresent] = g.opMulti('Split', [probs, ctx.cacheSplit], { axis: -1 }, { count: 2, name: `${p}.probs_split` });
  const context = g.op(
    'Add',
    [
      g.op('MatMul', [pCache, repeatKv(g, cacheV, shape, `${p}.v_cache_rep`)], {}, { name: `${p}.context_cache` }),
      g.op('MatMul', [pPresent, repeatKv(g, values, shape, `${p}.v_rep`)], {}, { name: `${p}.context_present` }),
    ],
    {},
    { name: `${p}.context` },
  );
  const attn = mergeHeads(g, context, shape.heads * shape.headDim, `${p}.merge`);
  return linear(g, attn, `${p}.o_proj`, await projection(spec, i, 'o_proj', 'self_attn'));
}

async function mlp(g: GraphBuilder, x: string, i: number, spec: DecoderGraphSpec): Promise<string> {
  const p = `model.layers.${i}.mlp`;
  const gate = silu(g, linear(g, x, `${p}.gate_proj`, await projection(spec, i, 'gate_proj', 'mlp')), `${p}.act`);
  const up = linear(g, x, `${p}.up_proj`, await projection(spec, i, 'up_proj', 'mlp'));
  return linear(g, g.op('Mul', [gate, up], {}, { name: `${p}.gated` }), `${p}.down_proj`, await projection(spec, i, 'down_proj', 'mlp'));
}

async function decoderLayer(g: GraphBuilder, x: string, i: number, ctx: LayerContext, spec: DecoderGraphSpec): Promise<string> {
  const eps = spec.shape.rmsNormEps;
  const p = `model.layers.${i}`;
  const h = rmsNorm(g, x, `${p}.input_layernorm`, await spec.llm.readFloat32(`${p}.input_layernorm.weight`), eps);
  const x1 = g.op('Add', [x, await selfAttention(g, h, i, ctx, spec)], {}, { name: `${p}.residual1` });
  const h2 = rmsNorm(g, x1, `${p}.post_attention_layernorm`, await spec.llm.readFloat32(`${p}.post_attention_layernorm.weight`), eps);
  return g.op('Add', [x1, await mlp(g, h2, i, spec)], {}, { name: `${p}.residual2` });
}

/** inv_freq as the checkpoint stores it (transformers <= 4.30 saved the buffer), else computed like HF. */
export async function rotaryInvFreq(spec: DecoderGraphSpec): Promise<Float32Array> {
  const saved = 'model.layers.0.self_attn.rotary_emb.inv_freq';
  // Only an fp32 copy is trusted: a buffer saved in fp16 is rounded enough to turn angles at position
  // 2048 by ~0.5 rad, while HF computes inv_freq in fp32 at load time.
  if (spec.llm.has(saved) && spec.llm.info(saved).dtype === 'F32') return spec.llm.readFloat32(saved);
  return computeInvFreq(spec.shape.headDim, spec.shape.ropeTheta);
}

/** fp32 at every step, as torch's `1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))`. */
export function computeInvFreq(headDim: number, theta: number): Float32Array {
  const f = Math.fround;
  return Float32Array.from({ length: headDim / 2 }, (_, j) => f(1 / f(theta ** f((2 * j) / headDim))));
}

/** `inputs_embeds, attention_mask, position_ids, cache_key_values.*, past_key_values.*, logits_to_keep` -> `logits, present.*, present_new.*`. */
export async function buildDecoderGraph(g: GraphBuilder, spec: DecoderGraphSpec): Promise<void> {
  const { shape } = spec;
  const embeds = g.input('inputs_embeds', 'float32', ['batch', 'sequence_length', shape.hidden]);
  const mask = g.input('attention_mask', 'int64', ['batch', 'total_sequence_length']);
  const positions = g.input('position_ids', 'int64', ['batch', 'sequence_length']);
  const ctx = attentionContext(g, embeds, mask, positions, await rotaryInvFreq(spec));

  let x = toCompute(g, embeds, 'inputs_embeds.cast');
  for (let i = 0; i < shape.layers; i++) x = await decoderLayer(g, x, i, ctx, spec);
  const normed = rmsNorm(g, x, 'model.norm', await spec.llm.readFloat32('model.norm.weight'), shape.rmsNormEps);
  await lmHead(g, normed, spec);
}

/**
 * `logits` of the last `logits_to_keep` positions of the final hidden states `h` [B, S, hidden] (0 keeps all,
 * as transformers' argument of that name). Generation needs one position after a prefill, and the head is
 * the widest matrix of the model: for a 272-token Llama-2-7B prompt it is 71 of the ~180 GFLOP of two layers.
 */
export async function lmHead(g: GraphBuilder, h: string, spec: DecoderGraphSpec): Promise<void> {
  const { shape } = spec;
  const keep = g.input('logits_to_keep', 'int64', [1]);
  const start = g.op('Neg', [keep], {}, { name: 'logits_to_keep.start' });
  const kept = g.op(
    'Slice',
    [h, start, g.constInt64([Number.MAX_SAFE_INTEGER], [1], 'logits_to_keep.end'), g.constInt64([1], [1], 'logits_to_keep.axis')],
    {},
    { name: 'logits_to_keep.slice' },
  );
  const headKey = shape.tieWordEmbeddings || !spec.llm.has('lm_head.weight') ? 'model.embed_tokens.weight' : 'lm_head.weight';
  const logits = linear(g, kept, 'lm_head', {
    weight: await spec.llm.readFloat32(headKey),
    outFeatures: shape.vocabSize,
    inFeatures: shape.hidden,
  });
  g.output(toFloat32(g, logits, 'logits.cast'), 'logits', 'float32', ['batch', 'logits_length', shape.vocabSize]);
}

/** `input_ids [B,S]` -> `inputs_embeds [B,S,hidden]` (the Llama input embedding table). */
export async function buildEmbedGraph(g: GraphBuilder, llm: TensorSource, shape: LlamaShape): Promise<void> {
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence_length']);
  const table = await llm.readFloat32('model.embed_tokens.weight');
  const embeds = embeddingLookup(g, 'model.embed_tokens.weight', table, [shape.vocabSize, shape.hidden], ids, 'embed_tokens');
  g.output(embeds, 'inputs_embeds', 'float32', ['batch', 'sequence_length', shape.hidden]);
}
