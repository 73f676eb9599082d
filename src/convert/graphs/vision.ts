// EVA ViT-g (upstream eva_vit.py) -> ln_vision -> drop CLS -> concat 4 adjacent patches -> llama_proj,
// as MiniGPT-v2's encode_img. One function per block; weights are read one tensor at a time. With --fused the
// blocks are vision-fused.ts's (onnxruntime's fused kernels).
import type { TensorSource } from '../readers/index.js';
import type { GraphBuilder } from '../onnx/builder.js';
import { gelu, layerNorm, linear, linearFrom, mergeHeads, splitHeads } from './blocks.js';
import { fusedVitTrunk } from './vision-fused.js';
import { interpolatePosEmbed } from './interpolate.js';
import { storedWeight } from '../quantize.js';
import { computeScalar, computeWeight, toCompute, toFloat32, withCompute } from './precision.js';

export interface VitShape {
  width: number;
  depth: number;
  heads: number;
  patchSize: number;
  mlpHidden: number;
  imageSize: number;
  /** grid side of the checkpoint's pos_embed (its native input size / patch) */
  nativeGrid: number;
}

export interface LnVision {
  weight: Float32Array;
  bias: Float32Array;
  eps: number;
}

/** What the ViT trunk (patch embedding, blocks, ln_vision) needs. */
export interface VitSpec {
  vit: TensorSource;
  shape: VitShape;
  lnVision: LnVision;
}

export interface VisionGraphSpec extends VitSpec {
  /** MiniGPT checkpoint tensors with the `model.` wrapper stripped (llama_proj.*) */
  ckpt: TensorSource;
  /** adjacent patch tokens concatenated per image token (4 in MiniGPT-v2) */
  concat: number;
  hidden: number;
}

/** Reads what the ViT checkpoint says about its own shape; heads and input size are not recorded in it. */
export function inferVitShape(vit: TensorSource, heads: number, imageSize: number): VitShape {
  const [width, , patchSize] = vit.info('patch_embed.proj.weight').shape;
  let depth = 0;
  while (vit.has(`blocks.${depth}.norm1.weight`)) depth++;
  if (depth === 0) throw new Error('ViT checkpoint has no blocks.0.* tensors: is this an EVA ViT state dict?');
  const mlpHidden = vit.info('blocks.0.mlp.fc1.weight').shape[0];
  const posTokens = vit.info('pos_embed').shape[1] - 1;
  const nativeGrid = Math.round(Math.sqrt(posTokens));
  if (width % heads !== 0) throw new Error(`ViT width ${width} is not divisible by --vit-heads ${heads}`);
  if (imageSize % patchSize !== 0) throw new Error(`--image-size ${imageSize} is not a multiple of the patch size ${patchSize}`);
  return { width, depth, heads, patchSize, mlpHidden, imageSize, nativeGrid };
}

/** Conv 14x14/14 -> flatten -> prepend CLS -> + pos_embed (interpolated to the target grid). */
async function patchEmbed(g: GraphBuilder, x: string, spec: VitSpec): Promise<string> {
  const { vit, shape } = spec;
  const grid = shape.imageSize / shape.patchSize;
  const w = storedWeight(
    g,
    'patch_embed.proj.weight',
    vit.info('patch_embed.proj.weight').shape,
    await vit.readFloat32('patch_embed.proj.weight'),
  );
  const b = computeWeight(g, 'patch_embed.proj.bias', [shape.width], await vit.readFloat32('patch_embed.proj.bias'));
  const conv = g.op(
    'Conv',
    [x, w, b],
    { kernel_shape: [shape.patchSize, shape.patchSize], strides: [shape.patchSize, shape.patchSize] },
    { name: 'patch_embed.proj' },
  );
  const flat = g.op('Reshape', [conv, g.constInt64([0, shape.width, grid * grid])], {}, { name: 'patch_embed.flatten' });
  const tokens = g.op('Transpose', [flat], { perm: [0, 2, 1] }, { name: 'patch_embed.transpose' });

  const cls = computeWeight(g, 'cls_token', [1, 1, shape.width], await vit.readFloat32('cls_token'));
  const batch = g.op('Slice', [g.op('Shape', [x]), g.constInt64([0]), g.constInt64([1])], {}, { name: 'batch_dim' });
  const clsShape = g.op('Concat', [batch, g.constInt64([1, shape.width])], { axis: 0 }, { name: 'cls_shape' });
  const clsTokens = g.op('Expand', [cls, clsShape], {}, { name: 'cls_expand' });
  const withCls = g.op('Concat', [clsTokens, tokens], { axis: 1 }, { name: 'cat_cls' });

  const pos = interpolatePosEmbed(await vit.readFloat32('pos_embed'), shape.width, 1, grid);
  const posName = computeWeight(g, 'pos_embed', [1, 1 + grid * grid, shape.width], pos);
  return g.op('Add', [withCls, posName], {}, { name: 'add_pos_embed' });
}

