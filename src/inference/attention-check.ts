// A fused decoder's attention is onnxruntime's MultiHeadAttention, and its kernel differs by provider and by
// the number of query positions in a run: on WebGPU a prefill of 32 positions or more goes through a
// flash-attention shader whose results, on Mesa's lavapipe, are off by up to ~1e-2 in float32 while shorter
// runs and decoding steps are exact (docs/gpu.md). Whether a given adapter does the same is not something to
// assume either way, so it is measured when the model loads: one MultiHeadAttention node, the model's heads
// and head size, run on the decoder's provider against a float64 reference computed here. The result says how
// many positions a run may take; the decoder runs longer prompts in chunks of that size
// (DecoderOptions.maxRunPositions).
import type * as ort from 'onnxruntime-node';
import { Tensor } from 'onnxruntime-node';
import { type ComputeType, GraphBuilder } from '../convert/onnx/builder.js';
import { lowestFinite } from '../convert/graphs/precision.js';
import { toFloat16 } from '../convert/quantize.js';
import { halfToFloat } from '../convert/readers/types.js';

/** One run of the check: query positions, past positions before them, largest difference from the reference. */
export interface AttentionProbe {
  positions: number;
  past: number;
  error: number;
}

export interface AttentionCheck {
  /** the most query positions one run may take and stay within `tolerance`; null: the longest runs tried were */
  maxRunPositions: number | null;
  /** whether the chosen length (or every length, when null) was within `tolerance` */
  exact: boolean;
  tolerance: number;
  probes: AttentionProbe[];
}

export interface AttentionShape {
  heads: number;
  headDim: number;
  /** the decoder's compute type (model.json `compute`): its attention runs in it (default float32) */
  dtype?: ComputeType;
}

/**
 * Largest difference allowed, by compute type, for inputs of magnitude ~1. Exact float32 kernels differ by ~1e-7
 * (summation order); float16 ones by up to ~2.4e-4 on the CPU and ~8.5e-4 on WebGPU (lavapipe, accumulating in
 * float16). The lavapipe flash kernel is off by 1e-2 to 5e-2 in either type.
 */
export const ATTENTION_TOLERANCE = { float32: 1e-4, float16: 4e-3 } as const;

/** Past positions before the query in the probes that have one (so that the kernel concatenates a past). */
const PAST = 40;
/** Lengths tried when the long runs fail, longest first; 31 is the longest below WebGPU's flash path. */
const FALLBACKS = [31, 16, 8, 4, 2, 1];

/** One MultiHeadAttention node as the fused decoder uses it: causal bias, past key/value in, present out. */
export function attentionGraph(shape: AttentionShape): Uint8Array {
  const { heads, headDim } = shape;
  const dtype = shape.dtype ?? 'float32';
  const hidden = heads * headDim;
  const g = new GraphBuilder('attention_check');
  const q = g.input('query', dtype, [1, 'sequence_length', hidden]);
  const k = g.input('key', dtype, [1, 'sequence_length', hidden]);
  const v = g.input('value', dtype, [1, 'sequence_length', hidden]);
  const bias = g.input('attention_bias', dtype, [1, 1, 'sequence_length', 'total_sequence_length']);
  const pastK = g.input('past_key', dtype, [1, heads, 'past_sequence_length', headDim]);
  const pastV = g.input('past_value', dtype, [1, heads, 'past_sequence_length', headDim]);
  const [out] = g.opMulti(
    'MultiHeadAttention',
    [q, k, v, '', '', bias, pastK, pastV],
    { num_heads: heads, scale: { float: 1 / Math.sqrt(headDim) } },
    { domain: 'com.microsoft', count: 3, name: 'mha' },
  );
  g.output(out, 'output', dtype, [1, 'sequence_length', hidden]);
  return g.encode();
}

/** Deterministic inputs in [-1, 1) (a linear congruential sequence: the check must not vary from run to run). */
function inputs(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

interface ProbeInputs {
  S: number;
  P: number;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  pastK: Float32Array;
  pastV: Float32Array;
}

/**
 * softmax(q k^T / sqrt(headDim)) v in float64, per head, over the past then the new positions; query i sees
 * keys up to P + i (the causal bias). q, k, v: [S, heads * headDim]; past: [heads, P, headDim].
 */
export function referenceAttention(x: ProbeInputs, shape: AttentionShape): Float64Array {
  const { heads, headDim } = shape;
  const { S, P } = x;
  const hidden = heads * headDim;
  const out = new Float64Array(S * hidden);
  const scale = 1 / Math.sqrt(headDim);
  const scores = new Float64Array(P + S);
  const key = (h: number, j: number, d: number) => (j < P ? x.pastK[(h * P + j) * headDim + d] : x.k[(j - P) * hidden + h * headDim + d]);
  const value = (h: number, j: number, d: number) => (j < P ? x.pastV[(h * P + j) * headDim + d] : x.v[(j - P) * hidden + h * headDim + d]);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < S; i++) {
      const seen = P + i + 1;
      let max = Number.NEGATIVE_INFINITY;
      for (let j = 0; j < seen; j++) {
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += x.q[i * hidden + h * headDim + d] * key(h, j, d);
        scores[j] = dot * scale;
        if (scores[j] > max) max = scores[j];
      }
      let sum = 0;
      for (let j = 0; j < seen; j++) {
        scores[j] = Math.exp(scores[j] - max);
        sum += scores[j];
      }
      for (let d = 0; d < headDim; d++) {
        let acc = 0;
        for (let j = 0; j < seen; j++) acc += scores[j] * value(h, j, d);
        out[i * hidden + h * headDim + d] = acc / sum;
      }
    }
  }
  return out;
}

