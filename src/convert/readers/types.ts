import { endianness } from 'node:os';
import { CheckpointError } from './errors.js';

export type StorageDType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export interface TensorInfo {
  name: string;
  dtype: StorageDType;
  shape: number[];
}

export interface TensorSource {
  /** every tensor in the file(s), in file order */
  list(): TensorInfo[];
  has(name: string): boolean;
  /** throws a CheckpointError naming the missing key and the file */
  info(name: string): TensorInfo;
  /** reads one tensor and converts float storages (F32/F16/BF16/F64) to a fresh Float32Array, C-order, honouring torch strides/storage offsets */
  readFloat32(name: string): Promise<Float32Array>;
  /** raw little-endian bytes of the tensor in its storage dtype, contiguous C order */
  readRaw(name: string): Promise<Uint8Array>;
  close(): Promise<void>;
  /** files this source reads (for provenance/sha256) */
  readonly files: string[];
}

export const DTYPE_ITEMSIZE: Readonly<Record<StorageDType, number>> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  F64: 8,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

const FLOAT_DTYPES: ReadonlySet<StorageDType> = new Set<StorageDType>(['F32', 'F16', 'BF16', 'F64']);

export function isFloatDType(dtype: StorageDType): boolean {
  return FLOAT_DTYPES.has(dtype);
}

export function isStorageDType(s: unknown): s is StorageDType {
  return typeof s === 'string' && Object.hasOwn(DTYPE_ITEMSIZE, s);
}

/** Product of a shape; throws when a dimension is not a non-negative safe integer or the product overflows. */
export function numelOf(shape: readonly number[], what: string): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new CheckpointError(`${what}: invalid dimension ${String(d)} in shape [${shape.join(', ')}]`);
    }
    n *= d;
    if (!Number.isSafeInteger(n)) {
      throw new CheckpointError(`${what}: shape [${shape.join(', ')}] has too many elements`);
    }
  }
  return n;
}

let hostChecked = false;
function checkHostLittleEndian(): void {
  if (hostChecked) return;
  if (endianness() !== 'LE') {
    throw new CheckpointError('checkpoint readers require a little-endian host');
  }
  hostChecked = true;
}

/** A Uint8Array that owns its whole ArrayBuffer from byte 0 (so typed views over it are aligned and private). */
function owned(bytes: Uint8Array): Uint8Array {
  if (bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.byteLength && bytes.buffer instanceof ArrayBuffer) {
    return bytes;
  }
  return bytes.slice();
}

let halfTable: Float32Array | undefined;
function getHalfTable(): Float32Array {
  if (halfTable) return halfTable;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    let v: number;
    if (e === 0) v = sign * m * 2 ** -24;
    else if (e === 31) v = m ? NaN : sign * Infinity;
    else v = sign * (1 + m / 1024) * 2 ** (e - 15);
    t[h] = v;
  }
  halfTable = t;
  return t;
}

/** Decodes one IEEE half-precision value (exposed for tests and callers that need it). */
export function halfToFloat(h: number): number {
  return getHalfTable()[h & 0xffff];
}

/**
 * Converts raw little-endian storage bytes (contiguous) to a fresh Float32Array.
 * `bytes` may be consumed (its buffer reused) — pass a buffer you own.
 */
export function bytesToFloat32(bytes: Uint8Array, dtype: StorageDType, what: string): Float32Array {
  checkHostLittleEndian();
  const itemsize = DTYPE_ITEMSIZE[dtype];
  if (bytes.byteLength % itemsize !== 0) {
    throw new CheckpointError(`${what}: ${bytes.byteLength} bytes is not a multiple of the ${dtype} item size`);
  }
  const n = bytes.byteLength / itemsize;
  switch (dtype) {
    case 'F32': {
      const b = owned(bytes);
      return new Float32Array(b.buffer, 0, n);
    }
    case 'F16': {
      const b = owned(bytes);
      const src = new Uint16Array(b.buffer, 0, n);
      const table = getHalfTable();
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = table[src[i]];
      return out;
    }
    case 'BF16': {
      const b = owned(bytes);
      const src = new Uint16Array(b.buffer, 0, n);
      const out = new Uint32Array(n);
      for (let i = 0; i < n; i++) out[i] = src[i] << 16;
      return new Float32Array(out.buffer, 0, n);
    }
    case 'F64': {
      const b = owned(bytes);
      return Float32Array.from(new Float64Array(b.buffer, 0, n));
    }
    default:
      throw new CheckpointError(
        `${what}: readFloat32 needs a float tensor (F32/F16/BF16/F64) but the storage dtype is ${dtype}; use readRaw`,
      );
  }
}

/** Formats a short list of available names for "not found" errors. */
export function describeKeys(names: readonly string[], max = 5): string {
  if (names.length === 0) return 'it holds no tensors';
  const head = names
    .slice(0, max)
    .map((n) => `'${n}'`)
    .join(', ');
  return `it holds ${names.length} tensor${names.length === 1 ? '' : 's'}, e.g. ${head}${names.length > max ? ', ...' : ''}`;
}
