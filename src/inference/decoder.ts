// The language model at run time: token embedding lookup and the decoder with its KV cache.
// A KV state is immutable: stepping returns a new one, so beams may share a prefix. Several states may be
// rows of one batch (see LlamaDecoder.step): they share the batch's storage, freed with the last of them.
import * as ort from 'onnxruntime-node';
import type { ModelJson } from './package.js';
import type { DecodeState, StepModel } from './generation/types.js';

type LlmShape = ModelJson['llm'];

/**
 * How the decoder keeps its KV cache:
 * - 'append': in buffers of its own, [rows, kvHeads, capacity, headDim], into which the new positions of each
 *   run (the graph's `present_new.*` outputs) are written. The whole buffer is fed as `past_key_values.*`
 *   with the attention mask hiding each row's unused tail, so a step copies nothing but its new positions.
 * - 'present': the graph's `present.*` outputs as they are (past + new, every step). Used for packages
 *   converted before `present_new` existed, and where outputs stay on the device (WebGPU).
 */
export type KvMode = 'append' | 'present';

/** Storage shared by the KvCache views over its rows; freed when the last view is disposed. */
abstract class KvBlock {
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
interface BlockInputs {
  names: readonly string[];
  extra: (rows: number) => Record<string, ort.Tensor>;
}

interface StepInputs {
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
  private readonly free: Float32Array[] = [];
  private bytes = 0;

  constructor(readonly budget: number) {}

  /** A buffer of `n` floats: a view on the smallest pooled one that fits (up to twice as large), or new. */
  take(n: number): Float32Array {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const len = this.free[i].length;
      if (len >= n && len <= 2 * n && (best < 0 || len < this.free[best].length)) best = i;
    }
    if (best < 0) return new Float32Array(n);
    const [buf] = this.free.splice(best, 1);
    this.bytes -= buf.byteLength;
    return buf.subarray(0, n);
  }