/**
 * EVA attention up to its output projection: one qkv Linear with bias (q_bias, 0, v_bias); q scaled by hd^-0.5
 * before q k^T; the heads merged again [B, S, width].
 */
async function attentionContext(g: GraphBuilder, x: string, p: string, spec: VitSpec): Promise<string> {
  const { vit, shape } = spec;
  const D = shape.width;
  const hd = D / shape.heads;
  const qkvW = await linearFrom(vit, `${p}.qkv`, false);
  const qBias = await vit.readFloat32(`${p}.q_bias`);
  const vBias = await vit.readFloat32(`${p}.v_bias`);
  const bias = new Float32Array(3 * D);
  bias.set(qBias, 0);
  bias.set(vBias, 2 * D);
  const qkv = linear(g, x, `${p}.qkv`, { ...qkvW, bias });
  const [q, k, v] = g.opMulti('Split', [qkv, g.constInt64([D, D, D])], { axis: -1 }, { count: 3, name: `${p}.split` });
  const qh = g.op(
    'Mul',
    [splitHeads(g, q, shape.heads, hd, `${p}.q`), computeScalar(g, hd ** -0.5, 'scalar')],
    {},
    { name: `${p}.q_scale` },
  );
  const kh = splitHeads(g, k, shape.heads, hd, `${p}.k`);
  const vh = splitHeads(g, v, shape.heads, hd, `${p}.v`);
  const scores = g.op('MatMul', [qh, g.op('Transpose', [kh], { perm: [0, 1, 3, 2] })], {}, { name: `${p}.scores` });
  // (normalised in float32 whatever the compute type)
  const probs = toCompute(
    g,
    g.op('Softmax', [toFloat32(g, scores, `${p}.scores_fp32`)], { axis: -1 }, { name: `${p}.softmax` }),
    `${p}.probs_cast`,
  );
  return mergeHeads(g, g.op('MatMul', [probs, vh], {}, { name: `${p}.context` }), D, `${p}.merge`);
}

async function attention(g: GraphBuilder, x: string, p: string, spec: VitSpec): Promise<string> {
  return linear(g, await attentionContext(g, x, p, spec), `${p}.proj`, await linearFrom(spec.vit, `${p}.proj`));
}

async function mlp(g: GraphBuilder, x: string, p: string, vit: TensorSource): Promise<string> {
  const h = gelu(g, linear(g, x, `${p}.fc1`, await linearFrom(vit, `${p}.fc1`)), `${p}.act`);
  return linear(g, h, `${p}.fc2`, await linearFrom(vit, `${p}.fc2`));
}

