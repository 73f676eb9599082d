/**
 * Image preprocessing equivalent to upstream MiniGPT-v2's `Blip2ImageEvalProcessor`:
 *
 *   PIL `Image.open(...).convert('RGB')`
 *   -> torchvision `Resize((S, S), interpolation=BICUBIC)`   (aspect ratio NOT preserved, no crop)
 *   -> `ToTensor()` (/255, HWC -> CHW)
 *   -> `Normalize(mean, std)`
 *
 * Decoding is done by sharp (libvips): EXIF orientation is applied, alpha is dropped (PIL's
 * `convert('RGB')` discards the alpha channel, it does not composite), greyscale / palette /
 * CMYK / 16-bit inputs become 8-bit sRGB, animated images contribute their first frame.
 *
 * The resize itself is a bit-exact port of Pillow's `ImagingResample` (libImaging/Resample.c,
 * 8 bits per channel path): separable, antialiased cubic convolution with a = -0.5, horizontal
 * pass first, coefficients quantised to 22 fractional bits, rounding + clipping to uint8 after
 * each pass. It reproduces the golden PIL output bit for bit; libvips' own resize kernels
 * (nearest/linear/cubic/mitchell/lanczos2/3/mks*) all differ from it on most pixels of the golden
 * image (mean abs error 4.7-9.2 grey levels), so sharp is only used to decode.
 */
import sharp from 'sharp';

export interface PreprocessOptions {
  /** Output side length S (the image is resized to S x S). */
  size: number;
  mean: [number, number, number];
  std: [number, number, number];
  /** Refuse images with more than this many pixels (width * height) before decoding. */
  maxInputPixels?: number;
}

export interface PreprocessedImage {
  /** Normalised pixels, float32 [1, 3, S, S] NCHW. */
  pixelValues: Float32Array;
  /** Original width after EXIF orientation. */
  width: number;
  /** Original height after EXIF orientation. */
  height: number;
}

/** A user-supplied image could not be used; `message` is suitable for showing to the user. */
export class ImageInputError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ImageInputError';
  }
}

/** Default decompression-bomb guard: 50 megapixels (about 150 MB of decoded RGB). */
export const DEFAULT_MAX_INPUT_PIXELS = 50_000_000;

/** Formats (as reported by sharp's metadata) that we accept from users. */
const SUPPORTED_FORMATS = new Set(['jpeg', 'png', 'webp', 'gif', 'tiff', 'heif', 'avif']);

/** Raw interleaved 8-bit image. */
export interface RawImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

export async function preprocessImage(input: Buffer | Uint8Array, opts: PreprocessOptions): Promise<PreprocessedImage> {
  const { size, mean, std } = opts;
  if (!Number.isInteger(size) || size <= 0) {
    throw new RangeError(`preprocessImage: size must be a positive integer, got ${size}`);
  }
  for (let c = 0; c < 3; c++) {
    if (!(std[c] > 0)) throw new RangeError(`preprocessImage: std[${c}] must be > 0`);
  }
  const rgb = await decodeImageRgb(input, { maxInputPixels: opts.maxInputPixels });
  const resized = resizeBicubicPil(rgb, size, size);
  return {
    pixelValues: normalizeToNchw(resized, mean, std),
    width: rgb.width,
    height: rgb.height,
  };
}

/**
 * Decodes an encoded image into 8-bit sRGB RGB (3 channels, HWC), applying EXIF orientation and
 * dropping any alpha channel without compositing (like PIL `convert('RGB')`).
 */