  /** Takes back a buffer from take() (its whole allocation); the oldest go beyond the budget. */
  give(view: Float32Array): void {
    const buf = new Float32Array(view.buffer);
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
class PresentBlock extends KvBlock {
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
    for (const t of Object.values(this.tensors ?? {})) n += t.size * 4;
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
class AppendBlock extends KvBlock {
  private data: Record<string, Float32Array> | null;
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
  ) {
    super(rows);
    const size = rows * kvHeads * capacity * headDim;
    this.data = Object.fromEntries(names.map((n) => [n, pool ? pool.take(size) : new Float32Array(size)]));
    this.written = new Int32Array(rows);
    this.rowRefs = new Int32Array(rows);
  }

  get buffers(): Record<string, Float32Array> {
    if (!this.data) throw new Error('KV cache used after it was disposed');
    return this.data;
  }

  /** past_key_values feeds over rows [0, k) (views on the buffers: nothing is copied; made once per k). */
  feeds(k = this.rows): Record<string, ort.Tensor> {
    const data = this.buffers;
    let f = this.views.get(k);
    if (!f) {
      const size = k * this.kvHeads * this.capacity * this.headDim;
      f = Object.fromEntries(this.names.map((n) => [n, new ort.Tensor('float32', data[n].subarray(0, size), [k, this.kvHeads, this.capacity, this.headDim])]));
      this.views.set(k, f);
    }
    return f;
  }

  get live(): boolean {
    return this.data !== null;
  }

  get allocated(): number {
    return this.names.length * this.rows * this.kvHeads * this.capacity * this.headDim * 4;
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
  write(name: string, src: Float32Array, srcRow: number, n: number, row: number, at: number): void {
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
    if (row >= block.rows || (block instanceof PresentBlock && length > block.total)) throw new Error(`KV row ${row} of length ${length} does not fit its storage`);
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

  /** The storage (internal to this module). */
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
    if (!Number.isInteger(n) || n < 0 || n > this.length) throw new RangeError(`cannot take ${n} positions of a KV cache of ${this.length}`);
    const b = this.live();
    if (b instanceof AppendBlock) {
      if (b.rows === 1) return new KvCache(b, n, 0);
      const out = new AppendBlock(b.names, 1, growCapacity(n, b.capacity), b.kvHeads, b.headDim, b.pool);
      out.copyRowFrom(b, this.row, n, 0);
      return new KvCache(out, n, 0);
    }
    const p = b as PresentBlock;
    if (n === this.length && this.standalone) return new KvCache(p, n, 0);
    const out: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(p.feeds)) {
      const [, kvHeads, , headDim] = t.dims as number[];
      const dst = new Float32Array(kvHeads * n * headDim);
      copyRow(t.data as Float32Array, p.total, this.row, p.total - this.length, dst, n, 0, 0, n, kvHeads, headDim);
      out[name] = new ort.Tensor('float32', dst, [1, kvHeads, n, headDim]);
    }
    return new KvCache(out, n);
  }

  /** A standalone copy of this state that shares no storage with it (room to grow included). */
  clone(): KvCache {
    const b = this.live();
    if (b instanceof AppendBlock) {
      const out = new AppendBlock(b.names, 1, growCapacity(this.length, Math.max(b.capacity, this.length)), b.kvHeads, b.headDim, b.pool);
      out.copyRowFrom(b, this.row, this.length, 0);
      return new KvCache(out, this.length, 0);
    }
    const p = this.prefix();
    if (p.storage !== b) return p;
    p.dispose();
    const out: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries((b as PresentBlock).feeds)) out[name] = new ort.Tensor('float32', (t.data as Float32Array).slice(), t.dims);
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
    if (!this.block || !this.block.live) throw new Error('KV cache used after it was disposed');
    return this.block;
  }
}

/** Capacity for `need` positions plus room to grow (a quarter, at least 64 positions), at most `limit`. */
function growCapacity(need: number, limit: number): number {
  return Math.max(need, Math.min(limit, need + Math.max(64, need >> 2)));
}

/** Copies `n` positions of one row between [rows, kvHeads, T, hd] buffers (positions counted after the pads). */
function copyRow(
  src: Float32Array,
  srcTotal: number,
  srcRow: number,
  srcPad: number,
  dst: Float32Array,
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

export class TokenEmbedder {
  /** token id -> its embedding row, for decoding steps (one token per row, the same few ids again and again) */
  private readonly rows = new Map<number, Float32Array>();
  private readonly maxRows: number;

  /** `cacheBytes`: memory for remembered rows of single tokens (default 32 MiB; 0 disables) */
  constructor(
    private readonly session: ort.InferenceSession,
    readonly hidden: number,
    cacheBytes = 32 * 1024 * 1024,
  ) {
    this.maxRows = Math.floor(cacheBytes / (hidden * 4));
  }

  /** ids -> [ids.length, hidden] */
  async embed(ids: readonly number[]): Promise<Float32Array> {
    if (ids.length === 0) return new Float32Array(0);
    const input = new ort.Tensor('int64', BigInt64Array.from(ids.map((i) => BigInt(i))), [1, ids.length]);
    const out = await this.session.run({ input_ids: input });
    const embeds = out.inputs_embeds;
    const data = (await embeds.getData()) as Float32Array;
    input.dispose();
    return data;
  }

  /**
   * The remembered rows of `ids` when every one is remembered (no session run, no promise, no copy: the
   * decoding step writes them straight into its input buffer); else undefined. Read-only.
   */
  rememberedRows(ids: readonly number[]): Float32Array[] | undefined {
    const out: Float32Array[] = [];
    for (let i = 0; i < ids.length; i++) {
      const row = this.rows.get(ids[i]);
      if (!row) return undefined;
      out.push(row);
    }
    return out;
  }

  /**
   * The same as embed(), from remembered rows where possible: decoding embeds one token per conversation per
   * step, and a session run for a table lookup costs more than all the rest of a small model's step in
   * JavaScript. The rows are copies of what the embedding graph returned, so results are bit-identical.
   */
  async embedTokens(ids: readonly number[]): Promise<Float32Array> {
    const H = this.hidden;
    const out = new Float32Array(ids.length * H);
    let missing: number[] | undefined;
    for (let i = 0; i < ids.length; i++) {
      const row = this.rows.get(ids[i]);
      if (row) out.set(row, i * H);
      else (missing ??= []).push(ids[i]);
    }
    if (!missing) return out;
    const unique = [...new Set(missing)];
    const data = await this.embed(unique);
    const fresh = new Map<number, Float32Array>();
    unique.forEach((id, j) => fresh.set(id, data.slice(j * H, (j + 1) * H)));
    for (let i = 0; i < ids.length; i++) {
      const row = fresh.get(ids[i]);
      if (row) out.set(row, i * H);
    }
    for (const [id, row] of fresh) {
      if (this.rows.size >= this.maxRows) break;
      this.rows.set(id, row);
    }
    return out;
  }
}

/** Which positions' logits a forward run returns: the last one (all generation needs) or every new one. */
export type KeepLogits = 'last' | 'all';

export interface ForwardResult {
  /** logits of the last new position [vocab], or of every new position [seqLen, vocab] (KeepLogits) */
  logits: Float32Array;
  state: KvCache;
}

export interface DecoderStats {
  /** decoder session runs and the time spent in them (ms, wall clock around session.run) */
  runs: number;
  runMs: number;
  /** batched steps (more than one row) and the rows they decoded */
  steps: number;
  stepRows: number;
  /** runs whose past had to be copied first (a batch's membership changed, a shared prefix, growth) */
  repacks: number;
}

export interface DecoderOptions {
  /** see KvMode; default 'append' when the graph has `present_new` outputs */
  mode?: KvMode;
  /** rows a batch's KV storage is made for, so that conversations join without re-packing (default 8) */
  batchRows?: number;
  /** memory of freed KV storage kept for reuse (default 512 MiB) */
  poolBytes?: number;
  /** 'append' mode: the most positions one run of a prefill takes; longer prompts run in chunks (default 128) */
  prefillChunk?: number;
}

export const DEFAULT_PREFILL_CHUNK = 128;

export class LlamaDecoder implements StepModel<KvCache> {
  readonly vocabSize: number;
  readonly mode: KvMode;
  /** counters for benchmarks (never reset by the decoder) */
  readonly stats: DecoderStats = { runs: 0, runMs: 0, steps: 0, stepRows: 0, repacks: 0 };
  private readonly pastNames: string[];
  private readonly newNames: string[];
  /** the graph's `cache_key_values.*` inputs (attended to, not copied into `present`), if it has them */
  private readonly cacheNames: string[] | null;
  /** how 'append' mode feeds its buffers: as the cache (and an empty past) when the graph has one */
  private readonly blockAs: BlockInputs;
  /** zero-filled KV feeds made once per (names, positions, rows): see zeroKv */
  private readonly zeroFeeds = new Map<string, Record<string, ort.Tensor>>();
  private readonly fetches: string[];
  /**
   * The `logits_to_keep` feeds (1: the last position, 0: all) when the graph has that input; packages converted
   * before it compute every position's logits, and the last is cut out here.
   */
  private readonly keep: Record<KeepLogits, Record<string, ort.Tensor>> | null;
  private readonly ones: BigInt64Array;
  private readonly batchRows: number;
  private readonly pool: BufferPool;
  private readonly prefillChunk: number;

  constructor(
    private readonly session: ort.InferenceSession,
    private readonly embedder: TokenEmbedder,
    private readonly shape: LlmShape,
    opts: DecoderOptions = {},
  ) {
    this.vocabSize = shape.vocabSize;
    this.pastNames = Array.from({ length: shape.layers }, (_, i) => [`past_key_values.${i}.key`, `past_key_values.${i}.value`]).flat();
    this.newNames = Array.from({ length: shape.layers }, (_, i) => [`present_new.${i}.key`, `present_new.${i}.value`]).flat();
    this.fetches = ['logits', ...this.newNames];
    const cacheNames = Array.from({ length: shape.layers }, (_, i) => [`cache_key_values.${i}.key`, `cache_key_values.${i}.value`]).flat();
    this.cacheNames = cacheNames.every((n) => session.inputNames.includes(n)) ? cacheNames : null;
    const keepFeed = (n: bigint) => ({ logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(n), [1]) });
    this.keep = session.inputNames.includes('logits_to_keep') ? { last: keepFeed(1n), all: keepFeed(0n) } : null;
    // (a decoding step has one position per row: its logits are the last position's)
    const last = this.keep?.last ?? {};
    this.blockAs = this.cacheNames
      ? { names: this.cacheNames, extra: (rows) => ({ ...this.zeroKv(this.pastNames, 0, rows), ...last }) }
      : { names: this.pastNames, extra: () => last };
    const hasNew = this.newNames.every((n) => session.outputNames.includes(n));
    this.mode = opts.mode === 'present' || !hasNew ? 'present' : 'append';
    this.ones = new BigInt64Array(shape.maxPositions).fill(1n);
    this.batchRows = Math.max(1, Math.floor(opts.batchRows ?? 8));
    this.pool = new BufferPool(opts.poolBytes ?? 512 * 1024 * 1024);
    this.prefillChunk = Math.max(1, Math.floor(opts.prefillChunk ?? DEFAULT_PREFILL_CHUNK));
  }

  /**
   * Which graph inputs the kept KV cache goes in as: 'cache' (attended to, never copied inside the session:
   * 'append' mode on a graph with `cache_key_values` inputs) or 'past' (concatenated into `present` at every run).
   */
  get kvInput(): 'cache' | 'past' {
    return this.mode === 'append' && this.cacheNames ? 'cache' : 'past';
  }

  /** The most positions (prompt + answer) one sequence may have. */
  get maxPositions(): number {
    return this.shape.maxPositions;
  }

  emptyCache(): KvCache {
    const { kvHeads, headDim } = this.shape;
    const tensors: Record<string, ort.Tensor> = {};
    for (const n of this.pastNames) tensors[n] = new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]);
    return new KvCache(tensors, 0);
  }

  /**
   * Runs `embeds` ([seqLen, hidden]) after the cached prefix `past` (which stays valid); `keep` says whose
   * logits come back (generation needs the last position's; `minigpt verify` compares all of them).
   */
  async forward(embeds: Float32Array, past: KvCache | null, signal?: AbortSignal, keep: KeepLogits = 'last'): Promise<ForwardResult> {
    const { hidden, maxPositions } = this.shape;
    const seqLen = embeds.length / hidden;
    if (!Number.isInteger(seqLen) || seqLen === 0) throw new Error(`inputs_embeds of ${embeds.length} values is not a whole number of ${hidden}-wide rows`);
    const total = (past?.length ?? 0) + seqLen;
    if (total > maxPositions) throw new ContextLengthError(total, maxPositions);
    signal?.throwIfAborted();
    const r = await (this.mode === 'append' ? this.forwardAppend(embeds, seqLen, past, keep, signal) : this.forwardPresent(embeds, seqLen, past, keep, signal));
    const V = this.vocabSize;
    if (keep === 'last' && r.logits.length > V) r.logits = r.logits.subarray(r.logits.length - V);
    return r;
  }

  /** The `logits_to_keep` feed of a forward run (none for graphs without the input). */
  private keepFeed(keep: KeepLogits): Record<string, ort.Tensor> {
    return this.keep?.[keep] ?? {};
  }

  /**
   * One token appended to each state, all rows in ONE session run. Rows of different lengths are fed
   * together with the attention mask hiding what is not theirs ('append': the unused tail of each row;
   * 'present': left padding), and position_ids per row: the graph's causal mask compares key index with
   * past + query index, so each row's logits equal its own run's to float rounding
   * (test/inference/batching.test.ts). When the states are exactly the rows of the previous step, in order,
   * nothing is copied; otherwise the rows are packed into new storage first.
   */
  async step(states: readonly KvCache[], tokens: readonly number[], signal?: AbortSignal): Promise<{ states: KvCache[]; logits: Float32Array[] }> {
    const B = states.length;
    if (tokens.length !== B) throw new Error(`step: ${B} states but ${tokens.length} tokens`);
    if (B === 0) return { states: [], logits: [] };
    const { maxPositions, hidden } = this.shape;
    const fits = () => {
      for (const s of states) if (s.length + 1 > maxPositions) throw new ContextLengthError(s.length + 1, maxPositions);
      signal?.throwIfAborted();
    };
    let r: { states: KvCache[]; logits: Float32Array[] };
    if (this.mode === 'append') {
      // The step copies each row into its input buffer, so remembered embedding rows are used as they are.
      const rows = this.embedder.rememberedRows(tokens) ?? splitRows(await this.embedder.embedTokens(tokens), hidden);
      fits();
      r = await this.stepAppend(rows, states);
    } else {
      const embeds = await this.embedder.embedTokens(tokens);
      if (B === 1 && states[0].standalone) {
        const one = await this.forward(embeds, states[0], signal);
        return { states: [one.state], logits: [one.logits] };
      }
      fits();
      r = await this.stepPresent(embeds, states);
    }
    if (B > 1) {
      this.stats.steps++;
      this.stats.stepRows += B;
    }
    if (signal?.aborted) {
      for (const s of r.states) s.dispose();
      signal.throwIfAborted();
    }
    return r;
  }

  // ------------------------------------------------------------------------------------ 'append' mode

  /** New storage: capacity for `need` positions plus room to grow (a quarter, at least 64 positions). */
  private newBlock(rows: number, need: number): AppendBlock {
    return new AppendBlock(this.pastNames, rows, growCapacity(need, this.shape.maxPositions), this.shape.kvHeads, this.shape.headDim, this.pool);
  }

  private async forwardAppend(embeds: Float32Array, seqLen: number, past: KvCache | null, keep: KeepLogits, signal?: AbortSignal): Promise<ForwardResult> {
    const { hidden } = this.shape;
    const L = past?.length ?? 0;
    const total = L + seqLen;
    let block: AppendBlock;
    let row = 0;
    const pb = past?.storage;
    if (past && pb instanceof AppendBlock && pb.rows === 1 && pb.canAppend(past.row, L, seqLen)) {
      block = pb;
      row = past.row;
    } else {
      block = this.newBlock(1, total);
      if (past && L > 0) {
        this.stats.repacks++;
        if (pb instanceof AppendBlock) block.copyRowFrom(pb, past.row, L, 0);
        else {
          const p = past.prefix();
          try {
            for (const name of this.pastNames) block.write(name, p.feeds()[name].data as Float32Array, 0, L, 0, 0);
            block.written[0] = L;
          } finally {
            p.dispose();
          }
        }
      }
    }
    // A new state needs a reference before anything can fail, so that a new block is freed on error.
    const state = new KvCache(block, total, row);
    try {
      // A long prompt runs in chunks into the storage made for all of it (only the last chunk's logits are
      // kept): a run's outputs (the new keys and values of every layer) and activations grow with its length,
      // and at the full 7B shape a 273-token prefill in one run raised the process's RSS by 1.35 GB, in runs
      // of 128 by 0.94 GB, in no more time (docs/quantisation.md, "Memory").
      const chunk = keep === 'last' ? this.prefillChunk : seqLen;
      let logits: Float32Array = new Float32Array(0);
      for (let s = 0; s < seqLen; s += chunk) {
        const n = Math.min(chunk, seqLen - s);
        const at = L + s;
        // (with a cache input the block goes in even when empty, all masked: no zero-sized cache)
        const fed = at > 0 || this.cacheNames !== null;
        const cap = fed ? block.capacity : 0;
        const mask = new BigInt64Array(cap + n);
        mask.fill(1n, 0, at);
        mask.fill(1n, cap);
        const feeds: Record<string, ort.Tensor> = {
          ...(fed ? block.feedsAs(1, this.blockAs) : this.zeroKv(this.pastNames, 0, 1)),
          ...this.keepFeed(keep),
          inputs_embeds: new ort.Tensor('float32', n === seqLen ? embeds : embeds.slice(s * hidden, (s + n) * hidden), [1, n, hidden]),
          attention_mask: new ort.Tensor('int64', mask, [1, cap + n]),
          position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: n }, (_, i) => BigInt(at + i)), [1, n]),
        };
        const out = await this.run(feeds, this.fetches);
        for (let i = 0; i < this.pastNames.length; i++) block.write(this.pastNames[i], out[this.newNames[i]].data as Float32Array, 0, n, row, at);
        block.written[row] = at + n;
        if (signal?.aborted) signal.throwIfAborted();
        logits = out.logits.data as Float32Array;
      }
      return { logits, state };
    } catch (err) {
      state.dispose();
      throw err;
    }
  }

  /**
   * Zero-filled tensors [rows, kvHeads, positions, headDim] for `names`, made once per shape (inputs are only
   * read): the empty past beside a cache input (0 positions), and in 'present' mode the one-position cache
   * masked out (the mask gets a leading 0) so that the cache's MatMuls are never zero-sized.
   */
  private zeroKv(names: readonly string[], positions: number, rows: number): Record<string, ort.Tensor> {
    const key = `${names[0]}:${positions}:${rows}`;
    let f = this.zeroFeeds.get(key);
    if (!f) {
      const { kvHeads, headDim } = this.shape;
      const dims = [rows, kvHeads, positions, headDim];
      f = Object.fromEntries(names.map((n) => [n, new ort.Tensor('float32', new Float32Array(rows * kvHeads * positions * headDim), dims)]));
      this.zeroFeeds.set(key, f);
    }
    return f;
  }

  /** 'present' mode's cache input, when the graph has one: see zeroKv. */
  private maskedCache(rows: number): Record<string, ort.Tensor> {
    return this.cacheNames ? this.zeroKv(this.cacheNames, 1, rows) : {};
  }

  /**
   * Where each state's row goes for this step: states already at the end of their row of one block stay
   * there (no copy); the others are copied into free rows of that block (rows no live state uses), or, if
   * there are not enough, everything goes to a new block. Rows [0, k) are fed; a row in that range that is
   * not stepped (a conversation that skips this step) runs as a dummy whose outputs are dropped.
   */
  private placeRows(states: readonly KvCache[]): { block: AppendBlock; slots: number[]; k: number } {
    const B = states.length;
    // The steady state of a batch: row b of the same block is state b, at the end of its row.
    const first0 = states[0].storage;
    if (first0 instanceof AppendBlock && first0.rows >= B) {
      let ok = true;
      for (let b = 0; b < B && ok; b++) {
        const s = states[b];
        ok = s.storage === first0 && s.row === b && first0.written[b] === s.length && s.length < first0.capacity;
      }
      if (ok) return { block: first0, slots: states.map((_, b) => b), k: B };
    }
    const need = Math.max(...states.map((s) => s.length)) + 1;
    const first = states.find((s) => s.storage instanceof AppendBlock && s.storage.rows >= B)?.storage as AppendBlock | undefined;
    if (first && first.capacity >= need) {
      const claimed = new Uint8Array(first.rows);
      const slots = states.map((s) => {
        if (s.storage !== first || first.written[s.row] !== s.length || claimed[s.row]) return -1;
        claimed[s.row] = 1;
        return s.row;
      });
      const free: number[] = [];
      for (let r = 0; r < first.rows; r++) if (!claimed[r] && first.rowRefs[r] === 0) free.push(r);
      // Rows from elsewhere (and rows stepped beyond the first B) go to the lowest free rows.
      const moves = slots.map((slot, b) => (slot < 0 ? b : -1)).filter((b) => b >= 0);
      for (let b = 0; b < B; b++) if (slots[b] >= B && free.length > moves.length && free[moves.length] < slots[b]) moves.push(b);
      if (moves.length <= free.length) {
        moves.forEach((b, i) => {
          const s = states[b];
          const r = free[i];
          this.copyInto(first, r, s);
          slots[b] = r;
        });
        if (moves.length) this.stats.repacks++;
        return { block: first, slots, k: Math.max(...slots) + 1 };
      }
    }
    this.stats.repacks++;
    const block = this.newBlock(B > 1 ? Math.max(B, this.batchRows) : 1, need);
    states.forEach((s, b) => this.copyInto(block, b, s));
    return { block, slots: states.map((_, b) => b), k: B };
  }

  /** Copies state `s` into row `row` of `block` (its positions [0, length)). */
  private copyInto(block: AppendBlock, row: number, s: KvCache): void {
    const from = s.storage;
    if (from instanceof AppendBlock) {
      block.copyRowFrom(from, s.row, s.length, row);
      return;
    }
    const p = s.prefix();
    try {
      for (const name of this.pastNames) block.write(name, p.feeds()[name].data as Float32Array, 0, s.length, row, 0);
      block.written[row] = s.length;
    } finally {
      p.dispose();
    }
  }

  private async stepAppend(embeds: readonly Float32Array[], states: readonly KvCache[]): Promise<{ states: KvCache[]; logits: Float32Array[] }> {
    const B = states.length;
    const { hidden, vocabSize: V } = this.shape;
    const { block, slots, k } = this.placeRows(states);
    const next: KvCache[] = [];
    for (let b = 0; b < B; b++) next.push(new KvCache(block, states[b].length + 1, slots[b]));
    try {
      const cap = block.capacity;
      // The inputs of a k-row step over this block are made once and updated in place: the past as views on
      // the buffers, the attention mask of each row (its valid positions, its unused tail hidden, then the new
      // position; a row grows by one position per step), the embeddings and positions. Every step runs this,
      // so it allocates nothing but the new states.
      const io = block.inputs(k, hidden, this.blockAs);
      const m = io.mask;
      const lengths = io.lengths;
      if (k > B) {
        // rows fed but not stepped run as dummies: zero input, only their own new position visible
        io.x.fill(0);
        lengths.fill(0);
      }
      for (let b = 0; b < B; b++) {
        const r = slots[b];
        const len = states[b].length;
        lengths[r] = len;
        io.x.set(embeds[b], r * hidden);
        io.positions[r] = BigInt(len);
      }
      for (let r = 0; r < k; r++) {
        const at = r * (cap + 1);
        const len = lengths[r];
        const had = m.valid[r];
        if (had < 0) {
          m.data.fill(0n, at, at + cap);
          m.data[at + cap] = 1n;
          m.data.fill(1n, at, at + len);
        } else if (had === len - 1) m.data[at + had] = 1n;
        else if (had < len) m.data.fill(1n, at + had, at + len);
        else if (had > len) m.data.fill(0n, at + len, at + had);
        m.valid[r] = len;
      }
      // (session.run timed here rather than through run(): one async frame less per step)
      const t0 = performance.now();
      let out: ort.InferenceSession.OnnxValueMapType;
      try {
        out = await this.session.run(io.feeds, this.fetches);
      } finally {
        this.stats.runs++;
        this.stats.runMs += performance.now() - t0;
      }
      for (let i = 0; i < this.pastNames.length; i++) {
        const data = out[this.newNames[i]].data as Float32Array;
        const name = this.pastNames[i];
        for (let b = 0; b < B; b++) block.write(name, data, slots[b], 1, slots[b], states[b].length);
      }
      const all = out.logits.data as Float32Array;
      const logits: Float32Array[] = [];
      for (let b = 0; b < B; b++) {
        block.written[slots[b]] = states[b].length + 1;
        logits.push(all.subarray(slots[b] * V, (slots[b] + 1) * V));
      }
      return { states: next, logits };
    } catch (err) {
      for (const s of next) s.dispose();
      throw err;
    }
  }

  // ----------------------------------------------------------------------------------- 'present' mode

  private async forwardPresent(embeds: Float32Array, seqLen: number, past: KvCache | null, keep: KeepLogits, signal?: AbortSignal): Promise<ForwardResult> {
    const { hidden } = this.shape;
    // A row of a batch is copied out first: the graph takes one unpadded row here.
    const cache = past === null ? this.emptyCache() : past.standalone ? past : past.prefix();
    const own = cache !== past;
    const total = cache.length + seqLen;
    try {
      const lead = this.cacheNames ? 1 : 0; // the masked cache position (see maskedCache)
      const mask = lead ? new BigInt64Array(total + 1).fill(1n, 1) : this.ones.subarray(0, total);
      const feeds: Record<string, ort.Tensor> = {
        ...this.maskedCache(1),
        ...cache.feeds(),
        ...this.keepFeed(keep),
        inputs_embeds: new ort.Tensor('float32', embeds, [1, seqLen, hidden]),
        attention_mask: new ort.Tensor('int64', mask, [1, total + lead]),
        position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: seqLen }, (_, i) => BigInt(cache.length + i)), [1, seqLen]),
      };
      const out = await this.run(feeds);
      const state = new KvCache(this.present(out), total);
      if (signal?.aborted) {
        state.dispose();
        signal.throwIfAborted();
      }
      return { logits: out.logits.data as Float32Array, state };
    } finally {
      if (own) cache.dispose();
    }
  }

  private async stepPresent(embeds: Float32Array, states: readonly KvCache[]): Promise<{ states: KvCache[]; logits: Float32Array[] }> {
    const B = states.length;
    const { hidden, vocabSize: V } = this.shape;
    // The previous step's batch, row for row?
    const block = states[0].storage as PresentBlock;
    const same = block.rows === B && states.every((s, b) => s.storage === block && s.row === b);
    const T = same ? block.total : Math.max(...states.map((s) => s.length));
    const pads = states.map((s) => T - s.length);
    let past: Record<string, ort.Tensor>;
    if (same) {
      past = block.feeds;
    } else {
      this.stats.repacks++;
      past = {};
      for (const name of this.pastNames) {
        const { kvHeads, headDim } = this.shape;
        const dst = new Float32Array(B * kvHeads * T * headDim);
        states.forEach((s, b) => {
          const src = s.storage as PresentBlock;
          copyRow(src.feeds[name].data as Float32Array, src.total, s.row, src.total - s.length, dst, T, b, pads[b], s.length, kvHeads, headDim);
        });
        past[name] = new ort.Tensor('float32', dst, [B, kvHeads, T, headDim]);
      }
    }
    // rows: [the masked cache position (when the graph has a cache input)] [left padding] [past] [new]
    const lead = this.cacheNames ? 1 : 0;
    const W = lead + T + 1;
    const mask = new BigInt64Array(B * W).fill(1n);
    for (let b = 0; b < B; b++) mask.fill(0n, b * W, b * W + lead + pads[b]);
    const feeds: Record<string, ort.Tensor> = {
      ...this.maskedCache(B),
      ...past,
      ...this.keepFeed('last'),
      inputs_embeds: new ort.Tensor('float32', embeds, [B, 1, hidden]),
      attention_mask: new ort.Tensor('int64', mask, [B, W]),
      position_ids: new ort.Tensor('int64', BigInt64Array.from(states, (s) => BigInt(s.length)), [B, 1]),
    };
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await this.run(feeds);
    } finally {
      if (!same) for (const t of Object.values(past)) t.dispose();
    }
    const next = new PresentBlock(this.present(out), B, T + 1);
    const nextStates = states.map((s, b) => new KvCache(next, s.length + 1, b));
    const all = out.logits.data as Float32Array;
    return { states: nextStates, logits: nextStates.map((_, b) => all.subarray(b * V, (b + 1) * V)) };
  }

  private async run(feeds: Record<string, ort.Tensor>, fetches?: string[]): Promise<ort.InferenceSession.OnnxValueMapType> {
    const t0 = performance.now();
    try {
      return await (fetches ? this.session.run(feeds, fetches) : this.session.run(feeds));
    } finally {
      this.stats.runs++;
      this.stats.runMs += performance.now() - t0;
    }
  }

  private present(out: ort.InferenceSession.OnnxValueMapType): Record<string, ort.Tensor> {
    const present: Record<string, ort.Tensor> = {};
    for (let i = 0; i < this.shape.layers; i++) {
      present[`past_key_values.${i}.key`] = out[`present.${i}.key`];
      present[`past_key_values.${i}.value`] = out[`present.${i}.value`];
    }
    return present;
  }
}

/** [n * width] -> n views of `width` values */
function splitRows(data: Float32Array, width: number): Float32Array[] {
  return Array.from({ length: data.length / width }, (_, i) => data.subarray(i * width, (i + 1) * width));
}

export class ContextLengthError extends Error {
  constructor(readonly needed: number, readonly limit: number) {
    super(`the conversation needs ${needed} positions but the model handles at most ${limit}`);
  }
}
