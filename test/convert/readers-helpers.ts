/**
 * Test-only writers for crafted checkpoint inputs: safetensors files, zip archives laid out like torch.save
 * (STORED, 64-byte aligned data, optional DEFLATE / ZIP64) and hand-assembled pickles.
 */
import { deflateRawSync } from 'node:zlib';
import { crc32 } from '../../src/convert/readers/zip.js';
import { concatArrays } from '../../src/util/typed-arrays.js';
import type { StorageDType } from '../../src/convert/readers/index.js';

const enc = new TextEncoder();

export function concat(parts: Uint8Array[]): Uint8Array {
  return concatArrays(Uint8Array, parts);
}

export function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice();
}

// ---------------------------------------------------------------- safetensors

export interface StTensor {
  name: string;
  dtype: StorageDType;
  shape: number[];
  data: Uint8Array;
}

export function buildSafetensors(tensors: StTensor[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.byteLength] };
    off += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += ' ';
  const h = enc.encode(json);
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(h.byteLength), true);
  return concat([len, h, ...tensors.map((t) => t.data)]);
}

/** safetensors with a hand-written header (for corrupt-header tests). */
export function rawSafetensors(header: unknown, data: Uint8Array, headerLenOverride?: bigint): Uint8Array {
  const h = enc.encode(typeof header === 'string' ? header : JSON.stringify(header));
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, headerLenOverride ?? BigInt(h.byteLength), true);
  return concat([len, h, data]);
}

// ---------------------------------------------------------------- zip

export interface ZipInput {
  name: string;
  data: Uint8Array;
  deflate?: boolean;
}

function le(size: 2 | 4 | 8, v: number | bigint): Uint8Array {
  const b = new Uint8Array(size);
  const dv = new DataView(b.buffer);
  if (size === 2) dv.setUint16(0, Number(v), true);
  else if (size === 4) dv.setUint32(0, Number(v), true);
  else dv.setBigUint64(0, BigInt(v), true);
  return b;
}

/** A zip archive as PyTorch's writer lays it out: local header, optional 'FB' padding extra so data is 64-byte aligned. */
export function buildZip(entries: ZipInput[], opts: { zip64?: boolean; align?: number } = {}): Uint8Array {
  const align = opts.align ?? 64;
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let off = 0;
  for (const e of entries) {
    const name = enc.encode(e.name);
    const payload = e.deflate ? new Uint8Array(deflateRawSync(e.data)) : e.data;
    const crc = crc32(e.data);
    const method = e.deflate ? 8 : 0;
    const headerLen = 30 + name.byteLength;
    let pad = 0;
    if (align > 1) {
      pad = (align - ((off + headerLen + 4) % align)) % align;
    }
    const extra = align > 1 ? concat([le(2, 0x4246), le(2, pad), new Uint8Array(pad)]) : new Uint8Array(0);
    // what the local and the central header both say: version needed, flags, method, time, date, CRC
    const described = [le(2, opts.zip64 ? 45 : 20), le(2, 0), le(2, method), le(2, 0), le(2, 0x21), le(4, crc)];
    const local = concat([
      le(4, 0x04034b50),
      ...described,
      le(4, payload.byteLength),
      le(4, e.data.byteLength),
      le(2, name.byteLength),
      le(2, extra.byteLength),
      name,
      extra,
    ]);
    const z64extra = opts.zip64
      ? concat([le(2, 1), le(2, 24), le(8, e.data.byteLength), le(8, payload.byteLength), le(8, off)])
      : new Uint8Array(0);
    const big = 0xffffffff;
    central.push(
      concat([
        le(4, 0x02014b50),
        le(2, 0x031e),
        ...described,
        le(4, opts.zip64 ? big : payload.byteLength),
        le(4, opts.zip64 ? big : e.data.byteLength),
        le(2, name.byteLength),
        le(2, z64extra.byteLength),
        le(2, 0),
        le(2, 0),
        le(2, 0),
        le(4, 0),
        le(4, opts.zip64 ? big : off),
        name,
        z64extra,
      ]),
    );
    parts.push(local, payload);
    off += local.byteLength + payload.byteLength;
  }
  const cd = concat(central);
  const cdOffset = off;
  const tail: Uint8Array[] = [cd];
  const eocd = (count: number, size: number, offset: number) =>
    concat([le(4, 0x06054b50), le(2, 0), le(2, 0), le(2, count), le(2, count), le(4, size), le(4, offset), le(2, 0)]);
  if (opts.zip64) {
    const z64Offset = cdOffset + cd.byteLength;
    tail.push(
      concat([
        le(4, 0x06064b50),
        le(8, 44),
        le(2, 45),
        le(2, 45),
        le(4, 0),
        le(4, 0),
        le(8, entries.length),
        le(8, entries.length),
        le(8, cd.byteLength),
        le(8, cdOffset),
      ]),
      concat([le(4, 0x07064b50), le(4, 0), le(8, z64Offset), le(4, 1)]),
      // the classic record's fields all saturated: the ZIP64 one holds the real values
      eocd(0xffff, 0xffffffff, 0xffffffff),
    );
  } else {
    tail.push(eocd(entries.length, cd.byteLength, cdOffset));
  }
  return concat([...parts, ...tail]);
}