export async function decodeImageRgb(input: Buffer | Uint8Array, opts: { maxInputPixels?: number } = {}): Promise<RawImage> {
  if (!(input instanceof Uint8Array)) {
    throw new ImageInputError('Not an image: expected binary image data.');
  }
  if (input.byteLength === 0) {
    throw new ImageInputError('Not an image: the file is empty.');
  }
  const maxPixels = opts.maxInputPixels ?? DEFAULT_MAX_INPUT_PIXELS;
  if (!(maxPixels > 0)) throw new RangeError('maxInputPixels must be > 0');
  // Only the accepted raster formats reach libvips: SVG (librsvg, which would resolve references), and
  // whatever else the library could parse, are refused from their first bytes.
  const sniffed = sniffImageFormat(input);
  if (sniffed === 'svg') {
    throw new ImageInputError('Unsupported image format "svg": please send a JPEG, PNG, WebP, GIF, TIFF or AVIF image.');
  }
  if (sniffed === null) {
    throw new ImageInputError('Not an image, or an unsupported image format: please send a JPEG, PNG, WebP, GIF, TIFF or AVIF image.');
  }

  const sharpOpts: sharp.SharpOptions = {
    // libvips refuses, from the header alone, images whose width*height exceeds this.
    limitInputPixels: Math.min(Math.floor(maxPixels), Number.MAX_SAFE_INTEGER),
    failOn: 'error',
    pages: 1,
    page: 0,
    sequentialRead: true,
  };

  let meta: sharp.Metadata;
  try {
    // Header only (no pixel decoding); the pixel limit is checked below with a clearer message
    // and enforced again by libvips for the actual decode.
    meta = await sharp(input, { ...sharpOpts, limitInputPixels: false }).metadata();
  } catch (err) {
    throw sharpInputError(err, pixelLimitMessage(maxPixels));
  }
  const { width: w0, height: h0 } = imageHeader(meta);
  if (w0 * h0 > maxPixels) {
    throw tooLarge(w0, h0, maxPixels);
  }

  let data: Buffer;
  let info: sharp.OutputInfo;
  try {
    ({ data, info } = await sharp(input, sharpOpts)
      .rotate() // apply EXIF orientation
      .removeAlpha() // PIL convert('RGB') drops alpha, no compositing
      .toColourspace('srgb') // greyscale / CMYK / 16-bit -> 8-bit sRGB
      .raw()
      .toBuffer({ resolveWithObject: true }));
  } catch (err) {
    throw sharpInputError(err, pixelLimitMessage(maxPixels));
  }

  const { width, height, channels } = info;
  const pixels = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (channels === 3) return { data: pixels, width, height, channels: 3 };
  // Defensive: should not happen after removeAlpha + toColourspace('srgb').
  const out = new Uint8Array(width * height * 3);
  for (let i = 0, n = width * height; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      out[i * 3 + c] = pixels[i * channels + (channels >= 3 ? c : 0)];
    }
  }
  return { data: out, width, height, channels: 3 };
}

const HEIF_BRANDS = new Set(['heic', 'heix', 'hevc', 'hevx', 'heim', 'heis', 'hevm', 'hevs', 'mif1', 'msf1', 'avif', 'avis']);

/**
 * The format of an encoded image from its signature: one of the accepted raster formats, 'svg' for
 * XML/SVG text, or null for anything else.
 */
export function sniffImageFormat(b: Uint8Array): 'jpeg' | 'png' | 'gif' | 'webp' | 'tiff' | 'heif' | 'svg' | null {
  const ascii = (from: number, to: number) => String.fromCharCode(...b.subarray(from, to));
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 8 && b[0] === 0x89 && ascii(1, 8) === 'PNG\r\n\x1a\n') return 'png';
  if (b.length >= 6 && (ascii(0, 6) === 'GIF87a' || ascii(0, 6) === 'GIF89a')) return 'gif';
  if (b.length >= 12 && ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return 'webp';
  if (b.length >= 4 && (ascii(0, 4) === 'II*\0' || ascii(0, 4) === 'MM\0*' || ascii(0, 4) === 'II+\0' || ascii(0, 4) === 'MM\0+'))
    return 'tiff';
  if (b.length >= 12 && ascii(4, 8) === 'ftyp' && HEIF_BRANDS.has(ascii(8, 12))) return 'heif';
  // Text that starts like XML or SVG (after a BOM and white space).
  const head = new TextDecoder('utf-8', { fatal: false })
    .decode(b.subarray(0, 512))
    .replace(/^\uFEFF/, '')
    .trimStart()
    .toLowerCase();
  if (
    head.startsWith('<?xml') ||
    head.startsWith('<svg') ||
    head.startsWith('<!doctype svg') ||
    (head.startsWith('<') && head.includes('<svg'))
  )
    return 'svg';
  return null;
}

