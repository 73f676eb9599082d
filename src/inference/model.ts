// A loaded model package: vision encoder, token embedder, decoder and tokenizer, and the one call the
// rest of the bot needs: an image and a prompt in, a stream of answer text out.
import * as ort from 'onnxruntime-node';
import { loadPackage, type ModelJson, type ModelPackage } from './package.js';
import { SessionFactory, type ProviderChoice, type ProviderName } from './providers.js';
import { DeviceKvCopier } from './kv-device.js';
import { LlamaDecoder } from './decoder.js';
import { TokenEmbedder } from './embedder.js';
import type { KvCache } from './kv-cache.js';
import { buildContext, embedRows, promptSegmentIds, PromptError, type ContextEmbeds } from './context.js';
import { DecodeBatcher } from './batching.js';
import { PrefillHandoff } from './prefill-handoff.js';
import { CachedContext, commonPrefixRows, layoutLength, type ContextLayout, type SharedContexts } from './kv-reuse.js';
import { loadTokenizer, type TextTokenizer } from './tokenizer.js';
import { generate, type GenerationEvent, type GenerationOptions } from './generation/index.js';
import { preprocessImage } from '../image/preprocess.js';
import { withoutOutputs } from './graph-prune.js';
import { attentionGraph, checkAttention, describeAttentionCheck, type AttentionCheck } from './attention-check.js';
import { readFile } from 'node:fs/promises';
import { readThrough } from './read-through.js';
import { dirname } from 'node:path';

export interface LoadOptions {
  provider?: ProviderChoice;
  threads?: number;
  log?: (line: string) => void;
  /**
   * Test hook (default: env MINIGPT_TEST_FORCED_ANSWER): every answer is forced to this text, token by
   * token through the real decoder, streaming and stop handling, so tests can feed known model output.
   */
  forcedAnswer?: string;
  /** most sequences decoded together in one batched step (default 8) */
  maxBatch?: number;
  /** the most prompt positions one prefill run takes on the CPU (default 128; DecoderOptions.prefillChunk) */
  prefillChunk?: number;
  /**
   * The most new positions one decoder run may take (DecoderOptions.maxRunPositions). Default: for a fused
   * package on a GPU provider, what fusedAttentionCheck measures; otherwise no limit.
   */
  maxRunPositions?: number;
  /** write onnxruntime's profile of each session to this folder when the model is closed (profile.ts) */
  profileDir?: string;
  /**
   * Read the token embedding table's file into the OS page cache in the background after loading (read-through.ts;
   * MiniGPT.tableRead), so that no token's first lookup waits for the disk. For long-running servers.
   */
  readEmbeddingsThrough?: boolean;
}

/** How answer() may reuse and keep the KV cache of a conversation's turns. */
export interface AnswerContextOptions {
  /** identity of each image (e.g. its content hash): cached image rows are reused only for the same key */
  imageKeys?: readonly (string | undefined)[];
  /**
   * The context of this conversation's previous turn. answer() owns it from here: it prefills only the rows
   * after the longest common prefix of token ids and image rows (a full prefill when they diverge at once),
   * then frees it.
   */
  reuse?: CachedContext;
  /**
   * Other conversations' kept contexts: where one has more leading rows in common with this prompt than
   * `reuse` (e.g. the same image asked about in another thread), those rows are copied from it instead of
   * prefilled (the same rows a prefill would compute: attention is causal).
   */
  shared?: SharedContexts;
  /**
   * Receives this answer's context (prompt and every answer token fed to the model) when the answer ends
   * normally (greedy or sampling; not beam search, not cancelled); the receiver owns it.
   */
  keep?: (context: CachedContext) => void;
}

export interface Timings {
  preprocessMs: number;
  visionMs: number;
  prefillMs: number;
  firstTokenMs: number;
  decodeMs: number;
  totalMs: number;
  promptTokens: number;
  newTokens: number;
  /** prompt rows taken from the previous turn's KV cache, and rows prefilled */
  reusedTokens: number;
  prefillTokens: number;
}

