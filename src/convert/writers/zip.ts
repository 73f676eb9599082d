// Streaming zip writer for torch.save archives: STORED entries whose data is 64-byte aligned (padding in a
// 'FB' extra field, as PyTorch's writer does), sizes known up front, CRC-32 computed while the data streams
// and patched into the local header afterwards, ZIP64 records when an entry or offset needs them (or always).
import * as zlib from 'node:zlib';
import { CheckpointError } from '../readers/errors.js';
import { crc32 as tableCrc32 } from '../readers/zip.js';
import type { OutputFile } from './output.js';

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const U32_MAX = 0xffffffff;
const U16_MAX = 0xffff;
/** "made by": UNIX (3), spec 3.0 (30), as miniz/PyTorch writes it */
const VERSION_MADE_BY = 0x031e;
const VERSION_PLAIN = 20;
const VERSION_ZIP64 = 45;
/** 1980-01-01 00:00 in MS-DOS date/time (PyTorch writes a fixed timestamp too) */
const DOS_TIME = 0;
const DOS_DATE = 0x21;
const ALIGN_EXTRA_ID = 0x4246; // 'FB'

type Crc = (data: Uint8Array, value?: number) => number;
/** zlib.crc32 (native) where this Node has it (>= 20.15 / 22.2), else the readers' table-driven CRC-32. */
const nativeCrc = (zlib as unknown as { crc32?: Crc }).crc32;
export const crc32: Crc = typeof nativeCrc === 'function' ? (d, v = 0) => nativeCrc(d, v) : (d, v = 0) => tableCrc32(d, v);

interface CentralRecord {
  name: Uint8Array;
  crc: number;
  size: number;
  offset: number;
}

export interface ZipWriterOptions {
  /** data alignment in bytes (PyTorch: 64) */
  align?: number;
  /** 'auto' (default): ZIP64 records only where a size or offset needs them; 'always': for every entry and the end records */
  zip64?: 'auto' | 'always';
}

class LE {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  private at = 0;
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }
  u16(v: number): this {
    this.view.setUint16(this.at, v, true);
    this.at += 2;
    return this;
  }
  u32(v: number): this {
    this.view.setUint32(this.at, v >>> 0, true);
    this.at += 4;
    return this;
  }
  u64(v: number): this {
    this.view.setBigUint64(this.at, BigInt(v), true);
    this.at += 8;
    return this;
  }
  raw(b: Uint8Array): this {
    this.bytes.set(b, this.at);
    this.at += b.byteLength;
    return this;
  }
  zeros(n: number): this {
    this.at += n;
    return this;
  }
  get length(): number {
    return this.at;
  }
}

const enc = new TextEncoder();

/**
 * Writes STORED zip entries one after the other into an OutputFile: `begin(name, size)`, any number of
 * `data(bytes)` calls adding up to `size`, `end()`; `finish()` writes the central directory.
 */
export class ZipWriter {
  private readonly central: CentralRecord[] = [];
  private readonly names = new Set<string>();
  private current: { rec: CentralRecord; crcAt: number; written: number; crc: number; zip64: boolean } | undefined;
  private finished = false;
  private readonly align: number;
  private readonly forceZip64: boolean;
  private usedZip64 = false;

  constructor(
    private readonly out: OutputFile,
    opts: ZipWriterOptions = {},
  ) {
    this.align = opts.align ?? 64;
    if (!Number.isInteger(this.align) || this.align < 1 || this.align > 4096)
      throw new CheckpointError(`invalid zip alignment ${this.align}`);
    this.forceZip64 = opts.zip64 === 'always';
  }

  /** Starts an entry of exactly `size` bytes. */
  async begin(name: string, size: number): Promise<void> {
    if (this.finished) throw new CheckpointError(`${this.out.path}: zip already finished`);
    if (this.current) throw new CheckpointError(`${this.out.path}: zip entry '${name}' begun before the previous one ended`);
    if (this.names.has(name)) throw new CheckpointError(`${this.out.path}: duplicate zip entry '${name}'`);
    if (!Number.isSafeInteger(size) || size < 0) throw new CheckpointError(`${this.out.path}: invalid size ${size} for '${name}'`);
    const nameBytes = enc.encode(name);
    if (nameBytes.byteLength > U16_MAX) throw new CheckpointError(`${this.out.path}: zip entry name too long`);
    this.names.add(name);
    const offset = this.out.position;
    const zip64 = this.forceZip64 || size >= U32_MAX;
    if (zip64) this.usedZip64 = true;
    const z64Len = zip64 ? 20 : 0;
    const fixed = 30 + nameBytes.byteLength + z64Len;
    // the padding extra field (4-byte header + pad) places the data on an `align` boundary
    let pad = 0;
    if (this.align > 1) pad = (this.align - ((offset + fixed + 4) % this.align)) % this.align;
    const extraLen = z64Len + (this.align > 1 ? 4 + pad : 0);
    const h = new LE(30 + nameBytes.byteLength + extraLen);
    h.u32(SIG_LOCAL)
      .u16(zip64 ? VERSION_ZIP64 : VERSION_PLAIN)
      .u16(0)
      .u16(0)
      .u16(DOS_TIME)
      .u16(DOS_DATE);
    const crcAt = offset + h.length;
    h.u32(0); // CRC-32, patched by end()
    if (zip64) h.u32(U32_MAX).u32(U32_MAX);
    else h.u32(size).u32(size);
    h.u16(nameBytes.byteLength).u16(extraLen).raw(nameBytes);
    if (zip64) h.u16(0x0001).u16(16).u64(size).u64(size);
    if (this.align > 1) h.u16(ALIGN_EXTRA_ID).u16(pad).zeros(pad);
    await this.out.write(h.bytes);
    this.current = { rec: { name: nameBytes, crc: 0, size, offset }, crcAt, written: 0, crc: 0, zip64 };
  }