/** Pre-norm block: x += attn(norm1(x)); x += mlp(norm2(x)) (layer-scale gammas when the checkpoint has them). */
async function block(g: GraphBuilder, x: string, i: number, spec: VitSpec): Promise<string> {
  const { vit } = spec;
  const p = `blocks.${i}`;
  const eps = 1e-6;
  const scaled = async (y: string, gamma: string) =>
    vit.has(gamma) ? g.op('Mul', [y, computeWeight(g, gamma, [spec.shape.width], await vit.readFloat32(gamma))]) : y;
  const n1 = layerNorm(g, x, `${p}.norm1`, await vit.readFloat32(`${p}.norm1.weight`), await vit.readFloat32(`${p}.norm1.bias`), eps);
  const x1 = g.op('Add', [x, await scaled(await attention(g, n1, `${p}.attn`, spec), `${p}.gamma_1`)], {}, { name: `${p}.residual1` });
  const n2 = layerNorm(g, x1, `${p}.norm2`, await vit.readFloat32(`${p}.norm2.weight`), await vit.readFloat32(`${p}.norm2.bias`), eps);
  return g.op('Add', [x1, await scaled(await mlp(g, n2, `${p}.mlp`, vit), `${p}.gamma_2`)], {}, { name: `${p}.residual2` });
}

/**
 * `pixel_values [B,3,S,S]` -> EVA ViT -> ln_vision: `[B, 1+N, width]` float32, CLS token kept; computed in the
 * builder's compute type.
 */
export async function vitFeatures(g: GraphBuilder, pixels: string, spec: VitSpec): Promise<string> {
  let x = await patchEmbed(g, toCompute(g, pixels, 'pixel_values.cast'), spec);
  if (g.fused) {
    const trunk = await fusedVitTrunk(g, x, spec, (h, p) => attentionContext(g, h, p, spec));
    return toFloat32(g, trunk, 'ln_vision.to_fp32');
  }
  for (let i = 0; i < spec.shape.depth; i++) x = await block(g, x, i, spec);
  const ln = layerNorm(g, x, 'ln_vision', spec.lnVision.weight, spec.lnVision.bias, spec.lnVision.eps);
  return toFloat32(g, ln, 'ln_vision.to_fp32');
}

/** Builds `pixel_values [B,3,S,S]` -> `image_embeds [B, N/concat, hidden]` into `g`. */
export async function buildVisionGraph(g: GraphBuilder, spec: VisionGraphSpec): Promise<void> {
  const { shape } = spec;
  const S = shape.imageSize;
  const grid = S / shape.patchSize;
  const patches = grid * grid;
  if (patches % spec.concat !== 0) throw new Error(`${patches} patches cannot be grouped by ${spec.concat}`);

  const pixels = g.input('pixel_values', 'float32', ['batch', 3, S, S]);
  const ln = await vitFeatures(g, pixels, spec);
  await withCompute(g, 'float32', () => projectPatches(g, ln, spec));
}

/** ln_vision's patch tokens, `concat` adjacent ones side by side, through llama_proj: `image_embeds`. */
async function projectPatches(g: GraphBuilder, ln: string, spec: VisionGraphSpec): Promise<void> {
  const { shape } = spec;
  const patches = (shape.imageSize / shape.patchSize) ** 2;
  const noCls = g.op('Slice', [ln, g.constInt64([1]), g.constInt64([1 + patches]), g.constInt64([1])], {}, { name: 'drop_cls' });
  const grouped = g.op(
    'Reshape',
    [noCls, g.constInt64([0, patches / spec.concat, spec.concat * shape.width])],
    {},
    { name: 'concat_adjacent' },
  );
  const proj = await linearFrom(spec.ckpt, 'llama_proj');
  if (proj.inFeatures !== spec.concat * shape.width) {
    throw new Error(
      `llama_proj expects ${proj.inFeatures} inputs but ${spec.concat} x ViT width ${shape.width} = ${spec.concat * shape.width}`,
    );
  }
  if (proj.outFeatures !== spec.hidden)
    throw new Error(`llama_proj outputs ${proj.outFeatures}, the language model's hidden size is ${spec.hidden}`);
  const embeds = linear(g, grouped, 'llama_proj', proj);
  g.output(embeds, 'image_embeds', 'float32', ['batch', patches / spec.concat, spec.hidden]);
}
