// Weight types of a package (`minigpt convert --dtype`): how the Linear weights, the token embedding table and
// the patch-embedding convolution are stored, and the graph fragment that turns them back into a float32
// product. Graph inputs and outputs (pixel values, embeddings, logits, the KV cache) stay float32 for every
// type, so the runtime is the same for all packages.
//
// - fp32: Linear -> MatMul on the transposed float32 weight (the reference graph).
// - fp16: weights stored as float16 and Cast to float32 in front of the MatMul; everything is computed in
//   float32. This halves the files on disk. It is a deliberate choice for the CPU provider, whose float16
//   MatMul/LayerNorm kernels are missing or slow on x86: a graph computing in float16 would be partitioned
//   into float32 islands with casts around every op. onnxruntime folds the weight Casts once at load, so in
//   memory the Linear weights are float32 again; the embedding table is gathered in float16 and only the
//   gathered rows are cast, so it stays half size in memory too. A full-float16 graph (float16 activations
//   and KV cache) would be faster on CUDA/WebGPU, but would change the runtime's I/O types; that is left to
//   a GPU-specific package.
// - int8 / int4: Linear -> com.microsoft MatMulNBits (bits 8 / 4), weights quantised block-wise along K
//   (the input features) per output row, symmetric, no zero-point input (onnxruntime's default zero point
//   2^(bits-1): 128 / 8), float32 scales. onnxruntime's CPU provider runs both bit widths (checked in
//   test/convert/dtypes.test.ts) and keeps the packed weights packed in memory. The scale follows
//   onnxruntime's own symmetric block quantiser (blockwise_quant range2scale): the block value of largest
//   magnitude, signed, divided by -2^(bits-1), so that value maps exactly onto the code 0 and all
//   2^bits codes are used. The token embedding table is stored as float16 (Gather cannot read MatMulNBits
//   blobs); norms, biases, position embeddings, query tokens and rotary tables stay float32.
import type { GraphBuilder } from './onnx/builder.js';
import { DataType } from './onnx/builder.js';

// The weight types and their settings live in weight-format.ts (the graph builder needs them without this file).
export * from './weight-format.js';
import { ACCURACY_LEVELS, type AccuracyLevel, type WeightDType, type WeightFormat } from './weight-format.js';

export function checkAccuracyLevel(level: number): asserts level is AccuracyLevel {
  if (!ACCURACY_LEVELS.includes(level as AccuracyLevel)) {
    throw new Error(`accuracy level ${level}: MatMulNBits takes 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8)`);
  }
}

export function quantBits(dtype: WeightDType): 4 | 8 | null {
  return dtype === 'int4' ? 4 : dtype === 'int8' ? 8 : null;
}

export function checkBlockSize(blockSize: number): void {
  if (!Number.isInteger(blockSize) || blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) {
    throw new Error(`block size ${blockSize}: MatMulNBits needs a power of two >= 16 (16, 32, 64, 128, ...)`);
  }
}

/** What model.json records about the weight storage (see `weights` in src/inference/package.ts). */
export function describeWeights(format: WeightFormat) {
  const bits = quantBits(format.dtype);
  return {
    linear: ({ fp32: 'float32', fp16: 'float16', int8: 'int8', int4: 'int4' } as const)[format.dtype],
    embeddings: format.dtype === 'fp32' ? ('float32' as const) : ('float16' as const),
    ...(bits
      ? {
          quantization: {
            op: 'com.microsoft.MatMulNBits' as const,
            bits,
            blockSize: format.blockSize,
            symmetric: true,
            zeroPoint: 1 << (bits - 1),
            scales: 'float32' as const,
            accuracyLevel: format.accuracyLevel,
          },
        }
      : {}),
  };
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE float32 -> float16 bits, round to nearest even (subnormals, overflow to inf, NaN kept). */
export function floatToHalf(v: number): number {
  f32[0] = v;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // a carry out of the mantissa moves into the exponent, which is exactly the rounded value (or inf)
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

export function toFloat16(data: Float32Array): Uint16Array {
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = floatToHalf(data[i]);
  return out;
}

export interface BlockQuantized {
  /** [N, nBlocks, blobSize] uint8, codes packed along K, low bits first */
  packed: Uint8Array;
  /** [N, nBlocks] */
  scales: Float32Array;
  nBlocks: number;
  blobSize: number;
}

/**
 * Symmetric block-wise quantisation of a torch Linear weight `w` [N = out, K = in] for MatMulNBits: per
 * output row, blocks of `blockSize` along K (the last one padded with zeros), code = round(w / scale) +
 * 2^(bits-1) clamped to [0, 2^bits - 1]; 4-bit codes two per byte, the first in the low nibble.
 */
export function quantizeBlockwise(w: Float32Array, N: number, K: number, bits: 4 | 8, blockSize: number): BlockQuantized {
  checkBlockSize(blockSize);
  if (w.length !== N * K) throw new Error(`weight has ${w.length} values, expected ${N} x ${K}`);
  const nBlocks = Math.ceil(K / blockSize);
  const blobSize = (blockSize * bits) / 8;
  const packed = new Uint8Array(N * nBlocks * blobSize);
  const scales = new Float32Array(N * nBlocks);
  const mid = 1 << (bits - 1);
  const maxCode = (1 << bits) - 1;
  const codes = new Uint8Array(blockSize);
  for (let n = 0; n < N; n++) {
    const row = n * K;
    for (let b = 0; b < nBlocks; b++) {
      const k0 = b * blockSize;
      const k1 = Math.min(K, k0 + blockSize);
      let extreme = 0;
      for (let k = k0; k < k1; k++) if (Math.abs(w[row + k]) > Math.abs(extreme)) extreme = w[row + k];
      const scale = extreme === 0 ? 0 : Math.fround(extreme / -mid);
      scales[n * nBlocks + b] = scale;
      for (let i = 0; i < blockSize; i++) {
        const k = k0 + i;
        const q = k < k1 && scale !== 0 ? Math.round(w[row + k] / scale) + mid : mid;
        codes[i] = q < 0 ? 0 : Math.min(q, maxCode);
      }
      const out = (n * nBlocks + b) * blobSize;
      if (bits === 8) packed.set(codes, out);
      else for (let i = 0; i < blockSize; i += 2) packed[out + i / 2] = codes[i] | (codes[i + 1] << 4);
    }
  }
  return { packed, scales, nBlocks, blobSize };
}

/** The float weight [N, K] a MatMulNBits node computes with (for tests and error estimates). */
export function dequantizeBlockwise(q: BlockQuantized, N: number, K: number, bits: 4 | 8, blockSize: number): Float32Array {
  const w = new Float32Array(N * K);
  const mid = 1 << (bits - 1);
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) {
      const b = Math.floor(k / blockSize);
      const i = k % blockSize;
      const at = (n * q.nBlocks + b) * q.blobSize;
      const code = bits === 8 ? q.packed[at + i] : (q.packed[at + (i >> 1)] >> ((i & 1) * 4)) & 0xf;
      w[n * K + k] = (code - mid) * q.scales[n * q.nBlocks + b];
    }
  }
  return w;
}

