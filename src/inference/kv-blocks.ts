// The storage behind KvCache states: one kind of block per KvMode (decoder.ts), shared by the states over
// its rows, and the pool freed buffers go back to. Apart from KvCache because only the decoder and the
// step's row placement (step-batch.ts) reach into a block; the rest of the bot sees immutable states.
import * as ort from 'onnxruntime-node';

/** KV values as the session takes them: float32, or float16 (a decoder computing in float16) as raw bits. */
export type KvArray = Float32Array | Uint16Array;

/** The element type of a decoder's KV cache (its graph's `past_key_values.*` type). */
export interface KvType {
  readonly tensor: 'float32' | 'float16';
  readonly bytes: number;
  alloc(n: number): KvArray;
  /** the whole of `buffer` as this type */
  wrap(buffer: ArrayBufferLike): KvArray;
}

export const KV_FLOAT32: KvType = { tensor: 'float32', bytes: 4, alloc: (n) => new Float32Array(n), wrap: (b) => new Float32Array(b) };
// The runtime only moves KV values (copies rows, feeds them back): float16 needs no arithmetic in JS.
export const KV_FLOAT16: KvType = { tensor: 'float16', bytes: 2, alloc: (n) => new Uint16Array(n), wrap: (b) => new Uint16Array(b) };

export function kvType(tensorType: string): KvType {
  if (tensorType === 'float16') return KV_FLOAT16;
  if (tensorType === 'float32') return KV_FLOAT32;
  throw new Error(`a KV cache of ${tensorType} values is not supported (float32 or float16)`);
}

/** A KV tensor of `type` over `data` (no copy). */
export function kvTensor(type: KvType, data: KvArray, dims: readonly number[]): ort.Tensor {
  return type.tensor === 'float16'
    ? new ort.Tensor('float16', data as Uint16Array, dims)
    : new ort.Tensor('float32', data as Float32Array, dims);
}

/** True when any of the tensors is in device memory (JavaScript cannot read it; see kv-device.ts). */
export function onDevice(tensors: Record<string, ort.Tensor>): boolean {
  for (const t of Object.values(tensors)) if (t.location !== 'cpu') return true;
  return false;
}

/** Storage shared by the KvCache views over its rows; freed when the last view is disposed. */
export abstract class KvBlock {
  private refs = 0;

  constructor(readonly rows: number) {}

  get references(): number {
    return this.refs;
  }

  retain(): void {
    this.refs++;
  }

  release(): void {
    if (--this.refs === 0) this.free();
  }

  abstract get live(): boolean;
  /** bytes of key/value storage */
  abstract get allocated(): number;
  protected abstract free(): void;
}

/**
 * How a block's buffers are fed: as `names` (one per buffer, in the block's order), with `extra(rows)`
 * (the empty past when the buffers go in as the graph's cache).
 */
export interface BlockInputs {
  names: readonly string[];
  extra: (rows: number) => Record<string, ort.Tensor>;
}

export interface StepInputs {
  feeds: Record<string, ort.Tensor>;
  mask: { data: BigInt64Array; valid: Int32Array };
  x: Float32Array;
  positions: BigInt64Array;
  /** scratch: the length of each row's state this step */
  lengths: Int32Array;
}

/**
 * Buffers of freed KV storage, handed out again. Fresh memory is expensive at first touch (page faults:
 * about 70 ms for the 20 MB of one 300-position row of a Llama-2-7B-shaped 2-layer cache on the benchmark
 * machine, against 1.2 ms to copy it into memory already touched), and batches are made and grown all the
 * time. Reused buffers hold stale (finite) cache values where nothing was written yet: always masked out.
 */
export class BufferPool {
  private readonly free: KvArray[] = [];
  private bytes = 0;

  constructor(
    readonly budget: number,
    readonly type: KvType = KV_FLOAT32,
  ) {}