export type ModelEvent = GenerationEvent | { type: 'timings'; timings: Timings };

export class VisionEncoder {
  constructor(
    private readonly session: ort.InferenceSession,
    private readonly meta: ModelJson,
  ) {}

  /** pixel_values [1,3,S,S] -> image embeddings [imageTokens, hidden] */
  async encode(pixelValues: Float32Array): Promise<Float32Array> {
    const S = this.meta.vision.imageSize;
    if (pixelValues.length !== 3 * S * S) throw new Error(`pixel_values must be 3x${S}x${S}, got ${pixelValues.length} values`);
    const input = new ort.Tensor('float32', pixelValues, [1, 3, S, S]);
    const out = await this.session.run({ pixel_values: input }, ['image_embeds']);
    return (await out.image_embeds.getData()) as Float32Array;
  }

  /** Outputs of the vision graph besides image_embeds (e.g. `ln_vision_output`, `query_output`) that it declares. */
  get stageNames(): string[] {
    return this.session.outputNames.filter((n) => n !== 'image_embeds');
  }

  /** Runs the graph once and returns image_embeds plus the requested stage outputs, for `minigpt verify`. */
  async encodeStages(pixelValues: Float32Array, names: readonly string[]): Promise<Record<string, Float32Array>> {
    const S = this.meta.vision.imageSize;
    const input = new ort.Tensor('float32', pixelValues, [1, 3, S, S]);
    const out = await this.session.run({ pixel_values: input }, ['image_embeds', ...names]);
    const result: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(out)) result[k] = (await v.getData()) as Float32Array;
    return result;
  }
}

/**
 * A warning for an int8 / int4 package converted before `--accuracy-level` (MatMulNBits with float32 compute)
 * run on the CPU, whose int8 kernel is then a slow fallback: converting it again is 3x (int4) to ~47x (int8)
 * faster per decoding step (docs/quantisation.md).
 */
export function slowQuantisation(meta: ModelJson, provider: ProviderName): string | null {
  const q = meta.weights?.quantization;
  if (!q || provider !== 'cpu' || (q.accuracyLevel ?? 0) === 4) return null;
  return (
    `${meta.name}: ${meta.dtype} package with MatMulNBits accuracy level ${q.accuracyLevel ?? 0} (float32 compute) on the CPU: ` +
    `decoding is ${meta.dtype === 'int8' ? 'tens of times' : 'about 3 times'} slower than with int8 compute; ` +
    `convert it again (minigpt convert --dtype ${meta.dtype}, accuracy level 4 by default; docs/quantisation.md)`
  );
}

/**
 * On WebGPU the KV cache stays in GPU memory ('present' mode), which never reads the decoder's `present_new.*`:
 * the graph is opened without them and the nodes only they needed (pruned in memory; graph-prune.ts), so a
 * step neither computes nor allocates them. Elsewhere the package's graph as it is ('append' mode uses them).
 */
async function openDecoder(pkg: ModelPackage, factory: SessionFactory, layers: readonly number[]): Promise<ort.InferenceSession> {
  const file = pkg.path(pkg.meta.graphs.decoder.file);
  const present = layers.flatMap((i) => [`present.${i}.key`, `present.${i}.value`]);
  if (factory.provider !== 'webgpu') return factory.open(file, present, { name: 'decoder' });
  const { model } = withoutOutputs(await readFile(file), (name) => name.startsWith('present_new.'));
  return factory.open(model, present, { dataDir: dirname(file), name: 'decoder' });
}

/**
 * A fused decoder's MultiHeadAttention checked on the provider it will run on (attention-check.ts): the CPU
 * provider's kernel is the reference, and plain graphs have no such kernel, so only fused packages elsewhere.
 */
