// Hostile image files for the reliability tests (issue 9): decompression bombs in every accepted format (huge
// dimensions in a tiny file), truncated and corrupt files, animations, CMYK and 16-bit images, SVGs that
// reference the network. Built from small real images with sharp, then patched byte by byte.
import zlib from 'node:zlib';
import sharp from 'sharp';
import { crc32 } from '../../src/convert/readers/zip.js';

function pngChunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}

/** A valid PNG of zero pixels: `w`x`h` RGB (depth 8) or greyscale (depth 1), its IDAT deflated as far as zlib goes. */
export async function pngOfZeros(w: number, h: number, depth: 1 | 8 = 8): Promise<Buffer> {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = depth;
  ihdr[9] = depth === 1 ? 0 : 2;
  const rowBytes = 1 + (depth === 1 ? Math.ceil(w / 8) : w * 3);
  // Streamed in blocks of whole rows, so that building a huge image needs no huge buffer.
  const rowsPerBlock = Math.max(1, Math.floor((4 << 20) / rowBytes));
  const block = Buffer.alloc(rowsPerBlock * rowBytes);
  const def = zlib.createDeflate({ level: 9 });
  const out: Buffer[] = [];
  def.on('data', (c: Buffer) => out.push(c));
  const done = new Promise<void>((resolve, reject) => {
    def.on('end', resolve);
    def.on('error', reject);
  });
  for (let y = 0; y < h; y += rowsPerBlock) {
    const rows = Math.min(rowsPerBlock, h - y);
    if (!def.write(rows === rowsPerBlock ? block : block.subarray(0, rows * rowBytes))) await new Promise((r) => def.once('drain', r));
  }
  def.end();
  await done;
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', Buffer.concat(out)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

/** A PNG whose header claims `w`x`h` 1-bit pixels (hundreds of megapixels in some tens of kilobytes). */
export function pngBomb(w: number, h: number): Promise<Buffer> {
  return pngOfZeros(w, h, 1);
}

/** The small real image each bomb below patches, encoded by `encode` (sharp's format call). */
async function greySquare(encode: (image: sharp.Sharp) => sharp.Sharp): Promise<Buffer> {
  return Buffer.from(await encode(sharp({ create: { width: 16, height: 16, channels: 3, background: '#808080' } })).toBuffer());
}

/** A JPEG whose frame header (SOF) claims `w`x`h`; the scan data is that of a tiny image. */
export async function jpegBomb(w: number, h: number): Promise<Buffer> {
  const jpg = await greySquare((image) => image.jpeg());
  for (let i = 2; i < jpg.length - 9; ) {
    if (jpg[i] !== 0xff) break;
    const marker = jpg[i + 1];
    const len = jpg.readUInt16BE(i + 2);
    if (marker >= 0xc0 && marker <= 0xc3) {
      jpg.writeUInt16BE(h, i + 5);
      jpg.writeUInt16BE(w, i + 7);
      return jpg;
    }
    i += 2 + len;
  }
  throw new Error('no SOF marker');
}

/** A lossless WebP whose VP8L header claims `w`x`h` (at most 16383 each, the format's limit). */
export async function webpBomb(w: number, h: number): Promise<Buffer> {
  const webp = await greySquare((image) => image.webp({ lossless: true }));
  const at = webp.indexOf('VP8L');
  if (at < 0) throw new Error('no VP8L chunk');
  const p = at + 8; // chunk data: 0x2f signature, then 14 bits width-1, 14 bits height-1, alpha, version
  const bits = webp.readUInt32LE(p + 1);
  const rest = bits & ~((1 << 28) - 1);
  webp.writeUInt32LE((rest | ((w - 1) & 0x3fff) | (((h - 1) & 0x3fff) << 14)) >>> 0, p + 1);
  return webp;
}

/** A GIF whose logical screen claims `w`x`h` around a tiny frame. */
export async function gifBomb(w: number, h: number): Promise<Buffer> {
  const gif = await greySquare((image) => image.gif());
  gif.writeUInt16LE(w, 6);
  gif.writeUInt16LE(h, 8);
  // and the first frame's image descriptor too
  const d = gif.indexOf(0x2c, 13);
  if (d > 0) {
    gif.writeUInt16LE(w, d + 5);
    gif.writeUInt16LE(h, d + 7);
  }
  return gif;
}

/** A TIFF whose IFD claims `w`x`h`. */
export async function tiffBomb(w: number, h: number): Promise<Buffer> {
  const tif = await greySquare((image) => image.tiff());
  const le = tif.toString('latin1', 0, 2) === 'II';
  const u16 = (o: number) => (le ? tif.readUInt16LE(o) : tif.readUInt16BE(o));
  const u32 = (o: number) => (le ? tif.readUInt32LE(o) : tif.readUInt32BE(o));
  const ifd = u32(4);
  const n = u16(ifd);
  for (let i = 0; i < n; i++) {
    const e = ifd + 2 + i * 12;
    const tag = u16(e);
    const type = u16(e + 2);
    if (tag !== 256 && tag !== 257) continue;
    const v = tag === 256 ? w : h;
    if (type === 3) le ? tif.writeUInt16LE(Math.min(v, 65535), e + 8) : tif.writeUInt16BE(Math.min(v, 65535), e + 8);
    else le ? tif.writeUInt32LE(v, e + 8) : tif.writeUInt32BE(v, e + 8);
  }
  return tif;
}

/** `frames` frames of `w`x`h` (the first red, the others blue), joined into one animated image. */
async function animatedFrames(frames: number, w: number, h: number): Promise<sharp.Sharp> {
  const red = await sharp({ create: { width: w, height: h, channels: 3, background: '#dd2222' } })
    .png()
    .toBuffer();
  const blue = await sharp({ create: { width: w, height: h, channels: 3, background: '#2222dd' } })
    .png()
    .toBuffer();
  return sharp([red, ...Array.from({ length: frames - 1 }, () => blue)], { join: { animated: true } });
}

/** An animated GIF with `frames` frames of `w`x`h` (the first red, the others blue). */
export async function animatedGif(frames: number, w = 64, h = 48): Promise<Buffer> {
  return (await animatedFrames(frames, w, h)).gif().toBuffer();
}

/** An animated WebP with `frames` frames of `w`x`h` (the first red, the others blue). */
export async function animatedWebp(frames: number, w = 64, h = 48): Promise<Buffer> {
  return (await animatedFrames(frames, w, h)).webp().toBuffer();
}

export async function cmykJpeg(w = 64, h = 48): Promise<Buffer> {
  return sharp({ create: { width: w, height: h, channels: 3, background: { r: 200, g: 100, b: 50 } } })
    .toColourspace('cmyk')
    .jpeg()
    .toBuffer();
}

export async function png16(w = 64, h = 48): Promise<Buffer> {
  const raw = new Uint16Array(w * h * 3).fill(40000);
  return sharp(Buffer.from(raw.buffer), { raw: { width: w, height: h, channels: 3 } })
    .toColourspace('rgb16')
    .png()
    .toBuffer();
}

/** Sample images of each accepted format (for truncation and corruption). */
export async function samples(): Promise<Record<'png' | 'jpeg' | 'webp' | 'gif', Buffer>> {
  const base = sharp({ create: { width: 64, height: 48, channels: 3, background: '#4080c0' } });
  return {
    png: await base.clone().png().toBuffer(),
    jpeg: await base.clone().jpeg().toBuffer(),
    webp: await base.clone().webp().toBuffer(),
    gif: await base.clone().gif().toBuffer(),
  };
}

/** Deterministic corruption: `n` bytes past the header overwritten with pseudo-random values. */
export function corrupt(b: Buffer, seed: number, n = 16, from = 16): Buffer {
  const out = Buffer.from(b);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    const at = from + (x % Math.max(1, out.length - from));
    x = (x * 1103515245 + 12345) >>> 0;
    out[at] = x >>> 24;
  }
  return out;
}