/** torch Linear weight [out, in] -> the [in, out] matrix ONNX MatMul wants. */
export function transpose2d(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = w[base + c];
  }
  return out;
}

/**
 * x [..., in] times a torch Linear weight [out, in] (no bias), stored as `g.weights` says. The fp32 graph is
 * exactly the reference one (initializer `<name>.weight` [in, out], one MatMul).
 */
export function weightMatMul(
  g: GraphBuilder,
  x: string,
  name: string,
  weight: Float32Array,
  outFeatures: number,
  inFeatures: number,
): string {
  const { dtype, blockSize, accuracyLevel } = g.weights;
  const bits = quantBits(dtype);
  if (bits) {
    const q = quantizeBlockwise(weight, outFeatures, inFeatures, bits, blockSize);
    const b = g.weight(`${name}.weight_q${bits}`, [outFeatures, q.nBlocks, q.blobSize], q.packed, DataType.UINT8);
    // MatMulNBits takes its scales in the activations' type
    const s =
      g.compute === 'float16'
        ? g.weight(`${name}.weight_scales`, [outFeatures, q.nBlocks], toFloat16(q.scales), DataType.FLOAT16)
        : g.weight(`${name}.weight_scales`, [outFeatures, q.nBlocks], q.scales);
    const attrs = {
      K: inFeatures,
      N: outFeatures,
      bits,
      block_size: blockSize,
      ...(accuracyLevel ? { accuracy_level: accuracyLevel } : {}),
    };
    return g.op('MatMulNBits', [x, b, s], attrs, { domain: 'com.microsoft', name: `${name}.matmul` });
  }
  const wt = transpose2d(weight, outFeatures, inFeatures);
  if (dtype === 'fp16') {
    const half = g.weight(`${name}.weight_fp16`, [inFeatures, outFeatures], toFloat16(wt), DataType.FLOAT16);
    if (g.compute === 'float16') return g.op('MatMul', [x, half], {}, { name: `${name}.matmul` });
    const w32 = g.op('Cast', [half], { to: DataType.FLOAT }, { name: `${name}.weight_cast` });
    return g.op('MatMul', [x, w32], {}, { name: `${name}.matmul` });
  }
  if (g.compute === 'float16') throw new Error('float16 compute needs float16 or quantised weights (--dtype fp16, int8 or int4)');
  return g.op('MatMul', [x, g.weight(`${name}.weight`, [inFeatures, outFeatures], wt)], {}, { name: `${name}.matmul` });
}

/** A large non-Linear weight (the patch-embedding convolution): float16 + Cast unless the package is fp32. */
export function storedWeight(g: GraphBuilder, name: string, dims: number[], data: Float32Array): string {
  if (g.weights.dtype === 'fp32') return g.weight(name, dims, data);
  const half = g.weight(`${name}_fp16`, dims, toFloat16(data), DataType.FLOAT16);
  if (g.compute === 'float16') return half;
  return g.op('Cast', [half], { to: DataType.FLOAT }, { name: `${name}.cast` });
}

/** Rows of an embedding table [rows, width] gathered by `ids`; float16 table (cast after the Gather) unless fp32. */
export function embeddingLookup(
  g: GraphBuilder,
  name: string,
  table: Float32Array,
  dims: [number, number],
  ids: string,
  nodeName: string,
): string {
  if (g.weights.dtype === 'fp32') return g.op('Gather', [g.weight(name, dims, table), ids], { axis: 0 }, { name: nodeName });
  const half = g.weight(`${name}_fp16`, dims, toFloat16(table), DataType.FLOAT16);
  const rows = g.op('Gather', [half, ids], { axis: 0 }, { name: `${nodeName}.fp16` });
  return g.op('Cast', [rows], { to: DataType.FLOAT }, { name: nodeName });
}