async function fusedAttentionCheck(meta: ModelJson, factory: SessionFactory, log?: (line: string) => void): Promise<AttentionCheck | null> {
  const provider = factory.provider;
  if (meta.graph !== 'fused' || provider === null || provider === 'cpu') return null;
  const shape = { heads: meta.llm.heads, headDim: meta.llm.headDim, dtype: meta.compute ?? 'float32' };
  // (a check that cannot run leaves the decoder as it is: its own sessions say what is wrong, if anything)
  let session: ort.InferenceSession | undefined;
  try {
    session = await factory.open(attentionGraph(shape), [], { arena: false, name: 'attention-check' });
    const check = await checkAttention(session, shape);
    log?.(describeAttentionCheck(check, provider));
    return check;
  } catch (err) {
    log?.(
      `${provider}: MultiHeadAttention could not be checked (${err instanceof Error ? err.message.split('\n')[0] : String(err)}); prompts run whole`,
    );
    return null;
  } finally {
    await session?.release();
  }
}

export class MiniGPT {
  private constructor(
    readonly pkg: ModelPackage,
    readonly provider: ProviderName,
    readonly vision: VisionEncoder,
    readonly embedder: TokenEmbedder,
    readonly decoder: LlamaDecoder,
    readonly tokenizer: TextTokenizer,
    private readonly sessions: ort.InferenceSession[],
    private readonly forcedTokens: number[] | undefined,
    /** what fusedAttentionCheck measured at load (null: not run: a plain package, the CPU provider, or overridden) */
    readonly attentionCheck: AttentionCheck | null,
    /** all model work of answer() and encodeImage() goes through it: decoding steps of concurrent answers are batched */
    readonly engine: DecodeBatcher,
    tableFiles: readonly string[],
  ) {
    // (a failure loses only the head start: the session has opened the same files)
    this.tableRead = tableFiles.length ? readThrough(tableFiles, this.closing.signal).catch(() => 0) : Promise.resolve(0);
  }

  private readonly closing = new AbortController();
  /** finished prefills held for the prompts waiting to prefill the same rows (see answer()) */
  readonly handoff = new PrefillHandoff();
  /**
   * The background read of the embedding table's files (LoadOptions.readEmbeddingsThrough): the bytes read; 0 when
   * not asked for or failed, fewer when the model was closed first.
   */
  readonly tableRead: Promise<number>;

  /**
   * The test hook (LoadOptions.forcedAnswer, env MINIGPT_TEST_FORCED_ANSWER) forces every answer: reports say so
   * (`forced_answer: true`), so that no number made with it passes for the model's.
   */
  get forcedAnswer(): boolean {
    return this.forcedTokens !== undefined;
  }

  get meta(): ModelJson {
    return this.pkg.meta;
  }

