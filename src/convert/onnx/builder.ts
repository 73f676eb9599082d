// A small ONNX graph builder: nodes are added one op at a time and weights are streamed to an external
// data file as they are produced, so a 7B model never sits in memory and the protobuf stays far below
// its 2 GB limit.
import { closeSync, openSync, writeSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import onnxProto from 'onnx-proto';
import { FP32_WEIGHTS, type WeightFormat } from '../weight-format.js';

const { onnx } = onnxProto;
export type TensorProto = onnxProto.onnx.ITensorProto;
type NodeProto = onnxProto.onnx.INodeProto;
type ValueInfoProto = onnxProto.onnx.IValueInfoProto;
type AttributeProto = onnxProto.onnx.IAttributeProto;

export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  FLOAT16: 10,
} as const;
export type DataTypeId = (typeof DataType)[keyof typeof DataType];

/** A dimension: a fixed size or a symbolic name. */
export type Dim = number | string;

export type AttrValue = number | number[] | string | { float: number } | { floats: number[] } | TensorProto;

const OPSET = 17;
/** Tensors smaller than this stay inside the .onnx file; everything else goes to the data file. */
const INLINE_LIMIT_BYTES = 1024;
/** External data offsets are aligned so a runtime may map them directly. */
const EXTERNAL_ALIGN = 64;

/** Appends tensor bytes to `<graph>.onnx.data` and hands back the reference for the TensorProto. */
export class ExternalDataWriter {
  private fd: number;
  private offset = 0;
  readonly fileName: string;

  constructor(readonly path: string) {
    this.fd = openSync(path, 'w');
    this.fileName = basename(path);
  }

  append(bytes: Uint8Array): { offset: number; length: number } {
    const pad = (EXTERNAL_ALIGN - (this.offset % EXTERNAL_ALIGN)) % EXTERNAL_ALIGN;
    if (pad) {
      writeSync(this.fd, new Uint8Array(pad));
      this.offset += pad;
    }
    const at = this.offset;
    let written = 0;
    while (written < bytes.length) written += writeSync(this.fd, bytes, written, bytes.length - written);
    this.offset += bytes.length;
    return { offset: at, length: bytes.length };
  }

  get bytesWritten(): number {
    return this.offset;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

function bytesOf(data: Float32Array | BigInt64Array | Int32Array | Uint8Array | Int8Array | Uint16Array): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function attribute(name: string, value: AttrValue): AttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof value === 'number') return { name, type: T.INT, i: value };
  if (typeof value === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: T.INTS, ints: value };
  if ('float' in value && typeof value.float === 'number') return { name, type: T.FLOAT, f: value.float };
  if ('floats' in value && Array.isArray(value.floats)) return { name, type: T.FLOATS, floats: value.floats };
  return { name, type: T.TENSOR, t: value as TensorProto };
}

function valueInfo(name: string, elemType: DataTypeId, dims: Dim[]): ValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

export type ComputeType = 'float32' | 'float16';

export interface GraphIO {
  name: string;
  dtype: 'float32' | 'int64' | 'float16';
  dims: Dim[];
}

const ioType: Record<GraphIO['dtype'], DataTypeId> = { float32: DataType.FLOAT, int64: DataType.INT64, float16: DataType.FLOAT16 };

