// EVA ViT-g's blocks written with onnxruntime's fused kernels (`minigpt convert --fused`): the computation of
// vision.ts's block() in fewer kernels (a 448 px image goes through 40 blocks, and on a GPU each kernel launch
// is a fixed cost):
// - com.microsoft.SkipLayerNormalization: each residual add, with the branch's output bias, and the LayerNorm
//   after it (norm2, the next block's norm1, ln_vision) in one kernel; its 4th output is the residual sum.
// - com.microsoft.BiasGelu: fc1's bias and the exact (erf) GELU of nn.GELU().
// The attention stays vision.ts's (MatMul, Softmax): com.microsoft.MultiHeadAttention would be one kernel instead
// of a dozen, but onnxruntime's WebGPU kernel for it is off by ~1e-2 in float32 from 32 query positions on (a
// ViT attends over 1025; docs/gpu.md), where vision.ts's form is exact to 1e-6.
import type { GraphBuilder } from '../onnx/builder.js';
import type { TensorSource } from '../readers/index.js';
import { layerNorm, linear, linearFrom } from './blocks.js';
import { computeWeight } from './precision.js';

const MS = { domain: 'com.microsoft' } as const;
const BLOCK_EPS = 1e-6;

/** What the trunk needs of vision.ts's VitSpec. */
export interface FusedVitSpec {
  vit: TensorSource;
  shape: { width: number; depth: number };
  lnVision: { weight: Float32Array; bias: Float32Array; eps: number };
}

interface Norm {
  key: string;
  weight: Float32Array;
  bias: Float32Array;
  eps: number;
}

/** A branch's output + its bias (scaled by a layer-scale gamma where the checkpoint has one) + the residual, normed. */
async function skipNorm(
  g: GraphBuilder,
  out: string,
  bias: { name: string; data: Float32Array },
  gamma: string,
  residual: string,
  norm: Norm,
  spec: FusedVitSpec,
): Promise<{ normed: string; sum: string }> {
  const D = spec.shape.width;
  let branch = out;
  let inKernel: string[] = [computeWeight(g, bias.name, [D], bias.data)];
  if (spec.vit.has(gamma)) {
    // gamma * (out + bias): the bias goes in before the scale, so outside the fused kernel
    branch = g.op('Mul', [g.op('Add', [out, inKernel[0]]), computeWeight(g, gamma, [D], await spec.vit.readFloat32(gamma))]);
    inKernel = [];
  }
  const [normed, , , sum] = g.opMulti(
    'SkipLayerNormalization',
    [
      branch,
      residual,
      computeWeight(g, `${norm.key}.weight`, [D], norm.weight),
      computeWeight(g, `${norm.key}.bias`, [D], norm.bias),
      ...inKernel,
    ],
    { epsilon: { float: norm.eps } },
    { ...MS, outputs: [`${norm.key}.normed`, '', '', `${norm.key}.residual`], name: norm.key },
  );
  return { normed, sum };
}

async function blockNorm(spec: FusedVitSpec, key: string): Promise<Norm> {
  return { key, weight: await spec.vit.readFloat32(`${key}.weight`), bias: await spec.vit.readFloat32(`${key}.bias`), eps: BLOCK_EPS };
}

/** The patch tokens (with CLS and position embeddings) -> every block -> ln_vision, in the compute type. */
export async function fusedVitTrunk(
  g: GraphBuilder,
  tokens: string,
  spec: FusedVitSpec,
  /** the attention of block prefix `p` on `x`, up to its output projection (vision.ts) */
  attentionContext: (x: string, p: string) => Promise<string>,
): Promise<string> {
  const { vit, shape } = spec;
  const first = await blockNorm(spec, 'blocks.0.norm1');
  let normed = layerNorm(g, tokens, first.key, first.weight, first.bias, first.eps);
  let residual = tokens;
  for (let i = 0; i < shape.depth; i++) {
    const p = `blocks.${i}`;
    const ctx = await attentionContext(normed, `${p}.attn`);
    const proj = await linearFrom(vit, `${p}.attn.proj`);
    const attn = linear(g, ctx, `${p}.attn.proj`, { ...proj, bias: undefined });
    const projBias = { name: `${p}.attn.proj.bias`, data: proj.bias! };
    const mid = await skipNorm(g, attn, projBias, `${p}.gamma_1`, residual, await blockNorm(spec, `${p}.norm2`), spec);

    const fc1 = await linearFrom(vit, `${p}.mlp.fc1`);
    const up = linear(g, mid.normed, `${p}.mlp.fc1`, { ...fc1, bias: undefined });
    const h = g.op(
      'BiasGelu',
      [up, computeWeight(g, `${p}.mlp.fc1.bias`, [fc1.outFeatures], fc1.bias!)],
      {},
      { ...MS, name: `${p}.mlp.act` },
    );
    const fc2 = await linearFrom(vit, `${p}.mlp.fc2`);
    const down = linear(g, h, `${p}.mlp.fc2`, { ...fc2, bias: undefined });
    const next: Norm = i + 1 < shape.depth ? await blockNorm(spec, `blocks.${i + 1}.norm1`) : { key: 'ln_vision', ...spec.lnVision };
    const end = await skipNorm(g, down, { name: `${p}.mlp.fc2.bias`, data: fc2.bias! }, `${p}.gamma_2`, mid.sum, next, spec);
    normed = end.normed;
    residual = end.sum;
  }
  return normed;
}
