/**
 * Draws grounded entities (MiniGPT-v2 boxes) on an image, like upstream `demo_v2.py`'s
 * `visualize_all_bbox_together`: every box of a phrase in the phrase's colour, a label with the
 * phrase on a filled background above the box (inside it when there is no room above), later labels
 * pushed down when they would overlap earlier ones, and a duplicate label of the same phrase at the
 * same place skipped.
 *
 * Differences from upstream: the image keeps its original size (EXIF orientation applied) instead of
 * being resized to 500 px wide, up to `maxSide`; lines are 2-3 px depending on the image size; the
 * label is opaque and the text colour is chosen for contrast; colours come from a palette of 16
 * distinct colours (upstream's list has duplicates).
 *
 * Rendering: sharp decodes and orients (`.rotate()`), scales down to `maxSide`, then an SVG overlay
 * (no external fonts or URLs: generic font families resolved by fontconfig) is composited. Box edges
 * are drawn as pixel-aligned filled rectangles with `shape-rendering="crispEdges"`, so they hit
 * exactly the pixels `gridToPixels` gives for the output size.
 */
import sharp from 'sharp';
import { gridToPixels, phraseIndices, phraseKey, type Entity, type PixelBox } from '../grounding/parse.js';
import { DEFAULT_MAX_INPUT_PIXELS, ImageInputError, imageHeader, sharpInputError } from './preprocess.js';

export interface AnnotateOptions {
  /** Largest output side in pixels (default 2048); larger images are scaled down. */
  maxSide?: number;
  /**
   * Output format. 'auto' (default): JPEG (quality 90) when the input was a JPEG or the output has
   * more than 1.5 megapixels, PNG otherwise.
   */
  format?: 'auto' | 'png' | 'jpeg';
  /** The model's box grid (default 100). */
  gridSize?: number;
  /** Refuse inputs with more pixels than this (default 50 MP, as preprocessing). */
  maxInputPixels?: number;
}

export interface AnnotatedImage {
  data: Buffer;
  mime: 'image/png' | 'image/jpeg';
  width: number;
  height: number;
}

/** 16 distinct colours (Sasha Trubetskoy's list, without white/black/greys). */
export const ANNOTATION_PALETTE: readonly (readonly [number, number, number])[] = [
  [230, 25, 75], // red
  [60, 180, 75], // green
  [67, 99, 216], // blue
  [245, 130, 49], // orange
  [145, 30, 180], // purple
  [66, 212, 244], // cyan
  [240, 50, 230], // magenta
  [191, 239, 69], // lime
  [255, 225, 25], // yellow
  [70, 153, 144], // teal
  [154, 99, 36], // brown
  [128, 0, 0], // maroon
  [128, 128, 0], // olive
  [0, 0, 117], // navy
  [250, 190, 212], // pink
  [220, 190, 255], // lavender
];

export const DEFAULT_MAX_SIDE = 2048;
const JPEG_PIXELS_THRESHOLD = 1_500_000;
const JPEG_QUALITY = 90;
const MAX_LABEL_CHARS = 60;
/** libvips refused the image for its pixel limit */
const PIXEL_LIMIT = 'Image too large.';
const FONT_FAMILY = 'DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif';

const hex = (c: readonly number[]) => `#${c.map((v) => v.toString(16).padStart(2, '0')).join('')}`;

/** The colour (`#rrggbb`) of each entity: one per phrase, in order of first appearance. */
export function entityColours(entities: Entity[]): string[] {
  return phraseIndices(entities).map((i) => hex(ANNOTATION_PALETTE[i % ANNOTATION_PALETTE.length]));
}

/** Box line width for an image of this size: 2 px, 3 px for big images. */
export function boxLineWidth(width: number, height: number): number {
  return Math.max(width, height) > 1000 ? 3 : 2;
}

/** Label font size in px for an image of this size. */
export function labelFontSize(width: number, height: number): number {
  return Math.min(28, Math.max(11, Math.round(Math.sqrt(width * height) * 0.022)));
}

/**
 * Returns the image (EXIF orientation applied, scaled down to `maxSide`) with the entities' boxes
 * and labels drawn. Throws `ImageInputError` for bytes that are not a usable image.
 */