function tooLarge(w: number, h: number, maxPixels: number): ImageInputError {
  const mp = (n: number) => (n / 1e6).toFixed(n < 1e7 ? 1 : 0);
  return new ImageInputError(`Image too large: ${w}x${h} (${mp(w * h)} megapixels) exceeds the limit of ${mp(maxPixels)} megapixels.`);
}

const pixelLimitMessage = (maxPixels: number) => `Image too large: it exceeds the limit of ${(maxPixels / 1e6).toFixed(1)} megapixels.`;

/**
 * The format and size (of the first page) that sharp read from an image's header, checked: one of the
 * accepted raster formats, with pixels. Throws ImageInputError otherwise.
 */
export function imageHeader(meta: sharp.Metadata): { format: string; width: number; height: number } {
  const format = meta.format as string | undefined;
  if (format === undefined || !SUPPORTED_FORMATS.has(format)) {
    throw new ImageInputError(
      `Unsupported image format${format ? ` "${format}"` : ''}: please send a JPEG, PNG, WebP, GIF, TIFF or AVIF image.`,
    );
  }
  const width = meta.width ?? 0;
  const height = meta.pageHeight ?? meta.height ?? 0;
  if (width <= 0 || height <= 0) throw new ImageInputError('The image is corrupt or has no pixels.');
  return { format, width, height };
}

