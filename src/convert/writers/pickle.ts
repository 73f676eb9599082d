// The pickle torch.save writes for a state dict (protocol 2): OrderedDict() filled with SETITEMS, each tensor
// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`, each storage a
// persistent id `('storage', torch.<Type>Storage, key, 'cpu', numel)`.
import { CheckpointError } from '../readers/errors.js';
import type { StorageDType } from '../readers/types.js';

export const STORAGE_CLASS: Readonly<Record<StorageDType, string>> = {
  F32: 'FloatStorage',
  F16: 'HalfStorage',
  BF16: 'BFloat16Storage',
  F64: 'DoubleStorage',
  I64: 'LongStorage',
  I32: 'IntStorage',
  I16: 'ShortStorage',
  I8: 'CharStorage',
  U8: 'ByteStorage',
  BOOL: 'BoolStorage',
};

/** A value that may sit next to the state dict in a wrapped checkpoint (e.g. `epoch`). */
export type PickleScalar = number | bigint | string | boolean | null;

const enc = new TextEncoder();
/** Python pickles dict items in batches of this many SETITEMS */
const BATCH = 1000;

/** Minimal protocol-2 pickler: emits opcodes into a growable buffer, memoising globals like Python does. */
export class Pickler {
  private buf = new Uint8Array(1 << 16);
  private len = 0;
  private readonly memo = new Map<string, number>();
  private nextMemo = 0;

  constructor() {
    this.op(0x80, 2); // PROTO 2
  }

  private ensure(n: number): void {
    if (this.len + n <= this.buf.byteLength) return;
    let size = this.buf.byteLength * 2;
    while (size < this.len + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
  }

  op(...bytes: number[]): this {
    this.ensure(bytes.length);
    for (const b of bytes) this.buf[this.len++] = b;
    return this;
  }

  private raw(b: Uint8Array): this {
    this.ensure(b.byteLength);
    this.buf.set(b, this.len);
    this.len += b.byteLength;
    return this;
  }

  private u32(v: number): this {
    return this.op(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  }

  private put(): number {
    const id = this.nextMemo++;
    if (id < 256)
      this.op(0x71, id); // BINPUT
    else this.op(0x72).u32(id); // LONG_BINPUT
    return id;
  }

  private get(id: number): this {
    return id < 256 ? this.op(0x68, id) : this.op(0x6a).u32(id); // BINGET / LONG_BINGET
  }

  mark(): this {
    return this.op(0x28);
  }

  /** GLOBAL 'module\nname\n', memoised (a later use is a BINGET). */
  global(module: string, name: string): this {
    const key = `${module}\n${name}`;
    const id = this.memo.get(key);
    if (id !== undefined) return this.get(id);
    this.op(0x63).raw(enc.encode(`${module}\n${name}\n`));
    this.memo.set(key, this.put());
    return this;
  }

  str(s: string): this {
    const b = enc.encode(s);
    return this.op(0x58).u32(b.byteLength).raw(b); // BINUNICODE
  }

  int(v: number | bigint): this {
    if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new CheckpointError(`cannot pickle ${v} as an integer`);
    const n = BigInt(v);
    if (n >= 0n && n < 256n) return this.op(0x4b, Number(n)); // BININT1
    if (n >= 0n && n < 65536n) return this.op(0x4d, Number(n) & 0xff, Number(n) >> 8); // BININT2
    if (n >= -(2n ** 31n) && n < 2n ** 31n) return this.op(0x4a).u32(Number(BigInt.asUintN(32, n))); // BININT
    // LONG1: minimal two's complement, little-endian
    const bytes: number[] = [];
    let x = n;
    while (true) {
      const b = Number(BigInt.asUintN(8, x));
      bytes.push(b);
      x >>= 8n;
      if ((x === 0n && (b & 0x80) === 0) || (x === -1n && (b & 0x80) !== 0)) break;
    }
    return this.op(0x8a, bytes.length, ...bytes);
  }

  float(v: number): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, false);
    return this.op(0x47).raw(b); // BINFLOAT (big-endian)
  }