  static async load(dir: string, opts: LoadOptions = {}): Promise<MiniGPT> {
    const pkg = await loadPackage(dir);
    const { meta } = pkg;
    const factory = new SessionFactory({
      provider: opts.provider ?? 'auto',
      threads: opts.threads,
      profileDir: opts.profileDir,
      log: opts.log,
    });
    // The vision graph first: it settles the provider, which decides how the decoder is opened.
    const visionSession = await factory.open(pkg.path(meta.graphs.vision.file), [], { arena: false, name: 'vision' });
    const layers = Array.from({ length: meta.llm.layers }, (_, i) => i);
    const decoderSession = await openDecoder(pkg, factory, layers);
    // The token embedding is a table lookup, on the CPU whatever the provider: on a GPU every lookup (each new
    // token of a decoding step) would be a session run ending in a read-back, to be uploaded again with the
    // decoder's inputs; and the table (0.5 GB at 7B in fp32) stays out of GPU memory.
    const embedSession = await factory.open(pkg.path(meta.graphs.embed.file), [], { host: true, name: 'embed' });
    const tokenizer = await loadTokenizer(pkg.path(meta.tokenizer), { bosId: meta.llm.bosId, eosId: meta.llm.eosId });
    const embedder = new TokenEmbedder(embedSession, meta.llm.hidden, { provider: factory.providerOf(embedSession) });
    // WebGPU hands present.* back as device buffers: the cache then stays on the GPU ('present' mode), and
    // its rows are copied there too.
    const onGpu = factory.provider === 'webgpu';
    const attention = opts.maxRunPositions === undefined ? await fusedAttentionCheck(meta, factory, opts.log) : null;
    const pastNames = layers.flatMap((i) => [`past_key_values.${i}.key`, `past_key_values.${i}.value`]);
    const decoder = new LlamaDecoder(decoderSession, embedder, meta.llm, {
      mode: onGpu ? 'present' : undefined,
      deviceKv: onGpu ? new DeviceKvCopier(pastNames, (graph, outputs) => factory.open(graph, outputs, { name: 'kv-gather' })) : undefined,
      batchRows: opts.maxBatch,
      prefillChunk: opts.prefillChunk,
      maxRunPositions: opts.maxRunPositions ?? attention?.maxRunPositions ?? undefined,
    });
    const slow = slowQuantisation(meta, factory.provider ?? 'cpu');
    if (slow) opts.log?.(slow);
    const forcedAnswer = opts.forcedAnswer ?? process.env.MINIGPT_TEST_FORCED_ANSWER;
    if (forcedAnswer) opts.log?.('test hook MINIGPT_TEST_FORCED_ANSWER is set: every answer is forced');
    return new MiniGPT(
      pkg,
      factory.provider ?? 'cpu',
      new VisionEncoder(visionSession, meta),
      embedder,
      decoder,
      tokenizer,
      [decoderSession, visionSession, embedSession],
      forcedAnswer ? tokenizer.encode(forcedAnswer, { addBos: false }) : undefined,
      attention,
      new DecodeBatcher(decoder, { maxBatch: opts.maxBatch }),
      opts.readEmbeddingsThrough ? pkg.meta.graphs.embed.data.map((f) => pkg.path(f)) : [],
    );
  }

  /** Image bytes (any format sharp reads) -> image embeddings. */
  async encodeImage(
    image: Uint8Array,
  ): Promise<{ embeds: Float32Array; width: number; height: number; preprocessMs: number; visionMs: number }> {
    const t0 = performance.now();
    const { vision } = this.meta;
    const pre = await preprocessImage(image, { size: vision.imageSize, mean: vision.mean, std: vision.std });
    const t1 = performance.now();
    const embeds = await this.engine.exclusive(() => this.vision.encode(pre.pixelValues));
    return { embeds, width: pre.width, height: pre.height, preprocessMs: t1 - t0, visionMs: performance.now() - t1 };
  }

  async context(prompt: string, images: readonly Float32Array[]): Promise<ContextEmbeds> {
    return buildContext(prompt, this.meta.prompt.imageToken, images, this.tokenizer, this.embedder);
  }

  /** Prefills the context; returns the KV state and the logits of the last position. */
  async prefill(ctx: ContextEmbeds, signal?: AbortSignal): Promise<{ state: KvCache; logits: Float32Array }> {
    const r = await this.decoder.forward(ctx.embeds, null, signal);
    return { state: r.state, logits: r.logits.slice() };
  }

  /** Prefills the context and returns the logits of every position, [length, vocab] (for `minigpt verify`). */
  async prefillAll(ctx: ContextEmbeds, signal?: AbortSignal): Promise<{ state: KvCache; logits: Float32Array; all: Float32Array }> {
    const r = await this.decoder.forward(ctx.embeds, null, signal, 'all');
    const V = this.meta.llm.vocabSize;
    return { state: r.state, logits: r.logits.slice((ctx.length - 1) * V, ctx.length * V), all: r.logits };
  }

  /** Default stop conditions of the package merged into the caller's options. */
  generationOptions(opts: Partial<GenerationOptions>): GenerationOptions {
    const p = this.meta.prompt;
    return {
      maxNewTokens: 300,
      ...opts,
      stopIds: opts.stopIds ?? p.stopIds,
      stopStrings: opts.stopStrings ?? p.stopStrings,
      ...(this.forcedTokens ? { forceTokens: this.forcedTokens } : {}),
    };
  }

