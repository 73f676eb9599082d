import { inflateRawSync } from 'node:zlib';
import { CheckpointError } from './errors.js';
import type { RandomAccessFile } from './file.js';

/** One member of a zip archive, from the central directory. */
export interface ZipEntry {
  readonly name: string;
  /** 0 = STORED, 8 = DEFLATE */
  readonly method: number;
  readonly flags: number;
  readonly crc32: number;
  readonly compressedSize: number;
  readonly uncompressedSize: number;
  readonly localHeaderOffset: number;
}

const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_LOCAL = 0x04034b50;
const EOCD_SIZE = 22;
const MAX_COMMENT = 0xffff;
/** deflate cannot expand better than ~1032:1 */
const MAX_DEFLATE_RATIO = 1032;

const utf8 = new TextDecoder('utf-8');

/** Minimal read-only zip reader (central directory + local headers, ZIP64, STORED and DEFLATE). */
export class ZipArchive {
  private readonly dataOffsets = new Map<string, number>();

  private constructor(
    readonly file: RandomAccessFile,
    /** entries in central-directory order */
    readonly entries: ReadonlyMap<string, ZipEntry>,
  ) {}

  static async open(file: RandomAccessFile): Promise<ZipArchive> {
    const where = file.path;
    const fail = (msg: string): never => {
      throw new CheckpointError(`${where}: ${msg}`);
    };
    if (file.size < EOCD_SIZE) fail('not a zip archive (too small); truncated?');
    const tailLen = Math.min(file.size, EOCD_SIZE + MAX_COMMENT + 20);
    const tailStart = file.size - tailLen;
    const tail = await file.read(tailStart, tailLen, 'zip end-of-central-directory search');
    const tv = new DataView(tail.buffer);
    let eocd = -1;
    for (let p = tailLen - EOCD_SIZE; p >= 0; p--) {
      if (tv.getUint32(p, true) === SIG_EOCD && p + EOCD_SIZE + tv.getUint16(p + 20, true) <= tailLen) {
        eocd = p;
        break;
      }
    }
    if (eocd < 0) fail('zip end-of-central-directory record not found; the archive is truncated or corrupt');
    let totalEntries = tv.getUint16(eocd + 10, true);
    let cdSize = tv.getUint32(eocd + 12, true);
    let cdOffset = tv.getUint32(eocd + 16, true);
    const diskNo = tv.getUint16(eocd + 4, true);
    if (diskNo !== 0 && diskNo !== 0xffff) fail('multi-disk zip archives are not supported');
    const eocdAbs = tailStart + eocd;
    // ZIP64: locator sits immediately before the EOCD record
    if (eocd >= 20 && tv.getUint32(eocd - 20, true) === SIG_ZIP64_LOCATOR) {
      const z64Off = u64(tv, eocd - 20 + 8, where, 'ZIP64 EOCD offset');
      if (z64Off + 56 > eocdAbs - 20) fail('ZIP64 end-of-central-directory offset is out of range');
      const z = await file.read(z64Off, 56, 'ZIP64 end-of-central-directory record');
      const zv = new DataView(z.buffer);
      if (zv.getUint32(0, true) !== SIG_ZIP64_EOCD) fail('ZIP64 end-of-central-directory record is corrupt');
      totalEntries = u64(zv, 32, where, 'ZIP64 entry count');
      cdSize = u64(zv, 40, where, 'ZIP64 central directory size');
      cdOffset = u64(zv, 48, where, 'ZIP64 central directory offset');
    } else if (totalEntries === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      fail('ZIP64 archive without a ZIP64 end-of-central-directory locator');
    }
    if (cdOffset + cdSize > file.size) {
      fail(`zip central directory (offset ${cdOffset}, ${cdSize} bytes) lies beyond the end of the file; truncated?`);
    }
    if (totalEntries * 46 > cdSize) fail(`zip central directory too small for ${totalEntries} entries`);
    const cd = await file.read(cdOffset, cdSize, 'zip central directory');
    const cv = new DataView(cd.buffer);
    const entries = new Map<string, ZipEntry>();
    let p = 0;
    for (let i = 0; i < totalEntries; i++) {
      if (p + 46 > cdSize || cv.getUint32(p, true) !== SIG_CENTRAL) fail(`zip central directory entry ${i} is corrupt`);
      const flags = cv.getUint16(p + 8, true);
      const method = cv.getUint16(p + 10, true);
      const crc32 = cv.getUint32(p + 16, true);
      let compressedSize = cv.getUint32(p + 20, true);
      let uncompressedSize = cv.getUint32(p + 24, true);
      const nameLen = cv.getUint16(p + 28, true);
      const extraLen = cv.getUint16(p + 30, true);
      const commentLen = cv.getUint16(p + 32, true);
      const diskStart = cv.getUint16(p + 34, true);
      let localHeaderOffset = cv.getUint32(p + 42, true);
      const end = p + 46 + nameLen + extraLen + commentLen;
      if (end > cdSize) fail(`zip central directory entry ${i} overruns the directory`);
      const name = utf8.decode(cd.subarray(p + 46, p + 46 + nameLen));
      // ZIP64 extended information extra field
      let q = p + 46 + nameLen;
      const extraEnd = q + extraLen;
      while (q + 4 <= extraEnd) {
        const id = cv.getUint16(q, true);
        const size = cv.getUint16(q + 2, true);
        if (q + 4 + size > extraEnd) fail(`zip entry '${name}' has a corrupt extra field`);
        if (id === 0x0001) {
          let r = q + 4;
          const take = (what: string): number => {
            if (r + 8 > q + 4 + size) fail(`zip entry '${name}' has a short ZIP64 extra field`);
            const v = u64(cv, r, where, what);
            r += 8;
            return v;
          };
          if (uncompressedSize === 0xffffffff) uncompressedSize = take('ZIP64 uncompressed size');
          if (compressedSize === 0xffffffff) compressedSize = take('ZIP64 compressed size');
          if (localHeaderOffset === 0xffffffff) localHeaderOffset = take('ZIP64 local header offset');
        }
        q += 4 + size;
      }
      if (diskStart !== 0 && diskStart !== 0xffff) fail(`zip entry '${name}' is on another disk`);
      if (localHeaderOffset + 30 > cdOffset || localHeaderOffset + compressedSize > cdOffset) {
        fail(`zip entry '${name}' (offset ${localHeaderOffset}, ${compressedSize} bytes) overlaps the central directory`);
      }
      entries.set(name, { name, method, flags, crc32, compressedSize, uncompressedSize, localHeaderOffset });
      p = end;
    }
    return new ZipArchive(file, entries);
  }

