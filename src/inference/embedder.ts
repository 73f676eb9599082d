// Token id -> embedding row, through the package's embedding graph: apart from the decoder because the
// prompt assembly (context.ts) embeds text segments with it too, between the image's rows.
import * as ort from 'onnxruntime-node';
import type { ProviderName } from './providers.js';

export class TokenEmbedder {
  /** token id -> its embedding row, for decoding steps (one token per row, the same few ids again and again) */
  private readonly rows = new Map<number, Float32Array>();
  private readonly maxRows: number;

  /** where the embedding graph runs (for reports; MiniGPT.load puts it on the CPU) */
  readonly provider: ProviderName;

  /** `cacheBytes`: memory for remembered rows of single tokens (default 32 MiB; 0 disables) */
  constructor(
    private readonly session: ort.InferenceSession,
    readonly hidden: number,
    opts: { cacheBytes?: number; provider?: ProviderName } = {},
  ) {
    this.maxRows = Math.floor((opts.cacheBytes ?? 32 * 1024 * 1024) / (hidden * 4));
    this.provider = opts.provider ?? 'cpu';
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