  /**
   * Answers a full prompt (with `imageToken` placeholders) about already-encoded images, streaming text
   * events, then one `timings` event. Aborting `signal` stops at once and frees the KV cache.
   * Decoding steps go through `engine`, batched with whatever other answers are decoding at the same time;
   * `context` reuses the previous turn's KV cache and keeps this one's (see AnswerContextOptions).
   */
  async *answer(
    prompt: string,
    images: readonly Float32Array[],
    opts: Partial<GenerationOptions>,
    signal?: AbortSignal,
    context: AnswerContextOptions = {},
  ): AsyncGenerator<ModelEvent> {
    const t0 = performance.now();
    let reuse = context.reuse;
    try {
      const { hidden } = this.meta.llm;
      const segmentIds = promptSegmentIds(prompt, this.meta.prompt.imageToken, images.length, this.tokenizer);
      images.forEach((img, i) => {
        if (img.length % hidden !== 0) throw new PromptError(`image ${i} embeddings are not ${hidden}-wide rows`);
      });
      const layout: ContextLayout = {
        segments: segmentIds,
        images: images.map((img, i) => ({ key: context.imageKeys?.[i], rows: img.length / hidden })),
      };
      const length = layoutLength(layout);
      const maxNew = opts.maxNewTokens ?? 300;
      const limit = this.meta.llm.maxPositions;
      if (length + 1 > limit) throw new Error(`the prompt is ${length} tokens long; this model handles at most ${limit}`);
      const genOpts = this.generationOptions({ ...opts, maxNewTokens: Math.min(maxNew, limit - length) });

      // The longest common prefix with the previous turn, or a longer one with another kept context or with a
      // prefill that just ran, is not prefilled again (at least the last row is: its logits start the answer).
      // Chosen when this prompt's turn to prefill comes (prefills run one at a time, in order), so that a prompt
      // waiting behind one that starts alike takes its rows.
      const own = reuse ? Math.min(commonPrefixRows(reuse.layout, layout), length - 1) : 0;
      const waiting = this.handoff.expect(layout, own);
      let from = 0;
      let pre: { state: KvCache; logits: Float32Array };
      try {
        const r = await this.engine.exclusive(async () => {
          let past: KvCache | null = null;
          const kept = context.shared?.longest(layout, length - 1) ?? 0;
          const lender = kept >= this.handoff.longest(layout, length - 1) ? context.shared : this.handoff;
          const lent = lender?.lend(layout, own, length - 1);
          waiting.done();
          try {
            if (lent) past = await this.decoder.prefix(lent.kv, lent.rows);
            else if (reuse && own > 0) past = await this.decoder.prefix(reuse.kv, own);
          } finally {
            lent?.kv.dispose();
            reuse?.dispose();
            reuse = undefined;
          }
          try {
            from = past?.length ?? 0;
            const embeds = await embedRows(segmentIds, images, this.embedder, from);
            const out = await this.decoder.forward(embeds, past, signal);
            // (rows not held for the prompts waiting behind cost them their own prefill, not this answer)
            await this.handoff.offer(layout, out.state, (kv, rows) => this.rowsCopied(kv, rows)).catch(() => undefined);
            return out;
          } finally {
            past?.dispose();
          }
        });
        pre = { state: r.state, logits: r.logits.slice() };
      } catch (err) {
        // Cancelled before the first token: the same ending as a cancellation during decoding.
        if (!signal?.aborted) throw err;
        yield { type: 'done', text: '', tokenIds: [], finishReason: 'aborted', steps: 0 };
        return;
      } finally {
        waiting.done();
      }
      const tPrefill = performance.now();
      let tFirst = 0;
      let doneIds: number[] | undefined;
      // Upstream decodes answers with skip_special_tokens=True.
      const decoder = {
        decode: (ids: readonly number[]) => this.tokenizer.decode(ids, { skipSpecialTokens: true }),
        incremental: () => this.tokenizer.incrementalDecoder?.({ skipSpecialTokens: true }),
      };
      let last: KvCache | undefined;
      const start = { state: pre.state, logits: pre.logits, retain: context.keep ? (s: KvCache) => (last = s) : undefined };
      const leave = this.engine.join();
      try {
        for await (const ev of generate(this.engine, start, decoder, genOpts, signal)) {
          if (ev.type === 'text' && !tFirst) tFirst = performance.now();
          if (ev.type === 'done') doneIds = ev.tokenIds;
          yield ev;
        }
      } finally {
        leave();
        const kept = last as KvCache | undefined;
        if (kept) {
          if (context.keep && doneIds) {
            // A row of a decoding batch is copied out, so that the batch's storage can go.
            let kv: KvCache;
            try {
              kv = await this.decoder.prefix(kept);
            } finally {
              kept.dispose();
            }
            const fed = doneIds.slice(0, kv.length - length);
            const segments = [...segmentIds.slice(0, -1), [...segmentIds[segmentIds.length - 1], ...fed]];
            context.keep(new CachedContext(kv, { segments, images: layout.images }));
          } else {
            kept.dispose();
          }
        }
      }
      const tEnd = performance.now();
      yield {
        type: 'timings',
        timings: {
          preprocessMs: 0,
          visionMs: 0,
          prefillMs: tPrefill - t0,
          firstTokenMs: (tFirst || tEnd) - t0,
          decodeMs: tEnd - tPrefill,
          totalMs: tEnd - t0,
          promptTokens: length,
          newTokens: doneIds?.length ?? 0,
          reusedTokens: from,
          prefillTokens: length - from,
        },
      };
    } finally {
      reuse?.dispose();
    }
  }