  async data(bytes: Uint8Array): Promise<void> {
    const c = this.current;
    if (!c) throw new CheckpointError(`${this.out.path}: zip data outside an entry`);
    if (c.written + bytes.byteLength > c.rec.size) {
      throw new CheckpointError(
        `${this.out.path}: zip entry '${new TextDecoder().decode(c.rec.name)}' gets more than its ${c.rec.size} bytes`,
      );
    }
    c.crc = crc32(bytes, c.crc);
    c.written += bytes.byteLength;
    await this.out.write(bytes);
  }

  async end(): Promise<void> {
    const c = this.current;
    if (!c) throw new CheckpointError(`${this.out.path}: end() without an entry`);
    if (c.written !== c.rec.size) {
      throw new CheckpointError(
        `${this.out.path}: zip entry '${new TextDecoder().decode(c.rec.name)}' got ${c.written} of its ${c.rec.size} bytes`,
      );
    }
    c.rec.crc = c.crc >>> 0;
    await this.out.patch(c.crcAt, new LE(4).u32(c.rec.crc).bytes);
    this.central.push(c.rec);
    this.current = undefined;
  }

  /** A whole entry from one buffer. */
  async add(name: string, bytes: Uint8Array): Promise<void> {
    await this.begin(name, bytes.byteLength);
    await this.data(bytes);
    await this.end();
  }

  /** Writes the central directory and the end records (ZIP64 ones when needed or forced). */
  async finish(): Promise<void> {
    if (this.current) throw new CheckpointError(`${this.out.path}: zip entry still open`);
    if (this.finished) return;
    this.finished = true;
    const cdOffset = this.out.position;
    const parts: Uint8Array[] = [];
    for (const r of this.central) {
      const bigSize = this.forceZip64 || r.size >= U32_MAX;
      const bigOffset = this.forceZip64 || r.offset >= U32_MAX;
      const z64Fields = (bigSize ? 2 : 0) + (bigOffset ? 1 : 0);
      const extraLen = z64Fields ? 4 + 8 * z64Fields : 0;
      if (z64Fields) this.usedZip64 = true;
      const e = new LE(46 + r.name.byteLength + extraLen);
      e.u32(SIG_CENTRAL)
        .u16(VERSION_MADE_BY)
        .u16(z64Fields ? VERSION_ZIP64 : VERSION_PLAIN)
        .u16(0)
        .u16(0)
        .u16(DOS_TIME)
        .u16(DOS_DATE);
      e.u32(r.crc)
        .u32(bigSize ? U32_MAX : r.size)
        .u32(bigSize ? U32_MAX : r.size);
      e.u16(r.name.byteLength)
        .u16(extraLen)
        .u16(0)
        .u16(0)
        .u16(0)
        .u32(0)
        .u32(bigOffset ? U32_MAX : r.offset);
      e.raw(r.name);
      if (z64Fields) {
        e.u16(0x0001).u16(8 * z64Fields);
        if (bigSize) e.u64(r.size).u64(r.size);
        if (bigOffset) e.u64(r.offset);
      }
      parts.push(e.bytes);
    }
    const cdSize = parts.reduce((a, p) => a + p.byteLength, 0);
    for (const p of parts) await this.out.write(p);
    const count = this.central.length;
    const needZip64 = this.usedZip64 || this.forceZip64 || count >= U16_MAX || cdOffset >= U32_MAX || cdSize >= U32_MAX;
    if (needZip64) {
      const z64At = this.out.position;
      const z = new LE(56 + 20);
      z.u32(SIG_ZIP64_EOCD).u64(44).u16(VERSION_MADE_BY).u16(VERSION_ZIP64).u32(0).u32(0);
      z.u64(count).u64(count).u64(cdSize).u64(cdOffset);
      z.u32(SIG_ZIP64_LOCATOR).u32(0).u64(z64At).u32(1);
      await this.out.write(z.bytes);
    }
    const eocd = new LE(22);
    eocd.u32(SIG_EOCD).u16(0).u16(0);
    eocd.u16(needZip64 ? U16_MAX : count).u16(needZip64 ? U16_MAX : count);
    eocd
      .u32(needZip64 ? U32_MAX : cdSize)
      .u32(needZip64 ? U32_MAX : cdOffset)
      .u16(0);
    await this.out.write(eocd.bytes);
  }
}
