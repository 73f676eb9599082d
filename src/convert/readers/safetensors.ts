import { CheckpointError } from './errors.js';
import { RandomAccessFile } from './file.js';
import { DTYPE_ITEMSIZE, bytesToFloat32, describeKeys, isStorageDType, numelOf, type TensorInfo, type TensorSource } from './types.js';

/** The safetensors reference implementation refuses headers above 100 MB. */
const MAX_HEADER_BYTES = 100_000_000;

interface Entry {
  info: TensorInfo;
  /** absolute byte offset of the tensor data in the file */
  start: number;
  byteLength: number;
}

export class SafetensorsSource implements TensorSource {
  readonly files: string[];
  private readonly order: string[];

  constructor(
    private readonly file: RandomAccessFile,
    private readonly entries: Map<string, Entry>,
    /** the optional "__metadata__" string map of the header */
    readonly metadata: Readonly<Record<string, string>>,
  ) {
    this.files = [file.path];
    this.order = [...entries.keys()];
  }

  list(): TensorInfo[] {
    return this.order.map((n) => cloneInfo(this.entries.get(n)!.info));
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  info(name: string): TensorInfo {
    return cloneInfo(this.entry(name).info);
  }

  async readRaw(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    return this.file.read(e.start, e.byteLength, `tensor '${name}'`);
  }

  async readFloat32(name: string): Promise<Float32Array> {
    const e = this.entry(name);
    const raw = await this.file.read(e.start, e.byteLength, `tensor '${name}'`);
    return bytesToFloat32(raw, e.info.dtype, `${this.file.path}: tensor '${name}'`);
  }

  close(): Promise<void> {
    return this.file.close();
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) {
      throw new CheckpointError(`tensor '${name}' not found in ${this.file.path} (${describeKeys(this.order)})`);
    }
    return e;
  }
}

function cloneInfo(i: TensorInfo): TensorInfo {
  return { name: i.name, dtype: i.dtype, shape: [...i.shape] };
}

export async function openSafetensors(path: string): Promise<SafetensorsSource> {
  const file = await RandomAccessFile.open(path);
  try {
    return await parseSafetensors(file);
  } catch (err) {
    await file.close().catch(() => undefined);
    throw err;
  }
}

async function parseSafetensors(file: RandomAccessFile): Promise<SafetensorsSource> {
  const where = file.path;
  if (file.size < 8) {
    throw new CheckpointError(`${where}: not a safetensors file (only ${file.size} bytes, no header length)`);
  }
  const lenBytes = await file.read(0, 8, 'safetensors header length');
  const headerLen64 = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (headerLen64 > BigInt(file.size - 8)) {
    throw new CheckpointError(
      `${where}: safetensors header length ${headerLen64} exceeds the file size (${file.size} bytes); not a safetensors file or truncated`,
    );
  }
  const headerLen = Number(headerLen64);
  if (headerLen < 2 || headerLen > MAX_HEADER_BYTES) {
    throw new CheckpointError(`${where}: implausible safetensors header length ${headerLen}`);
  }
  const headerBytes = await file.read(8, headerLen, 'safetensors header');
  let header: unknown;
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
    header = JSON.parse(text);
  } catch (err) {
    throw new CheckpointError(`${where}: safetensors header is not valid UTF-8 JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (!isPlainObject(header)) {
    throw new CheckpointError(`${where}: safetensors header is not a JSON object`);
  }
  const dataStart = 8 + headerLen;
  const dataSize = file.size - dataStart;
  let metadata: Record<string, string> = {};
  const parsed: Array<{ entry: Entry; begin: number; idx: number }> = [];
  let idx = 0;
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (raw !== null && !isPlainObject(raw)) {
        throw new CheckpointError(`${where}: safetensors "__metadata__" is not an object`);
      }
      metadata = {};
      for (const [k, v] of Object.entries(raw ?? {})) metadata[k] = typeof v === 'string' ? v : JSON.stringify(v);
      continue;
    }
    const what = `${where}: tensor '${name}'`;
    if (!isPlainObject(raw)) throw new CheckpointError(`${what}: header entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
    if (!isStorageDType(dtype)) {
      throw new CheckpointError(`${what}: unsupported safetensors dtype ${JSON.stringify(dtype)}`);
    }
    if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number')) {
      throw new CheckpointError(`${what}: "shape" must be an array of integers`);
    }
    const numel = numelOf(shape as number[], what);
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)
    ) {
      throw new CheckpointError(`${what}: "data_offsets" must be [begin, end] non-negative integers`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) throw new CheckpointError(`${what}: data_offsets [${begin}, ${end}] end before they begin`);
    if (end > dataSize) {
      throw new CheckpointError(
        `${what}: data_offsets [${begin}, ${end}] exceed the data section (${dataSize} bytes); the file is truncated or corrupt`,
      );
    }
    const expected = numel * DTYPE_ITEMSIZE[dtype];
    if (end - begin !== expected) {
      throw new CheckpointError(
        `${what}: data_offsets [${begin}, ${end}] span ${end - begin} bytes but ${dtype}[${(shape as number[]).join(', ')}] needs ${expected}`,
      );
    }
    parsed.push({
      entry: { info: { name, dtype, shape: [...(shape as number[])] }, start: dataStart + begin, byteLength: expected },
      begin,
      idx: idx++,
    });
  }
  // file order = order of the data in the file (ties keep header order)
  parsed.sort((a, b) => a.begin - b.begin || a.idx - b.idx);
  const entries = new Map<string, Entry>();
  for (const p of parsed) entries.set(p.entry.info.name, p.entry);
  return new SafetensorsSource(file, entries, metadata);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