export async function annotateImage(image: Uint8Array, entities: Entity[], opts: AnnotateOptions = {}): Promise<AnnotatedImage> {
  if (!(image instanceof Uint8Array)) throw new ImageInputError('Not an image: expected binary image data.');
  if (image.byteLength === 0) throw new ImageInputError('Not an image: the file is empty.');
  const maxSide = opts.maxSide ?? DEFAULT_MAX_SIDE;
  if (!Number.isFinite(maxSide) || maxSide < 1) throw new RangeError(`annotateImage: invalid maxSide ${maxSide}`);
  const maxPixels = opts.maxInputPixels ?? DEFAULT_MAX_INPUT_PIXELS;
  const format = opts.format ?? 'auto';

  let meta: sharp.Metadata;
  try {
    meta = await sharp(image, { limitInputPixels: false, failOn: 'error' }).metadata();
  } catch (err) {
    throw sharpInputError(err, PIXEL_LIMIT);
  }
  const { format: inFormat, width: rawW, height: rawH } = imageHeader(meta);
  if (rawW * rawH > maxPixels) {
    throw new ImageInputError(`Image too large: ${rawW}x${rawH} exceeds the limit of ${(maxPixels / 1e6).toFixed(1)} megapixels.`);
  }
  const swap = (meta.orientation ?? 1) >= 5;
  const srcW = swap ? rawH : rawW;
  const srcH = swap ? rawW : rawH;
  const scale = Math.min(1, Math.floor(maxSide) / Math.max(srcW, srcH));
  const width = Math.max(1, Math.round(srcW * scale));
  const height = Math.max(1, Math.round(srcH * scale));

  // Pass 1: decode, orient, scale, to raw RGBA.
  let base: Buffer;
  try {
    let pipe = sharp(image, { limitInputPixels: Math.floor(maxPixels), failOn: 'error', pages: 1, page: 0 })
      .rotate()
      .toColourspace('srgb');
    if (width !== srcW || height !== srcH) pipe = pipe.resize(width, height, { fit: 'fill' });
    const { data, info } = await pipe.ensureAlpha().raw().toBuffer({ resolveWithObject: true });
    if (info.width !== width || info.height !== height || info.channels !== 4) {
      throw new Error(`unexpected decoded size ${info.width}x${info.height}x${info.channels}`);
    }
    base = data;
  } catch (err) {
    throw sharpInputError(err, PIXEL_LIMIT);
  }

  const useJpeg = format === 'jpeg' || (format === 'auto' && (inFormat === 'jpeg' || width * height > JPEG_PIXELS_THRESHOLD));

  // Pass 2: overlay.
  const svg = buildOverlaySvg(entities, width, height, opts.gridSize);
  let composed: Buffer = base;
  if (svg !== null) {
    composed = await sharp(base, { raw: { width, height, channels: 4 } })
      .composite([{ input: Buffer.from(svg, 'utf8'), left: 0, top: 0 }])
      .raw()
      .toBuffer();
  }

  // Pass 3: encode.
  let out = sharp(composed, { raw: { width, height, channels: 4 } });
  let data: Buffer;
  if (useJpeg) {
    data = await out.flatten({ background: '#ffffff' }).jpeg({ quality: JPEG_QUALITY, chromaSubsampling: '4:4:4' }).toBuffer();
  } else {
    if (!meta.hasAlpha) out = out.removeAlpha();
    data = await out.png().toBuffer();
  }
  return { data, mime: useJpeg ? 'image/jpeg' : 'image/png', width, height };
}

// ------------------------------------------------------------------------------------------------
// SVG overlay
// ------------------------------------------------------------------------------------------------

interface Rect {
  x: number;
  y: number;
  w: number;
  h: number;
}

/** Escapes text for XML and drops characters XML 1.0 does not allow. */
export function xmlEscape(s: string): string {
  return (
    s
      // biome-ignore lint/suspicious/noControlCharactersInRegex: removing control characters is what this does
      .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, '')
      .replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '')
      .replace(/&/g, '&amp;')
      .replace(/</g, '&lt;')
      .replace(/>/g, '&gt;')
      .replace(/"/g, '&quot;')
      .replace(/'/g, '&apos;')
  );
}