  get(name: string): ZipEntry | undefined {
    return this.entries.get(name);
  }

  /** Absolute file offset of the entry's (possibly compressed) data. */
  async dataOffset(entry: ZipEntry): Promise<number> {
    const cached = this.dataOffsets.get(entry.name);
    if (cached !== undefined) return cached;
    const h = await this.file.read(entry.localHeaderOffset, 30, `zip local header of '${entry.name}'`);
    const hv = new DataView(h.buffer);
    if (hv.getUint32(0, true) !== SIG_LOCAL) {
      throw new CheckpointError(`${this.file.path}: zip local header of '${entry.name}' is corrupt`);
    }
    const off = entry.localHeaderOffset + 30 + hv.getUint16(26, true) + hv.getUint16(28, true);
    if (off + entry.compressedSize > this.file.size) {
      throw new CheckpointError(
        `${this.file.path}: zip entry '${entry.name}' (${entry.compressedSize} bytes at ${off}) extends past the end of the file; truncated?`,
      );
    }
    this.dataOffsets.set(entry.name, off);
    return off;
  }

  /**
   * Reads `length` bytes starting `start` bytes into the entry's uncompressed content.
   * STORED entries are read in place; DEFLATE entries are inflated whole (only this entry).
   */
  async read(entry: ZipEntry, start = 0, length = entry.uncompressedSize - start): Promise<Uint8Array> {
    const what = `zip entry '${entry.name}'`;
    if (start < 0 || length < 0 || start + length > entry.uncompressedSize) {
      throw new CheckpointError(
        `${this.file.path}: read of bytes ${start}..${start + length} is outside ${what} (${entry.uncompressedSize} bytes)`,
      );
    }
    if (entry.flags & 1) throw new CheckpointError(`${this.file.path}: ${what} is encrypted`);
    const off = await this.dataOffset(entry);
    if (entry.method === 0) {
      if (entry.compressedSize !== entry.uncompressedSize) {
        throw new CheckpointError(`${this.file.path}: stored ${what} has inconsistent sizes`);
      }
      return this.file.read(off + start, length, what);
    }
    if (entry.method === 8) {
      const full = await this.inflate(entry, off);
      return start === 0 && length === full.byteLength ? full : full.slice(start, start + length);
    }
    throw new CheckpointError(`${this.file.path}: ${what} uses unsupported zip compression method ${entry.method}`);
  }

  private async inflate(entry: ZipEntry, off: number): Promise<Uint8Array> {
    const what = `zip entry '${entry.name}'`;
    if (entry.uncompressedSize > entry.compressedSize * MAX_DEFLATE_RATIO + 1024) {
      throw new CheckpointError(`${this.file.path}: ${what} claims an impossible uncompressed size`);
    }
    // torch.save stores its records uncompressed: a compressed record that inflates beyond the size of the
    // whole archive is a zip bomb, not a checkpoint.
    if (entry.uncompressedSize > this.file.size) {
      throw new CheckpointError(
        `${this.file.path}: ${what} inflates to ${entry.uncompressedSize} bytes, more than the whole archive (${this.file.size}); refusing a possible zip bomb`,
      );
    }
    const comp = await this.file.read(off, entry.compressedSize, what);
    let out: Uint8Array;
    try {
      const buf = inflateRawSync(comp, { maxOutputLength: Math.max(1, entry.uncompressedSize) });
      out = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    } catch (err) {
      throw new CheckpointError(`${this.file.path}: cannot inflate ${what}: ${(err as Error).message}`, { cause: err });
    }
    if (out.byteLength !== entry.uncompressedSize) {
      throw new CheckpointError(`${this.file.path}: ${what} inflated to ${out.byteLength} bytes, expected ${entry.uncompressedSize}`);
    }
    return out.slice();
  }
}

function u64(v: DataView, at: number, where: string, what: string): number {
  const x = v.getBigUint64(at, true);
  if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw new CheckpointError(`${where}: ${what} is out of range`);
  return Number(x);
}

let crcTable: Uint32Array | undefined;
/** CRC-32 (IEEE, as used by zip). */
export function crc32(data: Uint8Array, crc = 0): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = (crc ^ 0xffffffff) >>> 0;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