async function probe(session: ort.InferenceSession, shape: AttentionShape, S: number, P: number): Promise<AttentionProbe> {
  const { heads, headDim } = shape;
  const dtype = shape.dtype ?? 'float32';
  const hidden = heads * headDim;
  // (float16 inputs are rounded first, and the reference computed from the rounded values)
  const values = (n: number, seed: number) => (dtype === 'float16' ? rounded16(inputs(n, seed)) : inputs(n, seed));
  const x: ProbeInputs = {
    S,
    P,
    q: values(S * hidden, 1 + S * 7919 + P),
    k: values(S * hidden, 2 + S * 7919 + P),
    v: values(S * hidden, 3 + S * 7919 + P),
    pastK: values(heads * P * headDim, 4 + S * 7919 + P),
    pastV: values(heads * P * headDim, 5 + S * 7919 + P),
  };
  const T = P + S;
  const bias = new Float32Array(S * T);
  // masked positions hold what the fused decoder's attention_bias holds there (llama-fused.ts: computeMin)
  for (let i = 0; i < S; i++) bias.fill(lowestFinite(dtype), i * T + P + i + 1, (i + 1) * T);
  const tensor = (data: Float32Array, dims: number[]) =>
    dtype === 'float16' ? new Tensor('float16', toFloat16(data), dims) : new Tensor('float32', data, dims);
  const feeds = {
    query: tensor(x.q, [1, S, hidden]),
    key: tensor(x.k, [1, S, hidden]),
    value: tensor(x.v, [1, S, hidden]),
    attention_bias: tensor(bias, [1, 1, S, T]),
    past_key: tensor(x.pastK, [1, heads, P, headDim]),
    past_value: tensor(x.pastV, [1, heads, P, headDim]),
  };
  const out = await session.run(feeds, ['output']);
  const data = out.output.data as Float32Array | Uint16Array;
  const got = data instanceof Uint16Array ? Float32Array.from(data, halfToFloat) : data;
  const want = referenceAttention(x, shape);
  let error = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    if (!(e <= error)) error = Number.isNaN(e) ? Number.POSITIVE_INFINITY : e;
  }
  out.output.dispose();
  return { positions: S, past: P, error };
}

function rounded16(data: Float32Array): Float32Array {
  return Float32Array.from(toFloat16(data), halfToFloat);
}

/**
 * Runs attentionGraph's `session` (opened on the provider to check) on runs of 64 positions and of 32 after a
 * past; if either is off, on shorter runs (FALLBACKS) until one length is within `tolerance` with and without a
 * past. Each probe is one small run (64 positions at 32 heads of 128: ~1 MB of inputs).
 */
export async function checkAttention(
  session: ort.InferenceSession,
  shape: AttentionShape,
  tolerance: number = ATTENTION_TOLERANCE[shape.dtype ?? 'float32'],
): Promise<AttentionCheck> {
  const probes: AttentionProbe[] = [];
  const within = async (runs: [number, number][]) => {
    let ok = true;
    for (const [S, P] of runs) {
      const p = await probe(session, shape, S, P);
      probes.push(p);
      if (!(p.error <= tolerance)) ok = false;
    }
    return ok;
  };
  if (
    await within([
      [64, 0],
      [32, PAST],
    ])
  ) {
    return { maxRunPositions: null, exact: true, tolerance, probes };
  }
  for (const n of FALLBACKS) {
    if (
      await within([
        [n, 0],
        [n, PAST],
      ])
    ) {
      return { maxRunPositions: n, exact: true, tolerance, probes };
    }
  }
  return { maxRunPositions: 1, exact: false, tolerance, probes };
}

/** One line for the log: what was measured and what the decoder does about it. */
export function describeAttentionCheck(check: AttentionCheck, provider: string): string {
  const worst = (ps: AttentionProbe[]) => Math.max(...ps.map((p) => p.error)).toExponential(1);
  if (check.maxRunPositions === null) return `${provider}: MultiHeadAttention exact on this adapter (largest error ${worst(check.probes)})`;
  const failed = check.probes.filter((p) => !(p.error <= check.tolerance));
  const shortest = Math.min(...failed.map((p) => p.positions));
  const how = check.exact
    ? `prompts run in chunks of ${check.maxRunPositions} positions`
    : 'even single positions are off: answers may be wrong; convert the package without --fused';
  return `${provider}: MultiHeadAttention is off by up to ${worst(failed)} on runs of ${shortest}+ positions on this adapter: ${how}`;
}