/** A sharp failure as the ImageInputError to tell the user; `pixelLimit` is the message for libvips' pixel limit. */
export function sharpInputError(err: unknown, pixelLimit: string): ImageInputError {
  if (err instanceof ImageInputError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  if (/unsupported image format|not in a known format|is not a known file format/i.test(msg)) {
    return new ImageInputError('Not an image, or an unsupported image format: please send a JPEG, PNG, WebP, GIF, TIFF or AVIF image.', {
      cause: err,
    });
  }
  if (/pixel limit/i.test(msg)) return new ImageInputError(pixelLimit, { cause: err });
  return new ImageInputError('The image could not be decoded (corrupt or truncated file).', { cause: err });
}

// ---------------------------------------------------------------------------------------------
// Pillow-exact bicubic resampling (Pillow libImaging/Resample.c, 8bpc path).
// ---------------------------------------------------------------------------------------------

const PRECISION_BITS = 32 - 8 - 2;
const PRECISION_SCALE = 1 << PRECISION_BITS;
const ROUND_HALF = 1 << (PRECISION_BITS - 1);
const BICUBIC_SUPPORT = 2.0;

function bicubicFilter(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

interface Coeffs {
  ksize: number;
  /** [xmin, count] per output sample. */
  bounds: Int32Array;
  /** Fixed-point coefficients, outSize * ksize. */
  kk: Int32Array;
}

/** Port of `precompute_coeffs` + `normalize_coeffs_8bpc` for box [0, inSize]. */
function precomputeCoeffs(inSize: number, outSize: number): Coeffs {
  const in0 = 0;
  const in1 = inSize;
  const scale = (in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = BICUBIC_SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = bicubicFilter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      let v = x < xmax ? k[x] : 0;
      if (x < xmax && ww !== 0.0) v /= ww;
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * PRECISION_SCALE) : Math.trunc(0.5 + v * PRECISION_SCALE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss: number): number {
  const v = Math.floor(ss / PRECISION_SCALE);
  return v < 0 ? 0 : Math.min(v, 255);
}

/**
 * Resizes an interleaved 8-bit image exactly like Pillow's `Image.resize((outW, outH), BICUBIC)`
 * (Pillow 9.x/10.x/11.x, no `box`, no `reducing_gap`).
 */
export function resizeBicubicPil(img: RawImage, outW: number, outH: number): RawImage {
  const { width: inW, height: inH, channels: C, data } = img;
  if (!Number.isInteger(outW) || !Number.isInteger(outH) || outW <= 0 || outH <= 0) {
    throw new RangeError(`resizeBicubicPil: invalid output size ${outW}x${outH}`);
  }
  if (data.length !== inW * inH * C) throw new RangeError('resizeBicubicPil: data size mismatch');
  const needH = outW !== inW;
  const needV = outH !== inH;
  if (!needH && !needV) return { data: data.slice(), width: inW, height: inH, channels: C };

  const horiz = precomputeCoeffs(inW, outW);
  const vert = precomputeCoeffs(inH, outH);
  const vb = vert.bounds;

  let src = data;
  let srcW = inW;
  let srcH = inH;
  if (needH) {
    // Only the rows the vertical pass will read.
    const yFirst = vb[0];
    const yLast = vb[(outH - 1) * 2] + vb[(outH - 1) * 2 + 1];
    const rows = needV ? yLast - yFirst : inH;
    const rowOffset = needV ? yFirst : 0;
    if (needV) for (let i = 0; i < outH; i++) vb[i * 2] -= yFirst;
    const tmp = new Uint8Array(outW * rows * C);
    const { ksize, bounds, kk } = horiz;
    for (let y = 0; y < rows; y++) {
      const rowIn = (y + rowOffset) * inW * C;
      const rowOut = y * outW * C;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2];
        const xmax = bounds[xx * 2 + 1];
        const kOff = xx * ksize;
        if (C === 3) {
          let s0 = ROUND_HALF;
          let s1 = ROUND_HALF;
          let s2 = ROUND_HALF;
          let p = rowIn + xmin * 3;
          for (let x = 0; x < xmax; x++, p += 3) {
            const w = kk[kOff + x];
            s0 += data[p] * w;
            s1 += data[p + 1] * w;
            s2 += data[p + 2] * w;
          }
          const o = rowOut + xx * 3;
          tmp[o] = clip8(s0);
          tmp[o + 1] = clip8(s1);
          tmp[o + 2] = clip8(s2);
          continue;
        }
        for (let c = 0; c < C; c++) {
          let ss = ROUND_HALF;
          let p = rowIn + xmin * C + c;
          for (let x = 0; x < xmax; x++, p += C) ss += data[p] * kk[kOff + x];
          tmp[rowOut + xx * C + c] = clip8(ss);
        }
      }
    }
    src = tmp;
    srcW = outW;
    srcH = rows;
  }
  if (!needV) return { data: src, width: srcW, height: srcH, channels: C };

  const out = new Uint8Array(srcW * outH * C);
  const { ksize, kk } = vert;
  const stride = srcW * C;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = vb[yy * 2];
    const ymax = vb[yy * 2 + 1];
    const kOff = yy * ksize;
    const rowOut = yy * stride;
    for (let i = 0; i < stride; i++) {
      let ss = ROUND_HALF;
      let p = ymin * stride + i;
      for (let y = 0; y < ymax; y++, p += stride) ss += src[p] * kk[kOff + y];
      out[rowOut + i] = clip8(ss);
    }
  }
  return { data: out, width: srcW, height: outH, channels: C };
}

/** uint8 HWC RGB -> float32 [1, 3, H, W], (x / 255 - mean) / std (torchvision ToTensor + Normalize). */
export function normalizeToNchw(
  img: RawImage,
  mean: readonly [number, number, number],
  std: readonly [number, number, number],
): Float32Array {
  const { width: W, height: H, channels: C, data } = img;
  if (C !== 3) throw new RangeError(`normalizeToNchw: expected 3 channels, got ${C}`);
  const plane = W * H;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    // torchvision: ToTensor gives float32 x/255; Normalize does (x - mean) / std in float32.
    const m = Math.fround(mean[c]);
    const s = Math.fround(std[c]);
    const lut = new Float32Array(256);
    for (let v = 0; v < 256; v++) lut[v] = Math.fround(Math.fround(Math.fround(v / 255) - m) / s);
    const o = c * plane;
    for (let i = 0; i < plane; i++) out[o + i] = lut[data[i * 3 + c]];
  }
  return out;
}
