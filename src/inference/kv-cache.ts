// A KV state is immutable: stepping returns a new one, so beams may share a prefix. Several states may be
// rows of one batch (see LlamaDecoder.step): they share the batch's storage, freed with the last of them.
import type * as ort from 'onnxruntime-node';
import type { DecodeState } from './generation/types.js';
import { AppendBlock, copyRow, growCapacity, KvBlock, kvTensor, kvType, onDevice, PresentBlock, type KvArray } from './kv-blocks.js';

const DEVICE_COPY = 'a KV cache in device memory is copied by its decoder (LlamaDecoder.prefix / clone)';

export class KvCache implements DecodeState {
  private block: KvBlock | null;
  /** real (non-pad) positions */
  readonly length: number;
  /** this state's row in its batch */
  readonly row: number;

  /**
   * A state over `tensors` ([1, kvHeads, length, headDim] each), or (internal) row `row` of a batch's
   * storage holding `length` positions.
   */
  constructor(tensors: Record<string, ort.Tensor> | KvBlock, length: number, row = 0) {
    const block = tensors instanceof KvBlock ? tensors : new PresentBlock(tensors, 1, length);
    if (row >= block.rows || (block instanceof PresentBlock && length > block.total))
      throw new Error(`KV row ${row} of length ${length} does not fit its storage`);
    block.retain();
    if (block instanceof AppendBlock) block.rowRefs[row]++;
    this.block = block;
    this.length = length;
    this.row = row;
  }

  /**
   * The past_key_values tensors of the storage this state is a view of: just its own in 'present' mode
   * when `standalone`, else the whole batch (with other rows, padding or unused capacity).
   */
  feeds(): Record<string, ort.Tensor> {
    const b = this.live();
    return b instanceof PresentBlock ? b.feeds : (b as AppendBlock).feeds();
  }

  /** One row, usable as a past of its own. */
  get standalone(): boolean {
    const b = this.live();
    return b.rows === 1 && (!(b instanceof PresentBlock) || b.total === this.length);
  }

  /** The storage: for the decoder and the step's row placement, no one else. */
  get storage(): KvBlock {
    return this.live();
  }

  get disposed(): boolean {
    return this.block === null;
  }

  /** Bytes of storage this state stands for (its share of a batch's). */
  get bytes(): number {
    const b = this.live();
    return b.allocated / b.rows;
  }

  /**
   * A standalone state holding the first `n` positions (default: all). In 'append' mode, a view on the
   * same storage when this is a single row (no copy: appending after it copies first if needed);
   * otherwise a copy (with room to grow). The caller owns (disposes) the result; this state stays valid.
   */
  prefix(n = this.length): KvCache {
    if (!Number.isInteger(n) || n < 0 || n > this.length)
      throw new RangeError(`cannot take ${n} positions of a KV cache of ${this.length}`);
    const b = this.live();
    if (b instanceof AppendBlock) {
      if (b.rows === 1) return new KvCache(b, n, 0);
      const out = new AppendBlock(b.names, 1, growCapacity(n, b.capacity), b.kvHeads, b.headDim, b.pool, b.type);
      out.copyRowFrom(b, this.row, n, 0);
      return new KvCache(out, n, 0);
    }
    const p = b as PresentBlock;
    if (n === this.length && this.standalone) return new KvCache(p, n, 0);
    if (onDevice(p.feeds)) throw new Error(DEVICE_COPY);
    const out: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(p.feeds)) {
      const [, kvHeads, , headDim] = t.dims as number[];
      const type = kvType(t.type);
      const dst = type.alloc(kvHeads * n * headDim);
      copyRow(t.data as KvArray, p.total, this.row, p.total - this.length, dst, n, 0, 0, n, kvHeads, headDim);
      out[name] = kvTensor(type, dst, [1, kvHeads, n, headDim]);
    }
    return new KvCache(out, n);
  }

  /**
   * Another reference to this state's rows (no copy, whatever the storage): valid until the caller disposes it,
   * whoever disposes this one meanwhile. A state appending after it copies first (see AppendBlock.canAppend).
   */
  share(): KvCache {
    return new KvCache(this.live(), this.length, this.row);
  }

  /** A standalone copy of this state that shares no storage with it (room to grow included). */
  clone(): KvCache {
    const b = this.live();
    if (b instanceof AppendBlock) {
      const out = new AppendBlock(
        b.names,
        1,
        growCapacity(this.length, Math.max(b.capacity, this.length)),
        b.kvHeads,
        b.headDim,
        b.pool,
        b.type,
      );
      out.copyRowFrom(b, this.row, this.length, 0);
      return new KvCache(out, this.length, 0);
    }
    const p = this.prefix();
    if (p.storage !== b) return p;
    p.dispose();
    if (onDevice((b as PresentBlock).feeds)) throw new Error(DEVICE_COPY);
    const out: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries((b as PresentBlock).feeds))
      out[name] = kvTensor(kvType(t.type), (t.data as KvArray).slice(), t.dims);
    return new KvCache(out, this.length);
  }

  /** Frees the cache now (device buffers included) rather than at garbage collection. */
  dispose(): void {
    const b = this.block;
    if (!b) return;
    this.block = null;
    if (b instanceof AppendBlock) b.rowRefs[this.row]--;
    b.release();
  }

  private live(): KvBlock {
    if (!this.block?.live) throw new Error('KV cache used after it was disposed');
    return this.block;
  }
}