/** A generous estimate of the rendered width of `s` in a sans-serif font (em units). */
function textWidthEm(s: string): number {
  let w = 0;
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (cp >= 0x2e80)
      w += 1.0; // CJK and other wide scripts
    else if (/[ilIj.,:;'|!`]/.test(ch)) w += 0.34;
    else if (ch === ' ') w += 0.33;
    else if (/[mwMW@%]/.test(ch)) w += 1.0;
    else if (/[A-Z]/.test(ch)) w += 0.74;
    else if (/[frt()[\]{}\-"]/.test(ch)) w += 0.45;
    else w += 0.64;
  }
  return w;
}

function overlaps(a: Rect, b: Rect): boolean {
  return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

function iou(a: Rect, b: Rect): number {
  const ix = Math.max(0, Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x));
  const iy = Math.max(0, Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y));
  const inter = ix * iy;
  const union = a.w * a.h + b.w * b.h - inter;
  return union > 0 ? inter / union : 0;
}

function frameRects(b: PixelBox, t: number): Rect[] {
  const { left: x, top: y, width: w, height: h } = b;
  if (w <= 2 * t || h <= 2 * t) return [{ x, y, w, h }];
  return [
    { x, y, w, h: t },
    { x, y: y + h - t, w, h: t },
    { x, y: y + t, w: t, h: h - 2 * t },
    { x: x + w - t, y: y + t, w: t, h: h - 2 * t },
  ];
}

/** The SVG drawn over an image of `width` x `height`, or null when there is nothing to draw. */
export function buildOverlaySvg(entities: Entity[], width: number, height: number, gridSize?: number): string | null {
  const list = Array.isArray(entities) ? entities.filter((e) => e && Array.isArray(e.boxes)) : [];
  if (!list.some((e) => e.boxes.length > 0)) return null;
  const colours = phraseIndices(list).map((i) => ANNOTATION_PALETTE[i % ANNOTATION_PALETTE.length]);
  const t = boxLineWidth(width, height);
  const fs = labelFontSize(width, height);
  const pad = Math.max(2, Math.round(fs * 0.3));
  const labelH = Math.round(fs * 1.25) + pad;

  const boxParts: string[] = [];
  const labelParts: string[] = [];
  const placed: Array<{ rect: Rect; key: string }> = [];
  let clipId = 0;

  list.forEach((entity, ei) => {
    const colour = colours[ei];
    const fill = hex(colour);
    const phrase = typeof entity.phrase === 'string' ? entity.phrase.replace(/\s+/g, ' ').trim() : '';
    const key = phraseKey(entity.phrase ?? null);
    for (const box of entity.boxes) {
      let pb: PixelBox;
      try {
        pb = gridToPixels(box, width, height, gridSize);
      } catch {
        continue;
      }
      for (const r of frameRects(pb, t)) {
        boxParts.push(`<rect x="${r.x}" y="${r.y}" width="${r.w}" height="${r.h}" fill="${fill}"/>`);
      }
      if (!phrase) continue;

      // Label: text truncated to fit the image width.
      let text = phrase.length > MAX_LABEL_CHARS ? `${phrase.slice(0, MAX_LABEL_CHARS - 1)}…` : phrase;
      const maxTextW = width - 2 * pad;
      while (text.length > 1 && textWidthEm(text) * fs > maxTextW) text = `${text.slice(0, -2)}…`;
      const labelW = Math.min(width, Math.ceil(textWidthEm(text) * fs) + 2 * pad);
      const h = Math.min(labelH, height);
      let x = pb.left;
      let y = pb.top - h;
      if (y < 0) {
        // No room above: inside the box, under its top-left corner (upstream does the same).
        y = Math.min(pb.top + t, height - h);
        x = pb.left + t;
      }
      x = Math.min(x, width - labelW);
      x = Math.max(0, x);
      y = Math.max(0, y);
      let rect: Rect = { x, y, w: labelW, h };
      if (placed.some((p) => p.key === key && iou(p.rect, rect) > 0.95)) continue;
      for (let guard = 0; guard < 1000 && placed.some((p) => overlaps(p.rect, rect)); guard++) {
        if (rect.y + 2 * h > height) {
          rect = { ...rect, y: Math.max(0, height - h) };
          break;
        }
        rect = { ...rect, y: rect.y + h };
      }
      placed.push({ rect, key });
      const lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2];
      const textFill = lum > 140 ? '#000000' : '#ffffff';
      const id = `c${clipId++}`;
      labelParts.push(
        `<rect x="${rect.x}" y="${rect.y}" width="${rect.w}" height="${rect.h}" fill="${fill}"/>` +
          `<clipPath id="${id}"><rect x="${rect.x}" y="${rect.y}" width="${rect.w}" height="${rect.h}"/></clipPath>` +
          `<text x="${rect.x + pad}" y="${rect.y + Math.round(pad / 2 + fs * 0.95)}" clip-path="url(#${id})" ` +
          `font-family="${FONT_FAMILY}" font-size="${fs}" fill="${textFill}" shape-rendering="auto" ` +
          `text-rendering="optimizeLegibility">${xmlEscape(text)}</text>`,
      );
    }
  });

  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" shape-rendering="crispEdges">` +
    boxParts.join('') +
    labelParts.join('') +
    `</svg>`
  );
}
