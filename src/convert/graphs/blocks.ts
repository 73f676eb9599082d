// Building blocks shared by the vision and language graphs: one small function per emitted block.
import type { GraphBuilder } from '../onnx/builder.js';
import type { TensorSource } from '../readers/index.js';
import { weightMatMul } from '../quantize.js';
import { computeScalar, computeWeight, toCompute, toFloat32 } from './precision.js';

export { transpose2d } from '../quantize.js';

export interface LinearWeights {
  /** torch layout [out, in] */
  weight: Float32Array;
  bias?: Float32Array;
  outFeatures: number;
  inFeatures: number;
}

/** y = x W^T + b: a MatMul on W stored transposed (fp32/fp16) or MatMulNBits (int8/int4), as `g.weights` says. */
export function linear(g: GraphBuilder, x: string, name: string, w: LinearWeights): string {
  const y = weightMatMul(g, x, name, w.weight, w.outFeatures, w.inFeatures);
  if (!w.bias) return y;
  const b = computeWeight(g, `${name}.bias`, [w.outFeatures], w.bias);
  return g.op('Add', [y, b], {}, { name: `${name}.bias_add` });
}

export function layerNorm(g: GraphBuilder, x: string, name: string, weight: Float32Array, bias: Float32Array, eps: number): string {
  const s = computeWeight(g, `${name}.weight`, [weight.length], weight);
  const b = computeWeight(g, `${name}.bias`, [bias.length], bias);
  // (statistics in float32 whatever x's type: stash_type's default)
  return g.op('LayerNormalization', [x, s, b], { axis: -1, epsilon: { float: eps } }, { name });
}

/**
 * Llama RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, normalised in fp32 as HF does; in float16 compute the
 * normalised x is cast back before the weight multiply (HF's `weight * hidden_states.to(input_dtype)`).
 */
export function rmsNorm(g: GraphBuilder, x: string, name: string, weight: Float32Array, eps: number): string {
  const normed = toCompute(g, rmsNormalize(g, toFloat32(g, x, `${name}.to_fp32`), name, eps), `${name}.to_fp16`);
  return g.op('Mul', [normed, computeWeight(g, `${name}.weight`, [weight.length], weight)], {}, { name: `${name}.weight_mul` });
}

/** x * rsqrt(mean(x^2) + eps), in float32. */
function rmsNormalize(g: GraphBuilder, x: string, name: string, eps: number): string {
  const sq = g.op('Mul', [x, x], {}, { name: `${name}.sq` });
  const mean = g.op('ReduceMean', [sq], { axes: [-1], keepdims: 1 }, { name: `${name}.mean` });
  const var_eps = g.op('Add', [mean, g.scalar(eps, `${name}.eps`)], {}, { name: `${name}.add_eps` });
  const inv = g.op('Reciprocal', [g.op('Sqrt', [var_eps], {}, { name: `${name}.sqrt` })], {}, { name: `${name}.rsqrt` });
  return g.op('Mul', [x, inv], {}, { name: `${name}.scale` });
}

/** Exact (erf) GELU, as torch nn.GELU() computes it. */
export function gelu(g: GraphBuilder, x: string, name: string): string {
  const scaled = g.op('Mul', [x, computeScalar(g, Math.SQRT1_2, `${name}.rsqrt2`)], {}, { name: `${name}.div_sqrt2` });
  const erf = g.op('Erf', [scaled], {}, { name: `${name}.erf` });
  const onePlus = g.op('Add', [erf, computeScalar(g, 1, `${name}.one`)], {}, { name: `${name}.one_plus` });
  const half = g.op('Mul', [x, computeScalar(g, 0.5, `${name}.half`)], {}, { name: `${name}.half_x` });
  return g.op('Mul', [half, onePlus], {}, { name });
}

export function silu(g: GraphBuilder, x: string, name: string): string {
  return g.op('Mul', [x, g.op('Sigmoid', [x], {}, { name: `${name}.sigmoid` })], {}, { name });
}

/** [B, T, heads*hd] -> [B, heads, T, hd] */
export function splitHeads(g: GraphBuilder, x: string, heads: number, headDim: number, name: string): string {
  const r = g.op('Reshape', [x, g.constInt64([0, 0, heads, headDim], [4], `${name}.shape`)], {}, { name: `${name}.reshape` });
  return g.op('Transpose', [r], { perm: [0, 2, 1, 3] }, { name: `${name}.transpose` });
}

/** [B, heads, T, hd] -> [B, T, heads*hd] */
export function mergeHeads(g: GraphBuilder, x: string, width: number, name: string): string {
  const t = g.op('Transpose', [x], { perm: [0, 2, 1, 3] }, { name: `${name}.transpose` });
  return g.op('Reshape', [t, g.constInt64([0, 0, width], [3], `${name}.shape`)], {}, { name: `${name}.reshape` });
}

/** A Linear's weights (and bias) as a checkpoint stores them under `prefix`. */
export async function linearFrom(src: TensorSource, prefix: string, bias = true): Promise<LinearWeights> {
  const info = src.info(`${prefix}.weight`);
  return {
    weight: await src.readFloat32(`${prefix}.weight`),
    bias: bias ? await src.readFloat32(`${prefix}.bias`) : undefined,
    outFeatures: info.shape[0],
    inFeatures: info.shape[1],
  };
}
