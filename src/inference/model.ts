// A loaded model package: vision encoder, token embedder, decoder and tokenizer, and the one call the
// rest of the bot needs: an image and a prompt in, a stream of answer text out.
import * as ort from 'onnxruntime-node';
import { loadPackage, type ModelJson, type ModelPackage } from './package.js';
import { SessionFactory, type ProviderChoice, type ProviderName } from './providers.js';
import { LlamaDecoder, TokenEmbedder, type KvCache } from './decoder.js';
import { buildContext, type ContextEmbeds } from './context.js';
import { loadTokenizer, type TextTokenizer } from './tokenizer.js';
import { generate, type GenerationEvent, type GenerationOptions } from './generation/index.js';
import { preprocessImage } from '../image/preprocess.js';

export interface LoadOptions {
  provider?: ProviderChoice;
  threads?: number;
  log?: (line: string) => void;
  /**
   * Test hook (default: env MINIGPT_TEST_FORCED_ANSWER): every answer is forced to this text, token by
   * token through the real decoder, streaming and stop handling, so tests can feed known model output.
   */
  forcedAnswer?: string;
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
}

export type AnswerEvent = GenerationEvent | { type: 'timings'; timings: Timings };

export class VisionEncoder {
  constructor(private readonly session: ort.InferenceSession, private readonly meta: ModelJson) {}

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
  ) {}

  get meta(): ModelJson {
    return this.pkg.meta;
  }

  static async load(dir: string, opts: LoadOptions = {}): Promise<MiniGPT> {
    const pkg = await loadPackage(dir);
    const { meta } = pkg;
    const factory = new SessionFactory({ provider: opts.provider ?? 'auto', threads: opts.threads, log: opts.log });
    const presentNames = Array.from({ length: meta.llm.layers }, (_, i) => [`present.${i}.key`, `present.${i}.value`]).flat();
    const decoderSession = await factory.open(pkg.path(meta.graphs.decoder.file), presentNames);
    const visionSession = await factory.open(pkg.path(meta.graphs.vision.file));
    const embedSession = await factory.open(pkg.path(meta.graphs.embed.file));
    const tokenizer = await loadTokenizer(pkg.path(meta.tokenizer), { bosId: meta.llm.bosId, eosId: meta.llm.eosId });
    const embedder = new TokenEmbedder(embedSession, meta.llm.hidden);
    const forcedAnswer = opts.forcedAnswer ?? process.env.MINIGPT_TEST_FORCED_ANSWER;
    if (forcedAnswer) opts.log?.('test hook MINIGPT_TEST_FORCED_ANSWER is set: every answer is forced');
    return new MiniGPT(
      pkg,
      factory.provider ?? 'cpu',
      new VisionEncoder(visionSession, meta),
      embedder,
      new LlamaDecoder(decoderSession, embedder, meta.llm),
      tokenizer,
      [decoderSession, visionSession, embedSession],
      forcedAnswer ? tokenizer.encode(forcedAnswer, { addBos: false }) : undefined,
    );
  }

  /** Image bytes (any format sharp reads) -> image embeddings. */
  async encodeImage(image: Uint8Array): Promise<{ embeds: Float32Array; width: number; height: number; preprocessMs: number; visionMs: number }> {
    const t0 = performance.now();
    const { vision } = this.meta;
    const pre = await preprocessImage(image, { size: vision.imageSize, mean: vision.mean, std: vision.std });
    const t1 = performance.now();
    const embeds = await this.vision.encode(pre.pixelValues);
    return { embeds, width: pre.width, height: pre.height, preprocessMs: t1 - t0, visionMs: performance.now() - t1 };
  }

  async context(prompt: string, images: readonly Float32Array[]): Promise<ContextEmbeds> {
    return buildContext(prompt, this.meta.prompt.imageToken, images, this.tokenizer, this.embedder);
  }

  /** Prefills the context; returns the KV state and the logits of the last position. */
  async prefill(ctx: ContextEmbeds, signal?: AbortSignal): Promise<{ state: KvCache; logits: Float32Array; all: Float32Array }> {
    const r = await this.decoder.forward(ctx.embeds, null, signal);
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
   */
  async *answer(prompt: string, images: readonly Float32Array[], opts: Partial<GenerationOptions>, signal?: AbortSignal): AsyncGenerator<AnswerEvent> {
    const t0 = performance.now();
    const ctx = await this.context(prompt, images);
    const maxNew = opts.maxNewTokens ?? 300;
    const limit = this.meta.llm.maxPositions;
    if (ctx.length + 1 > limit) throw new Error(`the prompt is ${ctx.length} tokens long; this model handles at most ${limit}`);
    const genOpts = this.generationOptions({ ...opts, maxNewTokens: Math.min(maxNew, limit - ctx.length) });
    let pre: Awaited<ReturnType<MiniGPT['prefill']>>;
    try {
      pre = await this.prefill(ctx, signal);
    } catch (err) {
      // Cancelled before the first token: the same ending as a cancellation during decoding.
      if (!signal?.aborted) throw err;
      yield { type: 'done', text: '', tokenIds: [], finishReason: 'aborted', steps: 0 };
      return;
    }
    const tPrefill = performance.now();
    let tFirst = 0;
    let newTokens = 0;
    // Upstream decodes answers with skip_special_tokens=True.
    const decoder = { decode: (ids: readonly number[]) => this.tokenizer.decode(ids, { skipSpecialTokens: true }) };
    for await (const ev of generate(this.decoder, { state: pre.state, logits: pre.logits }, decoder, genOpts, signal)) {
      if (ev.type === 'text' && !tFirst) tFirst = performance.now();
      if (ev.type === 'done') newTokens = ev.tokenIds.length;
      yield ev;
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
        promptTokens: ctx.length,
        newTokens,
      },
    };
  }

  async close(): Promise<void> {
    await Promise.all(this.sessions.map((s) => s.release()));
  }
}
