// The language model at run time: token embedding lookup and the decoder with its KV cache.
// A KV state is immutable: stepping returns a new one, so beams may share a prefix.
import * as ort from 'onnxruntime-node';
import type { ModelJson } from './package.js';
import type { DecodeState, StepModel } from './generation/types.js';

type LlmShape = ModelJson['llm'];

export class KvCache implements DecodeState {
  private tensors: Record<string, ort.Tensor> | null;

  constructor(tensors: Record<string, ort.Tensor>, readonly length: number) {
    this.tensors = tensors;
  }

  /** The past_key_values feeds for the next run. */
  feeds(): Record<string, ort.Tensor> {
    if (!this.tensors) throw new Error('KV cache used after it was disposed');
    return this.tensors;
  }

  get disposed(): boolean {
    return this.tensors === null;
  }

  /** Frees the cache now (device buffers included) rather than at garbage collection. */
  dispose(): void {
    if (!this.tensors) return;
    for (const t of Object.values(this.tensors)) t.dispose();
    this.tensors = null;
  }
}

export class TokenEmbedder {
  constructor(private readonly session: ort.InferenceSession, readonly hidden: number) {}

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
}

export interface ForwardResult {
  /** logits of every new position, [seqLen, vocab] */
  logits: Float32Array;
  state: KvCache;
}

export class LlamaDecoder implements StepModel<KvCache> {
  readonly vocabSize: number;

  constructor(
    private readonly session: ort.InferenceSession,
    private readonly embedder: TokenEmbedder,
    private readonly shape: LlmShape,
  ) {
    this.vocabSize = shape.vocabSize;
  }

  emptyCache(): KvCache {
    const { layers, kvHeads, headDim } = this.shape;
    const tensors: Record<string, ort.Tensor> = {};
    for (let i = 0; i < layers; i++) {
      tensors[`past_key_values.${i}.key`] = new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]);
      tensors[`past_key_values.${i}.value`] = new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]);
    }
    return new KvCache(tensors, 0);
  }

  /** Runs `embeds` ([seqLen, hidden]) after the cached prefix `past` (which stays valid). */
  async forward(embeds: Float32Array, past: KvCache | null, signal?: AbortSignal): Promise<ForwardResult> {
    const { hidden, maxPositions } = this.shape;
    const seqLen = embeds.length / hidden;
    if (!Number.isInteger(seqLen) || seqLen === 0) throw new Error(`inputs_embeds of ${embeds.length} values is not a whole number of ${hidden}-wide rows`);
    const cache = past ?? this.emptyCache();
    const total = cache.length + seqLen;
    if (total > maxPositions) throw new ContextLengthError(total, maxPositions);
    signal?.throwIfAborted();

    const feeds: Record<string, ort.Tensor> = {
      ...cache.feeds(),
      inputs_embeds: new ort.Tensor('float32', embeds, [1, seqLen, hidden]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
      position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: seqLen }, (_, i) => BigInt(cache.length + i)), [1, seqLen]),
    };
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await this.session.run(feeds);
    } finally {
      if (!past) cache.dispose();
    }
    const present: Record<string, ort.Tensor> = {};
    for (let i = 0; i < this.shape.layers; i++) {
      present[`past_key_values.${i}.key`] = out[`present.${i}.key`];
      present[`past_key_values.${i}.value`] = out[`present.${i}.value`];
    }
    const state = new KvCache(present, total);
    if (signal?.aborted) {
      state.dispose();
      signal.throwIfAborted();
    }
    const logits = (await out.logits.getData()) as Float32Array;
    return { logits, state };
  }

  /** One token appended to each state; each state is run on its own (batching is the scheduler's job). */
  async step(states: readonly KvCache[], tokens: readonly number[], signal?: AbortSignal): Promise<{ states: KvCache[]; logits: Float32Array[] }> {
    const embeds = await this.embedder.embed(tokens);
    const { hidden } = this.shape;
    const next: KvCache[] = [];
    const logits: Float32Array[] = [];
    try {
      for (let b = 0; b < states.length; b++) {
        const r = await this.forward(embeds.slice(b * hidden, (b + 1) * hidden), states[b], signal);
        next.push(r.state);
        logits.push(r.logits);
      }
    } catch (err) {
      for (const s of next) s.dispose();
      throw err;
    }
    return { states: next, logits };
  }
}

export class ContextLengthError extends Error {
  constructor(readonly needed: number, readonly limit: number) {
    super(`the conversation needs ${needed} positions but the model handles at most ${limit}`);
  }
}