export class GraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly initializers: TensorProto[] = [];
  private readonly inputs: ValueInfoProto[] = [];
  private readonly outputs: ValueInfoProto[] = [];
  readonly inputSpecs: GraphIO[] = [];
  readonly outputSpecs: GraphIO[] = [];
  private readonly usedNames = new Set<string>();
  private readonly data: ExternalDataWriter | null;
  private counter = 0;
  private usesMicrosoftDomain = false;
  /** How Linear weights are stored (`minigpt convert --dtype`; see src/convert/quantize.ts). */
  weights: WeightFormat = FP32_WEIGHTS;
  /**
   * The type the decoder computes in (`minigpt convert --compute`; src/convert/graphs/precision.ts): float16
   * activations and KV cache for GPU providers, with norms and softmax in float32. Other graphs ignore it.
   */
  compute: ComputeType = 'float32';
  /**
   * Whether to use onnxruntime's fused kernels where a graph has a form with them (`minigpt convert --fused`):
   * the decoder (src/convert/graphs/llama-fused.ts) and the ViT's blocks (src/convert/graphs/vision-fused.ts).
   */
  fused = false;

  /**
   * `dataPath` is where large weights go (`<model>.onnx.data`, next to the model file); without one, the graph
   * is for memory only (encode(): the runtime's own small graphs) and every weight stays inline.
   */
  constructor(
    readonly name: string,
    dataPath?: string,
  ) {
    this.data = dataPath ? new ExternalDataWriter(dataPath) : null;
  }

  input(name: string, dtype: GraphIO['dtype'], dims: Dim[]): string {
    this.inputs.push(valueInfo(name, ioType[dtype], dims));
    this.inputSpecs.push({ name, dtype, dims });
    this.usedNames.add(name);
    return name;
  }

  /** Marks `value` as a graph output called `name` (an Identity is inserted when the names differ). */
  output(value: string, name: string, dtype: GraphIO['dtype'], dims: Dim[]): void {
    if (value !== name) this.op('Identity', [value], {}, { outputs: [name] });
    this.outputs.push(valueInfo(name, ioType[dtype], dims));
    this.outputSpecs.push({ name, dtype, dims });
  }

  private fresh(hint: string): string {
    let n = `${hint}_${this.counter++}`;
    while (this.usedNames.has(n)) n = `${hint}_${this.counter++}`;
    this.usedNames.add(n);
    return n;
  }

  /**
   * Adds one node. Returns its first output's name; `opts.outputs` names the outputs explicitly, or
   * `opts.count` asks for several fresh ones (read them back with `opMulti`).
   */
  op(
    type: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    opts: { outputs?: string[]; domain?: string; name?: string } = {},
  ): string {
    return this.opMulti(type, inputs, attrs, { ...opts, count: opts.outputs?.length ?? 1 })[0];
  }

  opMulti(
    type: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    opts: { outputs?: string[]; count?: number; domain?: string; name?: string } = {},
  ): string[] {
    const outputs = opts.outputs ?? Array.from({ length: opts.count ?? 1 }, () => this.fresh(`${opts.name ?? type}`));
    for (const o of outputs) this.usedNames.add(o);
    if (opts.domain === 'com.microsoft') this.usesMicrosoftDomain = true;
    this.nodes.push({
      opType: type,
      name: this.fresh(`${opts.name ?? type}_node`),
      input: inputs,
      output: outputs,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
      domain: opts.domain ?? '',
    });
    return outputs;
  }

  /** A weight tensor; large ones are appended to the external data file right away. */
  weight(
    name: string,
    dims: number[],
    data: Float32Array | Uint16Array | Uint8Array | Int8Array,
    dtype: DataTypeId = DataType.FLOAT,
  ): string {
    const unique = this.usedNames.has(name) ? this.fresh(name) : name;
    this.usedNames.add(unique);
    const raw = bytesOf(data);
    const tensor: TensorProto = { name: unique, dims, dataType: dtype };
    if (raw.byteLength < INLINE_LIMIT_BYTES || !this.data) {
      tensor.rawData = new Uint8Array(raw); // copy: the caller may reuse its buffer
    } else {
      const { offset, length } = this.data.append(raw);
      tensor.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
      tensor.externalData = [
        { key: 'location', value: this.data.fileName },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(length) },
      ];
    }
    this.initializers.push(tensor);
    return unique;
  }

  constFloat(values: number[] | Float32Array, dims: number[] = [values.length], hint = 'const'): string {
    return this.weight(this.fresh(hint), dims, Float32Array.from(values));
  }

  constInt64(values: number[], dims: number[] = [values.length], hint = 'const'): string {
    const name = this.fresh(hint);
    this.initializers.push({ name, dims, dataType: DataType.INT64, rawData: bytesOf(BigInt64Array.from(values.map(BigInt))).slice() });
    return name;
  }

  /** A scalar float constant (shape []). */
  scalar(value: number, hint = 'scalar'): string {
    return this.constFloat([value], [], hint);
  }

  /** Writes `<dir>/<file>` (the graph) and closes the data file; returns external data bytes. */
  async save(modelPath: string, docString = ''): Promise<{ dataBytes: number; modelBytes: number }> {
    this.data?.close();
    const bytes = this.encode(docString);
    await writeFile(modelPath, bytes);
    return { dataBytes: this.data?.bytesWritten ?? 0, modelBytes: bytes.byteLength };
  }

  /** The model's bytes (weights in the data file, if any, are referenced by name). */
  encode(docString = ''): Uint8Array {
    const opsetImport = [{ domain: '', version: OPSET }];
    if (this.usesMicrosoftDomain) opsetImport.push({ domain: 'com.microsoft', version: 1 });
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'minigpt-bot',
      producerVersion: '0.1.0',
      docString,
      opsetImport,
      graph: {
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