  /** A buffer of `n` values: a view on the smallest pooled one that fits (up to twice as large), or new. */
  take(n: number): KvArray {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const len = this.free[i].length;
      if (len >= n && len <= 2 * n && (best < 0 || len < this.free[best].length)) best = i;
    }
    if (best < 0) return this.type.alloc(n);
    const [buf] = this.free.splice(best, 1);
    this.bytes -= buf.byteLength;
    return buf.subarray(0, n);
  }

  /** Takes back a buffer from take() (its whole allocation); the oldest go beyond the budget. */
  give(view: KvArray): void {
    const buf = this.type.wrap(view.buffer);
    if (buf.byteLength > this.budget) return;
    this.free.push(buf);
    this.bytes += buf.byteLength;
    while (this.bytes > this.budget) this.bytes -= this.free.shift()!.byteLength;
  }

  get pooledBytes(): number {
    return this.bytes;
  }
}

/** 'present' mode: the session's tensors [rows, kvHeads, total, hd], each row's positions at the END (left padding). */
export class PresentBlock extends KvBlock {
  private tensors: Record<string, ort.Tensor> | null;

  constructor(
    tensors: Record<string, ort.Tensor>,
    rows: number,
    readonly total: number,
  ) {
    super(rows);
    this.tensors = tensors;
  }

  get feeds(): Record<string, ort.Tensor> {
    if (!this.tensors) throw new Error('KV cache used after it was disposed');
    return this.tensors;
  }

  get live(): boolean {
    return this.tensors !== null;
  }

  get allocated(): number {
    let n = 0;
    for (const t of Object.values(this.tensors ?? {})) n += t.size * (t.type === 'float16' ? 2 : 4);
    return n;
  }

  protected free(): void {
    for (const t of Object.values(this.tensors ?? {})) t.dispose();
    this.tensors = null;
  }
}

/**
 * 'append' mode: buffers [rows, kvHeads, capacity, hd]; row r holds positions [0, written[r]) (more than a
 * state's length when a later state of that row appended). A run appends in place after a state only when
 * nothing was written after it (or it is the block's only user); otherwise the rows are copied first
 * (copy on write), so every state stays valid. A batch's block has rows to spare: a conversation joining
 * the batch is copied into a free row (one no live state uses), the others stay where they are.
 */
export class AppendBlock extends KvBlock {
  private data: Record<string, KvArray> | null;
  private readonly views = new Map<number, Record<string, ort.Tensor>>();
  readonly written: Int32Array;
  /** live states per row */
  readonly rowRefs: Int32Array;
  /** inputs of a k-row step, made once per k (see LlamaDecoder.stepAppend) */
  private io = new Map<number, StepInputs>();

  constructor(
    readonly names: readonly string[],
    rows: number,
    readonly capacity: number,
    readonly kvHeads: number,
    readonly headDim: number,
    readonly pool?: BufferPool,
    readonly type: KvType = pool?.type ?? KV_FLOAT32,
  ) {
    super(rows);
    if (pool && pool.type !== type) throw new Error(`a ${type.tensor} KV block cannot take buffers from a ${pool.type.tensor} pool`);
    const size = rows * kvHeads * capacity * headDim;
    this.data = Object.fromEntries(names.map((n) => [n, pool ? pool.take(size) : type.alloc(size)]));
    this.written = new Int32Array(rows);
    this.rowRefs = new Int32Array(rows);
  }

  get buffers(): Record<string, KvArray> {
    if (!this.data) throw new Error('KV cache used after it was disposed');
    return this.data;
  }

  /** past_key_values feeds over rows [0, k) (views on the buffers: nothing is copied; made once per k). */
  feeds(k = this.rows): Record<string, ort.Tensor> {
    const data = this.buffers;
    let f = this.views.get(k);
    if (!f) {
      const size = k * this.kvHeads * this.capacity * this.headDim;
      f = Object.fromEntries(
        this.names.map((n) => [n, kvTensor(this.type, data[n].subarray(0, size), [k, this.kvHeads, this.capacity, this.headDim])]),
      );
      this.views.set(k, f);
    }
    return f;
  }

  get live(): boolean {
    return this.data !== null;
  }

  get allocated(): number {
    return this.names.length * this.rows * this.kvHeads * this.capacity * this.headDim * this.type.bytes;
  }

