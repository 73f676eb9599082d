// Row copies of KV caches kept in device memory. On WebGPU the decoder's `present.*` outputs stay on the GPU
// ('present' mode), and Node's binding can neither read such a tensor nor copy part of one: re-packing a
// batch's rows (a conversation joins or leaves the batch), taking a prefix (the context a conversation keeps)
// or a copy run instead as a small graph on the same provider (Slice, Pad, Concat), made here at run time,
// one session per row count.
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../convert/onnx/builder.js';

/** Positions of one row of a KV storage: [rows, kvHeads, total, headDim] tensors by name. */
export interface KvRowSource {
  tensors: Record<string, ort.Tensor>;
  row: number;
  /** the first position taken (after the row's left padding) */
  from: number;
  /** how many positions are taken */
  n: number;
}

/** Opens a runtime graph on the decoder's provider, its `outputs` left in device memory. */
export type OpenRuntimeGraph = (model: Uint8Array, outputs: readonly string[]) => Promise<ort.InferenceSession>;

const int64 = (values: readonly number[]) => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), [values.length]);

export class DeviceKvCopier {
  /** by row count and element type */
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();

  constructor(
    /** the KV tensor names, in the decoder's order */
    private readonly names: readonly string[],
    private readonly open: OpenRuntimeGraph,
  ) {}

  /**
   * `rows` gathered into new [rows.length, kvHeads, total, headDim] tensors (named as the sources), each row's
   * positions at the end, after zeros (the left padding of 'present' mode). The sources stay as they are.
   */
  async gather(rows: readonly KvRowSource[], total: number): Promise<Record<string, ort.Tensor>> {
    if (rows.length === 0) throw new Error('gather: no rows');
    const feeds: Record<string, ort.Tensor> = {};
    rows.forEach((r, j) => {
      if (r.n < 1 || r.n > total) throw new RangeError(`gather: ${r.n} positions into rows of ${total}`);
      feeds[`starts.${j}`] = int64([r.row, r.from]);
      feeds[`ends.${j}`] = int64([r.row + 1, r.from + r.n]);
      feeds[`pads.${j}`] = int64([0, 0, total - r.n, 0, 0, 0, 0, 0]);
      this.names.forEach((name, i) => {
        const t = r.tensors[name];
        if (!t) throw new Error(`gather: the source has no ${name}`);
        feeds[`rows.${j}.${i}`] = t;
      });
    });
    const type = rows[0].tensors[this.names[0]].type;
    if (type !== 'float32' && type !== 'float16') throw new Error(`gather: a KV cache of ${type} values`);
    const out = await (await this.session(rows.length, type)).run(feeds);
    return Object.fromEntries(this.names.map((name, i) => [name, out[`kv.${i}`]]));
  }

  async close(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    for (const s of all) await (await s.catch(() => null))?.release();
  }

  private session(k: number, dtype: 'float32' | 'float16'): Promise<ort.InferenceSession> {
    const key = `${k}:${dtype}`;
    let s = this.sessions.get(key);
    if (!s) {
      s = this.open(gatherGraph(this.names.length, k, dtype), outputNames(this.names.length));
      this.sessions.set(key, s);
      s.catch(() => this.sessions.delete(key));
    }
    return s;
  }
}

const outputNames = (n: number) => Array.from({ length: n }, (_, i) => `kv.${i}`);

/**
 * The graph for `k` rows of `n` tensors: `rows.j.i` [rows_j, kv_heads, total_j, head_dim] sliced to row
 * starts.j[0] and positions [starts.j[1], ends.j[1]), padded before by pads.j, concatenated over j -> `kv.i`.
 */
export function gatherGraph(n: number, k: number, dtype: 'float32' | 'float16'): Uint8Array {
  const g = new GraphBuilder(`kv_gather_${k}`);
  const axes = g.constInt64([0, 2], [2], 'axes');
  const parts: string[][] = Array.from({ length: n }, () => []);
  for (let j = 0; j < k; j++) {
    const starts = g.input(`starts.${j}`, 'int64', [2]);
    const ends = g.input(`ends.${j}`, 'int64', [2]);
    const pads = g.input(`pads.${j}`, 'int64', [8]);
    for (let i = 0; i < n; i++) {
      const src = g.input(`rows.${j}.${i}`, dtype, [`rows_${j}`, 'kv_heads', `total_${j}`, 'head_dim']);
      const taken = g.op('Slice', [src, starts, ends, axes], {}, { name: `slice.${j}.${i}` });
      parts[i].push(g.op('Pad', [taken, pads], { mode: 'constant' }, { name: `pad.${j}.${i}` }));
    }
  }
  for (let i = 0; i < n; i++) {
    const all = parts[i].length === 1 ? parts[i][0] : g.op('Concat', parts[i], { axis: 0 }, { name: `concat.${i}` });
    g.output(all, `kv.${i}`, dtype, ['rows', 'kv_heads', 'total', 'head_dim']);
  }
  return g.encode();
}
