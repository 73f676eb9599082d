// MiniGPT-4's image encoder with the BLIP-2 Q-Former (upstream minigpt4.py `encode_img` with has_qformer,
// Qformer.py `BertModel` run on the query tokens only): EVA ViT -> ln_vision (BLIP-2 weights, CLS kept) ->
// query embeddings (LayerNorm of `query_tokens`) -> post-LN BERT layers (self-attention over the queries,
// cross-attention to the image features in every second layer, the *query* feed-forward) -> llama_proj.
// One function per block; weights are read one tensor at a time.
import type { TensorSource } from '../readers/index.js';
import type { GraphBuilder } from '../onnx/builder.js';
import { gelu, layerNorm, linear, mergeHeads, splitHeads } from './blocks.js';
import { withCompute } from './precision.js';
import { linearFrom } from './blocks.js';
import { vitFeatures, type VitSpec } from './vision.js';

/** BERT prefix of the Q-Former tensors inside the BLIP-2 state dict (`model.` wrapper already stripped). */
export const QFORMER_PREFIX = 'Qformer.bert';
/** MiniGPT-4's init_Qformer hard-codes `cross_attention_freq = 2`. */
export const CROSS_ATTENTION_FREQ = 2;
/** `layer_norm_eps` of bert-base-uncased, whose config MiniGPT-4 builds the Q-Former from. */
export const QFORMER_LAYER_NORM_EPS = 1e-12;
/** ln_vision is a torch nn.LayerNorm with its default eps. */
export const LN_VISION_EPS = 1e-5;

export interface QformerShape {
  hidden: number;
  layers: number;
  heads: number;
  intermediate: number;
  queryTokens: number;
  /** input width of the cross-attention keys/values (the ViT width) */
  encoderWidth: number;
  /** layers that carry a cross-attention block */
  crossAttentionLayers: number[];
  eps: number;
}

export interface QformerVisionSpec extends VitSpec {
  /** BLIP-2 Q-Former state dict, `model.` wrapper stripped (query_tokens, ln_vision.*, Qformer.bert.*) */
  qformer: TensorSource;
  qshape: QformerShape;
  /** MiniGPT-4 checkpoint, `model.` wrapper stripped (llama_proj.*) */
  ckpt: TensorSource;
  hidden: number;
  /** also output `ln_vision_output` and `query_output` (for `minigpt verify`; nothing extra is computed) */
  stageOutputs?: boolean;
}

const layerPrefix = (i: number) => `${QFORMER_PREFIX}.encoder.layer.${i}`;

/**
 * What the BLIP-2 file says about the Q-Former; the number of heads is not recorded in it. The layers with
 * cross-attention must be exactly those MiniGPT-4 builds (index % 2 == 0), or the file does not fit.
 */
export function inferQformerShape(src: TensorSource, heads: number): QformerShape {
  if (!src.has('query_tokens')) throw new Error('the Q-Former checkpoint has no query_tokens: is it a BLIP-2 checkpoint?');
  const [, queryTokens, hidden] = src.info('query_tokens').shape;
  let layers = 0;
  while (src.has(`${layerPrefix(layers)}.attention.self.query.weight`)) layers++;
  if (layers === 0) throw new Error(`the Q-Former checkpoint has no ${layerPrefix(0)}.attention.* tensors`);
  if (!src.has(`${layerPrefix(0)}.intermediate_query.dense.weight`)) {
    throw new Error(`the Q-Former checkpoint has no ${layerPrefix(0)}.intermediate_query.* (the query feed-forward MiniGPT-4 uses)`);
  }
  const intermediate = src.info(`${layerPrefix(0)}.intermediate_query.dense.weight`).shape[0];
  const crossAttentionLayers: number[] = [];
  for (let i = 0; i < layers; i++) {
    const has = src.has(`${layerPrefix(i)}.crossattention.self.key.weight`);
    if (has !== (i % CROSS_ATTENTION_FREQ === 0)) {
      throw new Error(
        `Q-Former layer ${i} ${has ? 'has' : 'lacks'} cross-attention tensors; MiniGPT-4 puts cross-attention in every ${CROSS_ATTENTION_FREQ}nd layer (0, 2, ...)`,
      );
    }
    if (has) crossAttentionLayers.push(i);
  }
  const encoderWidth = src.info(`${layerPrefix(0)}.crossattention.self.key.weight`).shape[1];
  return { hidden, layers, heads, intermediate, queryTokens, encoderWidth, crossAttentionLayers, eps: QFORMER_LAYER_NORM_EPS };
}

async function layerNormFrom(g: GraphBuilder, x: string, src: TensorSource, p: string, eps: number): Promise<string> {
  return layerNorm(g, x, p, await src.readFloat32(`${p}.weight`), await src.readFloat32(`${p}.bias`), eps);
}

/** BertEmbeddings with query_embeds only: LayerNorm(query_tokens) (no word/position embeddings), broadcast to the batch. */
async function queryEmbeddings(g: GraphBuilder, pixels: string, spec: QformerVisionSpec): Promise<string> {
  const { qformer, qshape } = spec;
  const tokens = g.weight('query_tokens', [1, qshape.queryTokens, qshape.hidden], await qformer.readFloat32('query_tokens'));
  const normed = await layerNormFrom(g, tokens, qformer, `${QFORMER_PREFIX}.embeddings.LayerNorm`, qshape.eps);
  const batch = g.op('Slice', [g.op('Shape', [pixels]), g.constInt64([0]), g.constInt64([1])], {}, { name: 'qformer.batch_dim' });
  const shape = g.op('Concat', [batch, g.constInt64([qshape.queryTokens, qshape.hidden])], { axis: 0 }, { name: 'qformer.query_shape' });
  return g.op('Expand', [normed, shape], {}, { name: 'qformer.query_expand' });
}

