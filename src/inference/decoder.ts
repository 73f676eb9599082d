// The language model's decoder at run time: prefill runs (forward) and batched decoding steps (step) over
// KvCache states, in either KvMode.
import * as ort from 'onnxruntime-node';
import type { ModelJson } from './package.js';
import type { StepModel } from './generation/types.js';
import type { TokenEmbedder } from './embedder.js';
import { KvCache } from './kv-cache.js';
import {
  AppendBlock,
  BufferPool,
  growCapacity,
  kvTensor,
  kvType,
  PresentBlock,
  type BlockInputs,
  type KvArray,
  type KvType,
} from './kv-blocks.js';
import { copyInto, placeRows } from './step-batch.js';
import { concatArrays } from '../util/typed-arrays.js';
import { ownRows, packRows, type PresentLayout } from './present-rows.js';
import {
  ContextLengthError,
  DEFAULT_PREFILL_CHUNK,
  type DecoderOptions,
  type DecoderStats,
  type ForwardResult,
  type KeepLogits,
  type KvMode,
} from './decoder-types.js';

export { ContextLengthError, type DecoderOptions, type ForwardResult, type KeepLogits, type KvMode } from './decoder-types.js';

type LlmShape = ModelJson['llm'];

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
  /** 'present' mode's runs: the logits and the whole present (undefined: every output, see DecoderOptions.deviceKv) */
  private readonly presentFetches: string[] | undefined;
  private readonly presentLayout: PresentLayout;
  /**
   * The `logits_to_keep` feeds (1: the last position, 0: all) when the graph has that input; packages converted
   * before it compute every position's logits, and the last is cut out here.
   */
  private readonly keep: Record<KeepLogits, Record<string, ort.Tensor>> | null;
  private readonly ones: BigInt64Array;
  private readonly batchRows: number;
  private readonly pool: BufferPool;
  private readonly prefillChunk: number;
  /** DecoderOptions.maxRunPositions (Infinity: no limit) */
  private readonly maxRun: number;
  /** the KV cache's element type: the graph's (float16 for a decoder converted with --compute fp16) */
  private readonly kv: KvType;

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
    const past0 = session.inputMetadata?.find((m) => m.name === this.pastNames[0]);
    this.kv = kvType(past0?.isTensor ? past0.type : 'float32');
    this.pool = new BufferPool(opts.poolBytes ?? 512 * 1024 * 1024, this.kv);
    this.prefillChunk = Math.max(1, Math.floor(opts.prefillChunk ?? DEFAULT_PREFILL_CHUNK));
    this.maxRun = opts.maxRunPositions === undefined ? Number.POSITIVE_INFINITY : Math.max(1, Math.floor(opts.maxRunPositions));
    this.presentLayout = { names: this.pastNames, kvHeads: shape.kvHeads, headDim: shape.headDim, type: this.kv, device: opts.deviceKv };
    const presentNames = Array.from({ length: shape.layers }, (_, i) => [`present.${i}.key`, `present.${i}.value`]).flat();
    this.presentFetches = opts.deviceKv ? undefined : ['logits', ...presentNames];
  }

  /**
   * Which graph inputs the kept KV cache goes in as: 'cache' (attended to, never copied inside the session:
   * 'append' mode on a graph with `cache_key_values` inputs) or 'past' (concatenated into `present` at every run).
   */
  get kvInput(): 'cache' | 'past' {
    return this.mode === 'append' && this.cacheNames ? 'cache' : 'past';
  }

  /**
   * KvCache.prefix() for any state of this decoder: a cache in device memory (WebGPU's 'present' mode) is
   * copied on the device. The caller owns the result; `state` stays valid.
   */
  async prefix(state: KvCache, n = state.length): Promise<KvCache> {
    return ownRows(state, n, this.presentLayout, false, () => this.emptyCache());
  }

  /** KvCache.clone() for any state of this decoder (see prefix). */
  async clone(state: KvCache): Promise<KvCache> {
    return ownRows(state, state.length, this.presentLayout, true, () => this.emptyCache());
  }

  /** Frees what the decoder made itself (the device copier's graphs); its session belongs to the caller. */
  async close(): Promise<void> {
    await this.presentLayout.device?.close();
  }

  /** The most new positions one run takes (DecoderOptions.maxRunPositions; Infinity: no limit). */
  get maxRunPositions(): number {
    return this.maxRun;
  }

  /** The most positions (prompt + answer) one sequence may have. */
  get maxPositions(): number {
    return this.shape.maxPositions;
  }

  emptyCache(): KvCache {
    const { kvHeads, headDim } = this.shape;
    const tensors: Record<string, ort.Tensor> = {};
    for (const n of this.pastNames) tensors[n] = kvTensor(this.kv, this.kv.alloc(0), [1, kvHeads, 0, headDim]);
    return new KvCache(tensors, 0);
  }

  /**
   * Runs `embeds` ([seqLen, hidden]) after the cached prefix `past` (which stays valid); `keep` says whose
   * logits come back (generation needs the last position's; `minigpt verify` compares all of them).
   */
  async forward(embeds: Float32Array, past: KvCache | null, signal?: AbortSignal, keep: KeepLogits = 'last'): Promise<ForwardResult> {
    const { hidden, maxPositions } = this.shape;
    const seqLen = embeds.length / hidden;
    if (!Number.isInteger(seqLen) || seqLen === 0)
      throw new Error(`inputs_embeds of ${embeds.length} values is not a whole number of ${hidden}-wide rows`);
    const total = (past?.length ?? 0) + seqLen;
    if (total > maxPositions) throw new ContextLengthError(total, maxPositions);
    signal?.throwIfAborted();
    const r = await (this.mode === 'append'
      ? this.forwardAppend(embeds, seqLen, past, keep, signal)
      : this.forwardPresent(embeds, seqLen, past, keep, signal));
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
   * nothing is copied; otherwise rows are copied first ('append': into free rows of the batch's block where
   * it has them, else into a new one, see placeRows; 'present': into new storage).
   */
  async step(
    states: readonly KvCache[],
    tokens: readonly number[],
    signal?: AbortSignal,
  ): Promise<{ states: KvCache[]; logits: Float32Array[] }> {
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

  /**
   * New storage: capacity for `need` positions plus room to grow (a quarter, at least 64 positions). A bound
   * function, so that every step hands it to placeRows without making a closure.
   */
  private readonly newBlock = (rows: number, need: number): AppendBlock =>
    new AppendBlock(this.pastNames, rows, growCapacity(need, this.shape.maxPositions), this.shape.kvHeads, this.shape.headDim, this.pool);

  private async forwardAppend(
    embeds: Float32Array,
    seqLen: number,
    past: KvCache | null,
    keep: KeepLogits,
    signal?: AbortSignal,
  ): Promise<ForwardResult> {
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
        copyInto(block, 0, past);
      }
    }
    // A new state needs a reference before anything can fail, so that a new block is freed on error.
    const state = new KvCache(block, total, row);
    try {
      // A long prompt runs in chunks into the storage made for all of it (only the last chunk's logits are
      // kept): a run's outputs (the new keys and values of every layer) and activations grow with its length,
      // and at the full 7B shape a 273-token prefill in one run raised the process's RSS by 1.35 GB, in runs
      // of 128 by 0.94 GB, in no more time (docs/quantisation.md, "Memory"). Runs are never longer than
      // maxRun, whose chunks each keep their logits when every position's are asked for.
      const chunk = Math.min(keep === 'last' ? this.prefillChunk : seqLen, this.maxRun);
      const kept: Float32Array[] = [];
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
          position_ids: new ort.Tensor(
            'int64',
            BigInt64Array.from({ length: n }, (_, i) => BigInt(at + i)),
            [1, n],
          ),
        };
        const out = await this.run(feeds, this.fetches);
        for (let i = 0; i < this.pastNames.length; i++)
          block.write(this.pastNames[i], out[this.newNames[i]].data as KvArray, 0, n, row, at);
        block.written[row] = at + n;
        if (signal?.aborted) signal.throwIfAborted();
        if (keep === 'last') kept.length = 0;
        kept.push(out.logits.data as Float32Array);
      }
      return { logits: joinRuns(kept), state };
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
      f = Object.fromEntries(names.map((n) => [n, kvTensor(this.kv, this.kv.alloc(rows * kvHeads * positions * headDim), dims)]));
      this.zeroFeeds.set(key, f);
    }
    return f;
  }

  /** 'present' mode's cache input, when the graph has one: see zeroKv. */
  private maskedCache(rows: number): Record<string, ort.Tensor> {
    return this.cacheNames ? this.zeroKv(this.cacheNames, 1, rows) : {};
  }

  private async stepAppend(
    embeds: readonly Float32Array[],
    states: readonly KvCache[],
  ): Promise<{ states: KvCache[]; logits: Float32Array[] }> {
    const B = states.length;
    const { hidden, vocabSize: V } = this.shape;
    const { block, slots, k, copied } = placeRows(states, this.batchRows, this.newBlock);
    if (copied) this.stats.repacks++;
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
        const data = out[this.newNames[i]].data as KvArray;
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

  private async forwardPresent(
    embeds: Float32Array,
    seqLen: number,
    past: KvCache | null,
    keep: KeepLogits,
    signal?: AbortSignal,
  ): Promise<ForwardResult> {
    const { hidden } = this.shape;
    // A row of a batch is copied out first: the graph takes one unpadded row here.
    let cache = past === null ? this.emptyCache() : past.standalone ? past : await this.prefix(past);
    // Runs of at most maxRun positions, each after the previous one's present (freed once used).
    const kept: Float32Array[] = [];
    let done = false;
    try {
      for (let s = 0; s < seqLen; s += this.maxRun) {
        const n = Math.min(this.maxRun, seqLen - s);
        const r = await this.presentRun(n === seqLen ? embeds : embeds.subarray(s * hidden, (s + n) * hidden), n, cache, keep);
        if (cache !== past) cache.dispose();
        cache = r.state;
        if (keep === 'last') kept.length = 0;
        kept.push(r.logits);
        signal?.throwIfAborted();
      }
      done = true;
      return { logits: joinRuns(kept), state: cache };
    } finally {
      if (!done && cache !== past) cache.dispose();
    }
  }

  /** One 'present' mode run of `seqLen` positions after `cache` (which stays valid). */
  private async presentRun(embeds: Float32Array, seqLen: number, cache: KvCache, keep: KeepLogits): Promise<ForwardResult> {
    const { hidden } = this.shape;
    const total = cache.length + seqLen;
    const lead = this.cacheNames ? 1 : 0; // the masked cache position (see maskedCache)
    const mask = lead ? new BigInt64Array(total + 1).fill(1n, 1) : this.ones.subarray(0, total);
    const feeds: Record<string, ort.Tensor> = {
      ...this.maskedCache(1),
      ...cache.feeds(),
      ...this.keepFeed(keep),
      inputs_embeds: new ort.Tensor('float32', embeds, [1, seqLen, hidden]),
      attention_mask: new ort.Tensor('int64', mask, [1, total + lead]),
      position_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from({ length: seqLen }, (_, i) => BigInt(cache.length + i)),
        [1, seqLen],
      ),
    };
    const out = await this.run(feeds, this.presentFetches);
    return { logits: out.logits.data as Float32Array, state: new KvCache(this.present(out), total) };
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
      past = await packRows(states, T, this.presentLayout);
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
      position_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(states, (s) => BigInt(s.length)),
        [B, 1],
      ),
    };
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await this.run(feeds, this.presentFetches);
    } finally {
      if (!same) for (const t of Object.values(past)) t.dispose();
    }
    const next = new PresentBlock(this.present(out), B, T + 1);
    const nextStates = states.map((s, b) => new KvCache(next, s.length + 1, b));
    const all = out.logits.data as Float32Array;
    return { states: nextStates, logits: nextStates.map((_, b) => all.subarray(b * V, (b + 1) * V)) };
  }

  private async run(feeds: Record<string, ort.Tensor>, fetches: string[] | undefined): Promise<ort.InferenceSession.OnnxValueMapType> {
    const t0 = performance.now();
    try {
      return await (fetches ? this.session.run(feeds, fetches) : this.session.run(feeds));
    } finally {
      this.stats.runs++;
      this.stats.runMs += performance.now() - t0;
    }
  }

  /** A 'present' mode run's cache; the present_new outputs fetched with it (device memory) are freed. */
  private present(out: ort.InferenceSession.OnnxValueMapType): Record<string, ort.Tensor> {
    const present: Record<string, ort.Tensor> = {};
    for (let i = 0; i < this.shape.layers; i++) {
      present[`past_key_values.${i}.key`] = out[`present.${i}.key`];
      present[`past_key_values.${i}.value`] = out[`present.${i}.value`];
    }
    for (const name of this.newNames) out[name]?.dispose();
    return present;
  }
}

/** The logits of a forward's runs end to end (one run's as they are). */
function joinRuns(parts: Float32Array[]): Float32Array {
  return parts.length === 1 ? parts[0] : concatArrays(Float32Array, parts);
}

/** [n * width] -> n views of `width` values */
function splitRows(data: Float32Array, width: number): Float32Array[] {
  return Array.from({ length: data.length / width }, (_, i) => data.subarray(i * width, (i + 1) * width));
}