/** A torch.save-style archive: `<archive>/data.pkl`, `<archive>/data/<key>`, `<archive>/version`. */
export function buildTorchZip(
  archive: string,
  pickle: Uint8Array,
  storages: Record<string, Uint8Array>,
  opts: { zip64?: boolean; deflate?: boolean; byteorder?: string } = {},
): Uint8Array {
  const entries: ZipInput[] = [{ name: `${archive}/data.pkl`, data: pickle, deflate: opts.deflate }];
  if (opts.byteorder) entries.push({ name: `${archive}/byteorder`, data: enc.encode(opts.byteorder) });
  for (const [k, v] of Object.entries(storages)) entries.push({ name: `${archive}/data/${k}`, data: v, deflate: opts.deflate });
  entries.push({ name: `${archive}/version`, data: enc.encode('3\n') });
  return buildZip(entries, { zip64: opts.zip64 });
}

// ---------------------------------------------------------------- pickle

/** Hand assembly of pickle opcodes (protocol 2, as torch.save emits). */
export class PickleWriter {
  private readonly out: number[] = [];

  raw(...bytes: number[]): this {
    this.out.push(...bytes);
    return this;
  }
  text(s: string): this {
    return this.raw(...enc.encode(s));
  }
  proto(v = 2): this {
    return this.raw(0x80, v);
  }
  mark(): this {
    return this.raw(0x28);
  }
  stop(): this {
    return this.raw(0x2e);
  }
  global(module: string, name: string): this {
    return this.raw(0x63).text(`${module}\n${name}\n`);
  }
  stackGlobal(module: string, name: string): this {
    return this.shortStr(module).shortStr(name).raw(0x93);
  }
  str(s: string): this {
    const b = enc.encode(s);
    return this.raw(0x58, ...le(4, b.byteLength), ...b);
  }
  shortStr(s: string): this {
    const b = enc.encode(s);
    return this.raw(0x8c, b.byteLength, ...b);
  }
  int(v: number): this {
    if (v >= 0 && v < 256) return this.raw(0x4b, v);
    if (v >= 0 && v < 65536) return this.raw(0x4d, ...le(2, v));
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, v, true);
    return this.raw(0x4a, ...b);
  }
  float(v: number): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, false);
    return this.raw(0x47, ...b);
  }
  tupleOf(items: number[]): this {
    this.mark();
    for (const i of items) this.int(i);
    return this.raw(0x74);
  }
  emptyDict(): this {
    return this.raw(0x7d);
  }
  orderedDict(): this {
    return this.global('collections', 'OrderedDict').raw(0x29, 0x52);
  }
  /** `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())` on a persistent storage */
  tensor(storageType: string, key: string, numel: number, offset: number, size: number[], stride: number[]): this {
    this.global('torch._utils', '_rebuild_tensor_v2').mark();
    this.mark().str('storage').global('torch', storageType).str(key).str('cpu').int(numel).raw(0x74, 0x51);
    this.int(offset).tupleOf(size).tupleOf(stride).raw(0x89).orderedDict();
    return this.raw(0x74, 0x52);
  }
  setItem(): this {
    return this.raw(0x73);
  }
  setItems(): this {
    return this.raw(0x75);
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.out);
  }
}

export function hex(s: string): Uint8Array {
  return Uint8Array.from(s.match(/../g)!.map((h) => parseInt(h, 16)));
}

/** A pickle that calls os.system("echo"): \x80\x02 c os\nsystem\n X "echo" \x85 R . */
export function osSystemPickle(): Uint8Array {
  return concat([
    hex('8002'),
    new TextEncoder().encode('cos\nsystem\n'),
    hex('5804000000'),
    new TextEncoder().encode('echo'),
    hex('85522e'),
  ]);
}