/**
 * BertAttention (self or cross): q from `x`, k/v from `kv`; scores = q k^T / sqrt(hd) (scaled after the
 * product), softmax (the all-ones masks add nothing), then BertSelfOutput: LayerNorm(dense(ctx) + x).
 */
async function bertAttention(g: GraphBuilder, x: string, kv: string, p: string, spec: QformerVisionSpec): Promise<string> {
  const { qformer, qshape } = spec;
  const hd = qshape.hidden / qshape.heads;
  const q = splitHeads(g, linear(g, x, `${p}.self.query`, await linearFrom(qformer, `${p}.self.query`)), qshape.heads, hd, `${p}.q`);
  const k = splitHeads(g, linear(g, kv, `${p}.self.key`, await linearFrom(qformer, `${p}.self.key`)), qshape.heads, hd, `${p}.k`);
  const v = splitHeads(g, linear(g, kv, `${p}.self.value`, await linearFrom(qformer, `${p}.self.value`)), qshape.heads, hd, `${p}.v`);
  const raw = g.op('MatMul', [q, g.op('Transpose', [k], { perm: [0, 1, 3, 2] })], {}, { name: `${p}.scores` });
  const scores = g.op('Div', [raw, g.scalar(Math.sqrt(hd))], {}, { name: `${p}.scale` });
  const probs = g.op('Softmax', [scores], { axis: -1 }, { name: `${p}.softmax` });
  const ctx = mergeHeads(g, g.op('MatMul', [probs, v], {}, { name: `${p}.context` }), qshape.hidden, `${p}.merge`);
  const dense = linear(g, ctx, `${p}.output.dense`, await linearFrom(qformer, `${p}.output.dense`));
  const res = g.op('Add', [dense, x], {}, { name: `${p}.output.residual` });
  return layerNormFrom(g, res, qformer, `${p}.output.LayerNorm`, qshape.eps);
}

/** The query feed-forward: intermediate_query (Linear + exact GELU), output_query LayerNorm(dense(h) + x). */
async function queryFeedForward(g: GraphBuilder, x: string, p: string, spec: QformerVisionSpec): Promise<string> {
  const { qformer, qshape } = spec;
  const h = gelu(
    g,
    linear(g, x, `${p}.intermediate_query.dense`, await linearFrom(qformer, `${p}.intermediate_query.dense`)),
    `${p}.intermediate_query.act`,
  );
  const dense = linear(g, h, `${p}.output_query.dense`, await linearFrom(qformer, `${p}.output_query.dense`));
  const res = g.op('Add', [dense, x], {}, { name: `${p}.output_query.residual` });
  return layerNormFrom(g, res, qformer, `${p}.output_query.LayerNorm`, qshape.eps);
}

/** One BertLayer on the query tokens: self-attention, cross-attention where the layer has it, feed-forward. */
async function bertLayer(g: GraphBuilder, x: string, image: string, i: number, spec: QformerVisionSpec): Promise<string> {
  const p = layerPrefix(i);
  let h = await bertAttention(g, x, x, `${p}.attention`, spec);
  if (spec.qshape.crossAttentionLayers.includes(i)) h = await bertAttention(g, h, image, `${p}.crossattention`, spec);
  return queryFeedForward(g, h, p, spec);
}

/** Builds `pixel_values [B,3,S,S]` -> `image_embeds [B, queryTokens, hidden]` into `g`. */
export async function buildQformerVisionGraph(g: GraphBuilder, spec: QformerVisionSpec): Promise<void> {
  const { shape, qshape } = spec;
  if (qshape.hidden % qshape.heads !== 0)
    throw new Error(`Q-Former hidden size ${qshape.hidden} is not divisible by --qformer-heads ${qshape.heads}`);
  const S = shape.imageSize;
  const tokens = (S / shape.patchSize) ** 2 + 1;
  if (qshape.encoderWidth !== shape.width) {
    throw new Error(`the Q-Former cross-attention takes ${qshape.encoderWidth}-wide image features but the ViT width is ${shape.width}`);
  }
  const pixels = g.input('pixel_values', 'float32', ['batch', 3, S, S]);
  const image = await vitFeatures(g, pixels, spec);
  // the Q-Former and llama_proj in float32 whatever the ViT's compute type (as upstream runs them)
  await withCompute(g, 'float32', () => queryTransformer(g, pixels, image, tokens, spec));
}

async function queryTransformer(g: GraphBuilder, pixels: string, image: string, tokens: number, spec: QformerVisionSpec): Promise<void> {
  const { shape, qshape } = spec;
  let x = await queryEmbeddings(g, pixels, spec);
  for (let i = 0; i < qshape.layers; i++) x = await bertLayer(g, x, image, i, spec);

  const proj = await linearFrom(spec.ckpt, 'llama_proj');
  if (proj.inFeatures !== qshape.hidden)
    throw new Error(`llama_proj expects ${proj.inFeatures} inputs but the Q-Former hidden size is ${qshape.hidden}`);
  if (proj.outFeatures !== spec.hidden)
    throw new Error(`llama_proj outputs ${proj.outFeatures}, the language model's hidden size is ${spec.hidden}`);
  const embeds = linear(g, x, 'llama_proj', proj);
  g.output(embeds, 'image_embeds', 'float32', ['batch', qshape.queryTokens, spec.hidden]);
  if (spec.stageOutputs) {
    g.output(image, 'ln_vision_output', 'float32', ['batch', tokens, shape.width]);
    g.output(x, 'query_output', 'float32', ['batch', qshape.queryTokens, qshape.hidden]);
  }
}