  /** The first `rows` positions of `kv` in storage of their own (holding none of `kv`'s). */
  private async rowsCopied(kv: KvCache, rows: number): Promise<KvCache> {
    const view = await this.decoder.prefix(kv, rows);
    try {
      return await this.decoder.clone(view);
    } finally {
      view.dispose();
    }
  }

  /**
   * Brings a conversation's cached context up to `prompt`, the text its next turn's prompt will start with
   * (the history with the last answer as it will be re-tokenised): the rows after their longest common
   * prefix are prefilled now, so that a follow-up prefills only its own new tokens. Takes over `cached`
   * (freed, or reused as the result; null: everything is prefilled); the caller owns the returned context.
   */
  async extendContext(
    cached: CachedContext | null,
    prompt: string,
    images: readonly Float32Array[],
    imageKeys: readonly (string | undefined)[],
    signal?: AbortSignal,
  ): Promise<CachedContext> {
    let owned: CachedContext | undefined = cached ?? undefined;
    let past: KvCache | null = null;
    try {
      const { hidden, maxPositions } = this.meta.llm;
      const segmentIds = promptSegmentIds(prompt, this.meta.prompt.imageToken, images.length, this.tokenizer);
      const layout: ContextLayout = {
        segments: segmentIds,
        images: images.map((img, i) => ({ key: imageKeys[i], rows: img.length / hidden })),
      };
      const length = layoutLength(layout);
      if (length > maxPositions) throw new Error(`the context is ${length} tokens long; this model handles at most ${maxPositions}`);
      const n = cached ? Math.min(commonPrefixRows(cached.layout, layout), length) : 0;
      if (cached && n === length && n === cached.length) {
        owned = undefined;
        return cached;
      }
      past = cached && n > 0 ? await this.decoder.prefix(cached.kv, n) : null;
      owned?.dispose();
      owned = undefined;
      if (n === length) {
        const kv = past!;
        past = null;
        return new CachedContext(kv, layout);
      }
      const embeds = await embedRows(segmentIds, images, this.embedder, n);
      const r = await this.engine.exclusive(() => this.decoder.forward(embeds, past, signal));
      return new CachedContext(r.state, layout);
    } finally {
      owned?.dispose();
      past?.dispose();
    }
  }

  async close(): Promise<void> {
    this.closing.abort();
    await this.tableRead;
    await this.decoder.close();
    await Promise.all(this.sessions.map((s) => s.release()));
  }
}