  /** feeds() over rows [0, k) under the graph input names `as` gives, with its extra inputs */
  feedsAs(k: number, as: BlockInputs): Record<string, ort.Tensor> {
    const past = this.feeds(k);
    const out = { ...as.extra(k) };
    as.names.forEach((n, j) => (out[n] = past[this.names[j]]));
    return out;
  }

  /** May a state of `row` with `length` positions append `n` positions in place? */
  canAppend(row: number, length: number, n: number): boolean {
    return (this.written[row] === length || this.references === 1) && length + n <= this.capacity;
  }

  /** Writes `n` new positions of `src` ([rows, kvHeads, n, hd], row srcRow) at position `at` of `row`. */
  write(name: string, src: KvArray, srcRow: number, n: number, row: number, at: number): void {
    const dst = this.buffers[name];
    const { kvHeads, headDim, capacity } = this;
    const len = n * headDim;
    for (let h = 0; h < kvHeads; h++) {
      const s = (srcRow * kvHeads + h) * len;
      const d = ((row * kvHeads + h) * capacity + at) * headDim;
      if (len <= 256) {
        // one decoding step's row of a head: a plain loop is cheaper than a subarray view + set
        for (let i = 0; i < len; i++) dst[d + i] = src[s + i];
      } else {
        dst.set(src.subarray(s, s + len), d);
      }
    }
  }

  /** Copies positions [0, n) of `from`'s row `fromRow` into row `row`. */
  copyRowFrom(from: AppendBlock, fromRow: number, n: number, row: number): void {
    const { kvHeads, headDim } = this;
    for (const name of this.names) {
      const src = from.buffers[name];
      const dst = this.buffers[name];
      for (let h = 0; h < kvHeads; h++) {
        const s = (fromRow * kvHeads + h) * from.capacity * headDim;
        dst.set(src.subarray(s, s + n * headDim), (row * kvHeads + h) * this.capacity * headDim);
      }
    }
    this.written[row] = n;
  }

  /**
   * The feeds of a k-row step over this block, updated in place by the caller: past views, the attention
   * mask ([k, capacity + 1], with the valid length each row has in it, -1 before it is set), embeddings,
   * positions.
   */
  inputs(k: number, hidden: number, as: BlockInputs): StepInputs {
    let io = this.io.get(k);
    if (!io) {
      const cap = this.capacity;
      const mask = { data: new BigInt64Array(k * (cap + 1)), valid: new Int32Array(k).fill(-1) };
      const x = new Float32Array(k * hidden);
      const positions = new BigInt64Array(k);
      const feeds: Record<string, ort.Tensor> = {
        ...this.feedsAs(k, as),
        inputs_embeds: new ort.Tensor('float32', x, [k, 1, hidden]),
        attention_mask: new ort.Tensor('int64', mask.data, [k, cap + 1]),
        position_ids: new ort.Tensor('int64', positions, [k, 1]),
      };
      io = { feeds, mask, x, positions, lengths: new Int32Array(k) };
      this.io.set(k, io);
    }
    return io;
  }

  protected free(): void {
    if (this.pool && this.data) for (const d of Object.values(this.data)) this.pool.give(d);
    this.data = null;
    this.views.clear();
    this.io.clear();
  }
}

/** Capacity for `need` positions plus room to grow (a quarter, at least 64 positions), at most `limit`. */
export function growCapacity(need: number, limit: number): number {
  return Math.max(need, Math.min(limit, need + Math.max(64, need >> 2)));
}

/** Copies `n` positions of one row between [rows, kvHeads, T, hd] buffers (positions counted after the pads). */
export function copyRow(
  src: KvArray,
  srcTotal: number,
  srcRow: number,
  srcPad: number,
  dst: KvArray,
  dstTotal: number,
  dstRow: number,
  dstPad: number,
  n: number,
  kvHeads: number,
  headDim: number,
): void {
  for (let h = 0; h < kvHeads; h++) {
    const s = ((srcRow * kvHeads + h) * srcTotal + srcPad) * headDim;
    const d = ((dstRow * kvHeads + h) * dstTotal + dstPad) * headDim;
    dst.set(src.subarray(s, s + n * headDim), d);
  }
}
