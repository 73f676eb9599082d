// A request's image, resolved and encoded: the attached one (checked, hashed) or the conversation's stored
// one, its embeddings from memory, from the cache shared with other processes, or from the vision encoder.
// Concurrent requests with the same new image share one encoding (docs/architecture.md, "The path of one
// request", step 3).
import type { MiniGPT } from '../inference/model.js';
import { decodeImageRgb, ImageInputError } from '../image/preprocess.js';
import { sha256Hex, type ConversationStore } from './store.js';
import { Failure } from './failure.js';
import { formatBytes } from '../util/bytes.js';
import { LruMap } from '../util/lru.js';
import type { ConversationState, ImageRef } from './types.js';

export interface EncodedImage {
  embeds: Float32Array;
  width: number;
  height: number;
}

/** Image embeddings by the image's content hash, shared between processes; failures are misses, never errors. */
export interface SharedImageCache {
  get(hash: string): Promise<EncodedImage | undefined>;
  set(hash: string, image: EncodedImage): Promise<void>;
  /** the image was deleted from the store: its embeddings go too */
  delete(hash: string): Promise<void>;
}

/** The embeddings and what they cost (`cached`: no vision encoder run for this request). */
export interface Encoding {
  encoded: EncodedImage;
  cached: boolean;
  visionMs: number;
  preprocessMs: number;
}

/** The image a turn is answered about; `data` only where this request had the bytes at hand. */
export interface TurnImage extends ImageRef {
  data?: Uint8Array;
}

export interface ResolvedImage extends Encoding {
  image: TurnImage;
}

export interface ImageInputOptions {
  model: Pick<MiniGPT, 'encodeImage' | 'meta'>;
  repo: Pick<ConversationStore, 'getImage'>;
  /** encoded images kept in memory */
  cacheSize: number;
  shared: SharedImageCache | undefined;
  /** largest accepted image file, in bytes */
  maxBytes: number;
  /** conversations are forgotten this long after their last turn (ms): said when a thread has no image */
  retentionMs?: number;
}

const MESSAGES = {
  noImage:
    'There is no image in this conversation yet: attach an image to your message, then ask about it (follow-ups in the same thread keep it).',
  imageGone: 'The image of this conversation is no longer stored: please send it again.',
};

/** `ms` in words for a user: 30 days, 12 hours, 0.4 seconds. */
function duration(ms: number): string {
  const units: [string, number][] = [
    ['day', 86_400_000],
    ['hour', 3_600_000],
    ['minute', 60_000],
  ];
  const [unit, size] = units.find(([, size]) => ms >= size) ?? ['second', 1000];
  const n = Math.round((ms / size) * 10) / 10;
  return `${n} ${unit}${n === 1 ? '' : 's'}`;
}

export class ImageInput {
  private readonly model: Pick<MiniGPT, 'encodeImage' | 'meta'>;
  private readonly repo: Pick<ConversationStore, 'getImage'>;
  private readonly lru: LruMap<string, EncodedImage>;
  private readonly shared: SharedImageCache | undefined;
  private readonly maxBytes: number;
  private readonly noImage: string;
  /** images being encoded, so that concurrent requests with the same new image share one encoding */
  private readonly encoding = new Map<string, Promise<EncodedImage>>();

  constructor(opts: ImageInputOptions) {
    this.model = opts.model;
    this.repo = opts.repo;
    this.lru = new LruMap(Math.max(0, Math.floor(opts.cacheSize)));
    this.shared = opts.shared;
    this.maxBytes = opts.maxBytes;
    // A thread that had an image before its conversation was forgotten looks like one that never had one.
    this.noImage = opts.retentionMs
      ? `There is no image in this conversation (none was sent yet, or it was forgotten: conversations are kept ${duration(opts.retentionMs)} after their last message): attach an image to your message, then ask about it (follow-ups in the same thread keep it).`
      : MESSAGES.noImage;
  }

  /**
   * Drops the embeddings of an image deleted from the store (in memory, and with `shared` in the shared cache): what
   * was derived from it goes with it.
   */
  async forget(hash: string, shared: boolean): Promise<void> {
    this.lru.delete(hash);
    if (shared && this.shared) await this.shared.delete(hash);
  }

