// A random tensor: its entry in a checkpoint's plan (name, shape, storage type, how its values are drawn) and
// its values. Values are deterministic: every tensor has its own seeded stream (seed, file, name), so any one
// tensor can be regenerated without the others, and data is yielded chunk by chunk (memory stays at one chunk).
import { floatToHalf as floatToHalfBits } from '../quantize.js';
import type { StorageDType } from '../readers/types.js';
import { tensorByteLength, type TensorChunk, type TensorSpec } from '../writers/index.js';

export type RandomDType = 'fp32' | 'fp16';

/** How a tensor's values are drawn. */
export type RandomInit =
  | { kind: 'normal'; std: number }
  /** 1 + std * N(0,1): norm weights */
  | { kind: 'ones'; std: number }
  /** Llama rotary inverse frequencies 1 / theta^(2j/headDim) (a buffer, not random) */
  | { kind: 'invFreq'; headDim: number; theta: number };

export interface RandomTensor extends TensorSpec {
  /** which file the tensor belongs to (part of its seed) */
  file: 'vit' | 'llm' | 'ckpt';
  init: RandomInit;
}

const STD = 0.02;
/** a weight matrix or bias: N(0, 0.02^2), the Llama / EVA initialiser's scale */
export const WEIGHT_INIT: RandomInit = { kind: 'normal', std: STD };
/** a norm's scale (RMSNorm, LayerNorm): near 1, so activations keep their size through the random layers */
export const NORM_INIT: RandomInit = { kind: 'ones', std: STD };

export function storageDType(d: RandomDType): StorageDType {
  return d === 'fp16' ? 'F16' : 'F32';
}

/** Inverse of the standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9). */
function normalQuantile(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const dd = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (
      (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((dd[0] * q + dd[1]) * q + dd[2]) * q + dd[3]) * q + 1)
    );
  }
  if (p > 1 - lo) return -normalQuantile(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return (
    ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
  );
}

let quantiles: Float64Array | undefined;
/** the 65536 equiprobable N(0,1) levels: Phi^-1((k + 0.5) / 65536) */
function standardLevels(): Float64Array {
  if (!quantiles) {
    quantiles = new Float64Array(65536);
    for (let k = 0; k < 65536; k++) quantiles[k] = normalQuantile((k + 0.5) / 65536);
  }
  return quantiles;
}

const tables = new Map<string, Float32Array | Uint16Array>();
/** value table indexed by a 16-bit random draw, in the storage type */
function valueTable(init: { kind: 'normal' | 'ones'; std: number }, dtype: StorageDType): Float32Array | Uint16Array {
  const key = `${init.kind}:${init.std}:${dtype}`;
  let t = tables.get(key);
  if (!t) {
    const q = standardLevels();
    const base = init.kind === 'ones' ? 1 : 0;
    if (dtype === 'F16') {
      const h = new Uint16Array(65536);
      for (let k = 0; k < 65536; k++) h[k] = floatToHalfBits(base + init.std * q[k]);
      t = h;
    } else {
      t = Float32Array.from(q, (z) => base + init.std * z);
    }
    tables.set(key, t);
  }
  return t;
}

/** 32-bit FNV-1a of a string, then mixed (murmur3 finaliser). */
function hash32(s: string, h = 0x811c9dc5): number {
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The seed of one tensor's stream. */
export function tensorSeed(seed: number, t: Pick<RandomTensor, 'file' | 'name'>): number {
  return hash32(`${t.file}/${t.name}`, hash32(String(seed >>> 0)));
}

/** Elements per yielded chunk (4 Mi elements: 8 or 16 MB). */
const CHUNK_ELEMS = 1 << 22;

/**
 * The raw little-endian bytes of a random tensor, chunk by chunk. Each element is a table value picked by
 * 16 bits of a mulberry32 stream (two elements per 32-bit draw), so generation is cheap and exact to repeat.
 */
export function* randomTensorChunks(seed: number, t: RandomTensor, chunkElems = CHUNK_ELEMS): Generator<TensorChunk> {
  if (t.dtype !== 'F16' && t.dtype !== 'F32') throw new Error(`random tensors are F16 or F32, not ${t.dtype}`);
  const numel = t.shape.reduce((a, b) => a * b, 1);
  const init = t.init;
  if (init.kind === 'invFreq') {
    const v = Array.from({ length: numel }, (_, j) => 1 / init.theta ** ((2 * j) / init.headDim));
    const data = t.dtype === 'F16' ? Uint16Array.from(v, floatToHalfBits) : Float32Array.from(v);
    yield { name: t.name, data };
    return;
  }
  const table = valueTable(init, t.dtype);
  let state = tensorSeed(seed, t);
  const size = Math.min(chunkElems + (chunkElems & 1), numel + (numel & 1));
  const buf = t.dtype === 'F16' ? new Uint16Array(size) : new Float32Array(size);
  for (let done = 0; done < numel; ) {
    const n = Math.min(size, numel - done);
    for (let i = 0; i < n; i += 2) {
      // mulberry32
      state = (state + 0x6d2b79f5) | 0;
      let z = state;
      z = Math.imul(z ^ (z >>> 15), z | 1);
      z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
      z = (z ^ (z >>> 14)) >>> 0;
      buf[i] = table[z & 0xffff];
      buf[i + 1] = table[z >>> 16];
    }
    done += n;
    // the buffer is reused for the next chunk: the writer consumes each chunk before asking for the next
    yield { name: t.name, data: buf.subarray(0, n) };
  }
}

/** One tensor's whole raw bytes (tests; the writers use randomTensorChunks). */
export function randomTensorBytes(seed: number, t: RandomTensor): Uint8Array {
  const out = new Uint8Array(tensorByteLength(t));
  let o = 0;
  for (const c of randomTensorChunks(seed, t)) {
    out.set(new Uint8Array(c.data.buffer, c.data.byteOffset, c.data.byteLength), o);
    o += c.data.byteLength;
  }
  return out;
}

/** Every tensor's chunks in turn: what a writer consumes for one file. */
export function* streamOf(seed: number, tensors: readonly RandomTensor[]): Generator<TensorChunk> {
  for (const t of tensors) yield* randomTensorChunks(seed, t);
}