  scalar(v: PickleScalar): this {
    if (v === null) return this.op(0x4e); // NONE
    if (typeof v === 'boolean') return this.op(v ? 0x88 : 0x89);
    if (typeof v === 'string') return this.str(v);
    if (typeof v === 'bigint' || Number.isInteger(v)) return this.int(v);
    return this.float(v);
  }

  /** A tuple of ints, with TUPLE1/2/3 for the short ones as Python does. */
  intTuple(items: readonly number[]): this {
    if (items.length === 0) return this.op(0x29);
    if (items.length <= 3) {
      for (const i of items) this.int(i);
      return this.op([0x85, 0x86, 0x87][items.length - 1]);
    }
    this.mark();
    for (const i of items) this.int(i);
    return this.op(0x74);
  }

  /** `collections.OrderedDict()` */
  orderedDict(): this {
    return this.global('collections', 'OrderedDict').op(0x29, 0x52); // EMPTY_TUPLE, REDUCE
  }

  /** `_rebuild_tensor_v2(<persistent storage>, 0, shape, contiguous stride, False, OrderedDict())` */
  tensor(dtype: StorageDType, key: string, shape: readonly number[]): this {
    const numel = shape.reduce((a, b) => a * b, 1);
    const stride: number[] = new Array<number>(shape.length);
    let s = 1;
    for (let i = shape.length - 1; i >= 0; i--) {
      stride[i] = s;
      s *= shape[i];
    }
    this.global('torch._utils', '_rebuild_tensor_v2').mark();
    this.mark().str('storage').global('torch', STORAGE_CLASS[dtype]).str(key).str('cpu').int(numel).op(0x74, 0x51); // TUPLE, BINPERSID
    this.int(0).intTuple(shape).intTuple(stride).op(0x89).orderedDict();
    return this.op(0x74, 0x52); // TUPLE, REDUCE
  }

  /** SETITEMS in batches of 1000 (the dict is on the stack) */
  items<T>(list: readonly T[], emit: (item: T) => void): this {
    for (let i = 0; i < list.length; i += BATCH) {
      const batch = list.slice(i, i + BATCH);
      if (batch.length === 1) {
        emit(batch[0]);
        this.op(0x73); // SETITEM
      } else {
        this.mark();
        for (const it of batch) emit(it);
        this.op(0x75); // SETITEMS
      }
    }
    return this;
  }

  stop(): Uint8Array {
    this.op(0x2e);
    return this.buf.slice(0, this.len);
  }
}

const STATE = Symbol('state_dict');

export interface StateDictPickleOptions {
  /** `{wrap: state_dict, ...extras}` instead of the bare state dict (MiniGPT checkpoints use 'model') */
  wrap?: string;
  extras?: Readonly<Record<string, PickleScalar>>;
}

/** data.pkl for a state dict of `tensors` (storage keys '0', '1', ... in order, one storage per tensor). */
export function stateDictPickle(
  tensors: readonly { name: string; dtype: StorageDType; shape: readonly number[] }[],
  opts: StateDictPickleOptions = {},
): Uint8Array {
  const p = new Pickler();
  const emitStateDict = () => {
    p.orderedDict();
    p.items(
      tensors.map((t, i) => ({ t, key: String(i) })),
      ({ t, key }) => {
        p.str(t.name);
        p.tensor(t.dtype, key, t.shape);
      },
    );
  };
  if (opts.wrap === undefined) {
    if (opts.extras && Object.keys(opts.extras).length > 0) throw new CheckpointError('extras need a wrapped checkpoint (wrap)');
    emitStateDict();
  } else {
    const entries: Array<[string, PickleScalar | typeof STATE]> = [[opts.wrap, STATE]];
    for (const [k, v] of Object.entries(opts.extras ?? {})) {
      if (k === opts.wrap) throw new CheckpointError(`extra '${k}' collides with the wrapped state dict`);
      entries.push([k, v]);
    }
    p.op(0x7d); // EMPTY_DICT
    p.items(entries, ([k, v]) => {
      p.str(k);
      if (v === STATE) emitStateDict();
      else p.scalar(v);
    });
  }
  return p.stop();
}