/** SVGs that would make a renderer fetch from `base` (a loopback listener that must see no request). */
export function svgsReferencing(base: string): Record<string, Buffer> {
  const svg = (body: string, pre = '') =>
    Buffer.from(
      `${pre}<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="64" height="48">${body}</svg>`,
    );
  return {
    image: svg(`<image href="${base}/image.png" width="64" height="48"/>`),
    xlinkImage: svg(`<image xlink:href="${base}/xlink.png" width="64" height="48"/>`),
    use: svg(`<use href="${base}/sprite.svg#a"/>`),
    css: svg(`<style>@import url("${base}/style.css"); rect { fill: url("${base}/fill.svg#p") }</style><rect width="10" height="10"/>`),
    entity: svg('<text>&ext;</text>', `<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY ext SYSTEM "${base}/entity.txt">]>`),
    xinclude: svg(`<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="${base}/xinclude.xml" parse="text"/>`),
    feImage: svg(`<filter id="f"><feImage href="${base}/feimage.png"/></filter><rect width="10" height="10" filter="url(#f)"/>`),
    bomSpace: Buffer.concat([
      Buffer.from([0xef, 0xbb, 0xbf]),
      Buffer.from('  \n'),
      svg(`<image href="${base}/bom.png" width="9" height="9"/>`),
    ]),
  };
}