  /** Drops the embeddings in memory not used since `cutoff` (ms since the epoch); how many. */
  dropUnusedSince(cutoff: number): number {
    return this.lru.dropUnusedSince(cutoff).length;
  }

  /**
   * The image of this turn: an attached one (which starts the conversation afresh), else the conversation's
   * stored one. Undefined only for a stateless request without an image (the language model answers alone);
   * a thread without any image is `no_image`.
   */
  async resolve(
    attached: Uint8Array | undefined,
    prev: ConversationState | undefined,
    stateless: boolean,
  ): Promise<ResolvedImage | undefined> {
    if (attached !== undefined) return this.fresh(attached);
    if (stateless) return undefined;
    if (prev) return this.stored(prev.image);
    throw new Failure('no_image', this.noImage);
  }

  private async fresh(attached: unknown): Promise<ResolvedImage> {
    const data = this.checkBytes(attached);
    const hash = sha256Hex(data);
    const encoding = await this.encode(hash, data);
    return { ...encoding, image: { hash, width: encoding.encoded.width, height: encoding.encoded.height, bytes: data.byteLength, data } };
  }

  /**
   * An attached image checked and measured (decoded, after EXIF orientation) without the vision encoder: what a
   * conversation stores of it. ImageInputError if it is not an image the model would take.
   */
  async check(data: unknown): Promise<TurnImage> {
    const bytes = this.checkBytes(data);
    const { width, height } = await decodeImageRgb(bytes);
    return { hash: sha256Hex(bytes), width, height, bytes: bytes.byteLength, data: bytes };
  }

  /** An attached image's bytes, of an accepted size. */
  private checkBytes(data: unknown): Uint8Array {
    // The manager is a public API: JavaScript callers are not held to the request's types.
    if (!(data instanceof Uint8Array)) throw new ImageInputError('Not an image: expected binary image data.');
    if (data.byteLength > this.maxBytes) {
      throw new ImageInputError(
        `Image too large: the file has ${formatBytes(data.byteLength)}; the limit is ${formatBytes(this.maxBytes)}.`,
      );
    }
    return data;
  }

  private async stored(ref: ImageRef): Promise<ResolvedImage> {
    const image: TurnImage = { ...ref };
    // Embeddings in memory make the stored bytes unnecessary: the store is not read for them.
    const hit = this.lru.get(ref.hash);
    if (hit) return { image, encoded: hit, cached: true, visionMs: 0, preprocessMs: 0 };
    const stored = await this.repo.getImage(ref.hash);
    if (!stored) throw new Failure('no_image', MESSAGES.imageGone);
    image.data = stored.data;
    return { image, ...(await this.encode(ref.hash, stored.data)) };
  }

  /**
   * Image embeddings from the cache, or the vision encoder (then cached). Concurrent requests with the same
   * image share one encoding.
   */
  private async encode(hash: string, data: Uint8Array): Promise<Encoding> {
    const hit = this.lru.get(hash);
    if (hit) return { encoded: hit, cached: true, visionMs: 0, preprocessMs: 0 };
    const pending = this.encoding.get(hash);
    if (pending) return { encoded: await pending, cached: true, visionMs: 0, preprocessMs: 0 };
    const fromShared = this.shared ? await this.shared.get(hash).catch(() => undefined) : undefined;
    // Another process may run a different model: embeddings of the wrong shape are a miss.
    if (fromShared && fromShared.embeds.length === this.model.meta.vision.imageTokens * this.model.meta.llm.hidden) {
      this.lru.set(hash, fromShared);
      return { encoded: fromShared, cached: true, visionMs: 0, preprocessMs: 0 };
    }
    const work = this.model.encodeImage(data);
    const shared = work.then((r) => ({ embeds: r.embeds, width: r.width, height: r.height }));
    this.encoding.set(hash, shared);
    shared.catch(() => {});
    try {
      const r = await work;
      const encoded = await shared;
      this.lru.set(hash, encoded);
      if (this.shared) void this.shared.set(hash, encoded).catch(() => {});
      return { encoded, cached: false, visionMs: r.visionMs, preprocessMs: r.preprocessMs };
    } finally {
      this.encoding.delete(hash);
    }
  }
}
