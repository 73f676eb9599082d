import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { gridToPixels, parseGrounding, type Entity, type GridBox } from '../../src/grounding/parse.js';
import {
  ANNOTATION_PALETTE,
  annotateImage,
  type AnnotateOptions,
  boxLineWidth,
  buildOverlaySvg,
  entityColours,
  labelFontSize,
  xmlEscape,
} from '../../src/image/annotate.js';
import { ImageInputError } from '../../src/image/preprocess.js';

type RGB = readonly [number, number, number];
const GREY: RGB = [128, 128, 128];
const RED = ANNOTATION_PALETTE[0];
const GREEN = ANNOTATION_PALETTE[1];

async function plainImage(width: number, height: number, colour: RGB, format: 'png' | 'jpeg' = 'png') {
  const img = sharp({ create: { width, height, channels: 3, background: { r: colour[0], g: colour[1], b: colour[2] } } });
  return format === 'png' ? img.png().toBuffer() : img.jpeg({ quality: 95 }).toBuffer();
}

/** `entities` drawn on a plain grey `width` x `height` PNG: the result, and its pixels. */
async function annotatedGrey(width: number, height: number, entities: Entity[], opts?: AnnotateOptions) {
  const out = await annotateImage(await plainImage(width, height, GREY), entities, opts);
  return { out, p: await pixels(out.data) };
}

interface Pixels {
  width: number;
  height: number;
  at(x: number, y: number): RGB;
}

async function pixels(encoded: Buffer): Promise<Pixels> {
  const { data, info } = await sharp(encoded).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return {
    width: info.width,
    height: info.height,
    at(x, y) {
      if (x < 0 || y < 0 || x >= info.width || y >= info.height) throw new Error(`(${x},${y}) outside`);
      const i = (y * info.width + x) * info.channels;
      return [data[i], data[i + 1], data[i + 2]];
    },
  };
}

function near(a: RGB, b: RGB, tol = 0): boolean {
  return Math.abs(a[0] - b[0]) <= tol && Math.abs(a[1] - b[1]) <= tol && Math.abs(a[2] - b[2]) <= tol;
}

function expectColour(actual: RGB, expected: RGB, tol = 0) {
  expect(near(actual, expected, tol), `got ${actual}, expected ${expected}`).toBe(true);
}

/** Count of pixels of `colour` in a rectangle. */
function countColour(p: Pixels, x0: number, y0: number, x1: number, y1: number, colour: RGB, tol = 0): number {
  let n = 0;
  for (let y = Math.max(0, y0); y < Math.min(p.height, y1); y++)
    for (let x = Math.max(0, x0); x < Math.min(p.width, x1); x++) if (near(p.at(x, y), colour, tol)) n++;
  return n;
}

const entity = (phrase: string | null, ...boxes: GridBox[]): Entity => ({ phrase, boxes, start: 0, end: 1 });
const gbox = (x1: number, y1: number, x2: number, y2: number): GridBox => ({ x1, y1, x2, y2 });

describe('annotateImage', () => {
  it('draws the box edges in the phrase colour and leaves the rest unchanged', async () => {
    const W = 400;
    const H = 200;
    const b = gbox(10, 30, 60, 90);
    const { out, p } = await annotatedGrey(W, H, [entity('a cat', b)]);
    expect(out.mime).toBe('image/png');
    expect([out.width, out.height]).toEqual([W, H]);
    expect([p.width, p.height]).toEqual([W, H]);

    const pb = gridToPixels(b, W, H);
    expect(pb).toEqual({ left: 40, top: 60, width: 200, height: 120 });
    const t = boxLineWidth(W, H);
    expect(t).toBe(2);
    const midX = pb.left + (pb.width >> 1);
    const midY = pb.top + (pb.height >> 1);
    // All edges, every line of the thickness.
    for (let k = 0; k < t; k++) {
      expectColour(p.at(pb.left + k, midY), RED);
      expectColour(p.at(pb.left + pb.width - 1 - k, midY), RED);
      expectColour(p.at(midX, pb.top + k), RED);
      expectColour(p.at(midX, pb.top + pb.height - 1 - k), RED);
    }
    // Corners.
    expectColour(p.at(pb.left, pb.top), RED);
    expectColour(p.at(pb.left + pb.width - 1, pb.top + pb.height - 1), RED);
    // Just outside and just inside the frame: unchanged.
    expectColour(p.at(pb.left - 1, midY), GREY);
    expectColour(p.at(pb.left + t, midY), GREY);
    expectColour(p.at(pb.left + pb.width, midY), GREY);
    expectColour(p.at(midX, pb.top + pb.height), GREY);
    expectColour(p.at(midX, pb.top + pb.height - 1 - t), GREY);
    // The whole interior is unchanged.
    expect(countColour(p, pb.left + t, pb.top + t, pb.left + pb.width - t, pb.top + pb.height - t, GREY)).toBe(
      (pb.width - 2 * t) * (pb.height - 2 * t),
    );
    // Background far from box and label.
    expect(countColour(p, 0, pb.top + pb.height, W, H, GREY)).toBe(W * (H - pb.top - pb.height));
    expect(countColour(p, pb.left + pb.width, 0, W, H, GREY)).toBe((W - pb.left - pb.width) * H);

    // Label above the box: a filled background in the phrase colour, with text on it.
    const fs = labelFontSize(W, H);
    const above = countColour(p, pb.left, 0, pb.left + 80, pb.top, RED);
    expect(above).toBeGreaterThan(fs * 20);
    const labelPixels = countColour(p, pb.left, 0, pb.left + 80, pb.top, GREY);
    expect(labelPixels).toBeLessThan(80 * pb.top); // something was drawn there
    // Text pixels (neither background nor label colour) exist in the label area.
    let text = 0;
    for (let y = 0; y < pb.top; y++)
      for (let x = pb.left; x < pb.left + 80; x++) if (!near(p.at(x, y), RED, 8) && !near(p.at(x, y), GREY, 8)) text++;
    expect(text).toBeGreaterThan(10);
  });

  it('gives two phrases different colours and all boxes of a phrase the same colour', async () => {
    const W = 300;
    const H = 300;
    const { entities } = parseGrounding(
      '<p>a dog</p> {<10><40><30><60>}<delim>{<40><40><60><60>} and <p>a ball</p> {<70><70><90><90>} and <p>A  dog</p>{<70><10><90><30>}',
    );
    expect(entities).toHaveLength(3);
    expect(entityColours(entities)).toEqual(['#e6194b', '#3cb44b', '#e6194b']);
    const { p } = await annotatedGrey(W, H, entities);
    const left = (b: GridBox) => {
      const pb = gridToPixels(b, W, H);
      return p.at(pb.left, pb.top + (pb.height >> 1));
    };
    expectColour(left(entities[0].boxes[0]), RED);
    expectColour(left(entities[0].boxes[1]), RED);
    expectColour(left(entities[1].boxes[0]), GREEN);
    expectColour(left(entities[2].boxes[0]), RED);
    expect(near(RED, GREEN, 50)).toBe(false);
  });

  it('annotates an EXIF-rotated JPEG in its displayed orientation', async () => {
    // Stored 120x80: left half blue, right half yellow; orientation 6 = display rotated 90° clockwise,
    // so the displayed image is 80x120 with blue on top and yellow at the bottom.
    const SW = 120;
    const SH = 80;
    const raw = Buffer.alloc(SW * SH * 3);
    for (let y = 0; y < SH; y++) for (let x = 0; x < SW; x++) raw.set(x < SW / 2 ? [0, 0, 255] : [255, 255, 0], (y * SW + x) * 3);
    const jpeg = await sharp(raw, { raw: { width: SW, height: SH, channels: 3 } })
      .jpeg({ quality: 95 })
      .withMetadata({ orientation: 6 })
      .toBuffer();
    const meta = await sharp(jpeg).metadata();
    expect(meta.orientation).toBe(6);
    expect([meta.width, meta.height]).toEqual([SW, SH]);

    // A box in the top-left quarter of the displayed image.
    const b = gbox(0, 0, 50, 25);
    const auto = await annotateImage(jpeg, [entity(null, b)]);
    expect(auto.mime).toBe('image/jpeg'); // input JPEG -> JPEG under 'auto'
    const out = await annotateImage(jpeg, [entity(null, b)], { format: 'png' });
    expect(out.mime).toBe('image/png');
    expect([out.width, out.height]).toEqual([80, 120]);
    const p = await pixels(out.data);
    expect([p.width, p.height]).toEqual([80, 120]);
    // Displayed orientation: blue on top, yellow at the bottom.
    expectColour(p.at(60, 10), [0, 0, 255], 30);
    expectColour(p.at(60, 110), [255, 255, 0], 30);
    const pb = gridToPixels(b, 80, 120);
    expect(pb).toEqual({ left: 0, top: 0, width: 40, height: 30 });
    expectColour(p.at(pb.left, 15), RED);
    expectColour(p.at(pb.left + pb.width - 1, 15), RED);
    expectColour(p.at(20, pb.top + pb.height - 1), RED);
    expectColour(p.at(20, 15), [0, 0, 255], 30); // interior unchanged
    // Where the box would land in the stored orientation (top-left of the 120x80 frame, i.e. the
    // displayed right edge), nothing is drawn.
    expect(countColour(p, 41, 0, 80, 120, RED, 40)).toBe(0);

    // The same with JPEG output: colours within compression tolerance.
    const pj = await pixels(auto.data);
    expect([pj.width, pj.height]).toEqual([80, 120]);
    expectColour(pj.at(0, 15), RED, 40);
    expectColour(pj.at(20, 15), [0, 0, 255], 40);
  });

  it('scales down to maxSide and draws at the scaled grid positions', async () => {
    const b = gbox(25, 25, 75, 75);
    const { out, p } = await annotatedGrey(800, 400, [entity(null, b)], { maxSide: 200 });
    expect([out.width, out.height]).toEqual([200, 100]);
    expect([p.width, p.height]).toEqual([200, 100]);
    const pb = gridToPixels(b, 200, 100);
    expect(pb).toEqual({ left: 50, top: 25, width: 100, height: 50 });
    expectColour(p.at(50, 50), RED);
    expectColour(p.at(149, 50), RED);
    expectColour(p.at(100, 25), RED);
    expectColour(p.at(100, 74), RED);
    expectColour(p.at(100, 50), GREY);
    expectColour(p.at(10, 10), GREY); // no label for a null phrase
    expect(countColour(p, 0, 0, 200, 25, GREY)).toBe(200 * 25);

    // Default maxSide 2048.
    const big = await annotateImage(await plainImage(3000, 1000, GREY), []);
    expect([big.width, big.height]).toEqual([2048, 683]);
  });

  it('puts the label inside the box when the box touches the top edge', async () => {
    const W = 300;
    const H = 200;
    const b = gbox(20, 0, 80, 80);
    const { p } = await annotatedGrey(W, H, [entity('sky', b)]);
    const pb = gridToPixels(b, W, H);
    const t = boxLineWidth(W, H);
    const fs = labelFontSize(W, H);
    // Under the top edge, inside the box, at the left: the label background.
    const inside = countColour(p, pb.left + t, pb.top + t, pb.left + 60, pb.top + t + fs, RED);
    expect(inside).toBeGreaterThan(fs * 15);
    expectColour(p.at(pb.left + t + 1, pb.top + t + 1), RED);
    // The interior further down is unchanged.
    expectColour(p.at(pb.left + (pb.width >> 1), pb.top + (pb.height >> 1)), GREY);
  });

  it('returns the image unchanged in size (and pixels) without entities', async () => {
    const input = await plainImage(123, 45, GREY);
    for (const ents of [[], [entity('nothing')]]) {
      const out = await annotateImage(input, ents);
      expect([out.width, out.height, out.mime]).toEqual([123, 45, 'image/png']);
      const p = await pixels(out.data);
      expect([p.width, p.height]).toEqual([123, 45]);
      expect(countColour(p, 0, 0, 123, 45, GREY)).toBe(123 * 45);
    }
    expect(buildOverlaySvg([], 10, 10)).toBeNull();
  });

  it("chooses JPEG for large photos under 'auto' and honours an explicit format", async () => {
    const big = await plainImage(1300, 1200, GREY); // 1.56 MP PNG
    const a = await annotateImage(big, [entity('x', gbox(10, 10, 20, 20))]);
    expect(a.mime).toBe('image/jpeg');
    expect((await sharp(a.data).metadata()).format).toBe('jpeg');
    expect(boxLineWidth(1300, 1200)).toBe(3);
    const pa = await pixels(a.data);
    const pb = gridToPixels(gbox(10, 10, 20, 20), 1300, 1200);
    expectColour(pa.at(pb.left + 1, pb.top + 60), RED, 40);

    const small = await plainImage(100, 100, GREY);
    expect((await annotateImage(small, [])).mime).toBe('image/png');
    const forced = await annotateImage(small, [], { format: 'jpeg' });
    expect(forced.mime).toBe('image/jpeg');
    expect((await sharp(forced.data).metadata()).format).toBe('jpeg');
    const forcedPng = await annotateImage(await plainImage(100, 100, GREY, 'jpeg'), [], { format: 'png' });
    expect((await sharp(forcedPng.data).metadata()).format).toBe('png');
  });

  it('keeps transparency in PNG output', async () => {
    const input = await sharp({ create: { width: 50, height: 50, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } })
      .png()
      .toBuffer();
    const out = await annotateImage(input, [entity(null, gbox(0, 0, 100, 100))]);
    const { data, info } = await sharp(out.data).raw().toBuffer({ resolveWithObject: true });
    expect(info.channels).toBe(4);
    expect(data[3]).toBe(255); // the frame is opaque
    const c = (25 * 50 + 25) * 4;
    expect(data[c + 3]).toBe(0); // the interior stays transparent
  });

  it('escapes label text (XML) and survives odd phrases', async () => {
    expect(xmlEscape(`<a href="x">&'\u0001`)).toBe('&lt;a href=&quot;x&quot;&gt;&amp;&apos;');
    const input = await plainImage(200, 200, GREY);
    const phrases = ['<script>alert("x")</script> & co', ']]>', '\u0000\ud800 bad', 'x'.repeat(500), '日本語', ''];
    const out = await annotateImage(
      input,
      phrases.map((ph, i) => entity(ph, gbox(5, 10 + i * 15, 60, 20 + i * 15))),
    );
    expect([out.width, out.height]).toEqual([200, 200]);
    const svg = buildOverlaySvg([entity('<b>&', gbox(10, 10, 20, 20))], 100, 100)!;
    expect(svg).toContain('&lt;b&gt;&amp;');
    expect(svg).not.toMatch(/href|url\((?!#)|@import|<image/);
  });

  it('ignores garbage entities and boxes without throwing', async () => {
    const input = await plainImage(64, 48, GREY);
    const weird = [
      entity('a', gbox(NaN, -5, 1e9, Infinity)),
      { phrase: 'b', boxes: undefined } as unknown as Entity,
      null as unknown as Entity,
    ];
    const out = await annotateImage(input, weird);
    expect([out.width, out.height]).toEqual([64, 48]);
  });

  it('rejects bytes that are not an image with ImageInputError', async () => {
    await expect(annotateImage(new Uint8Array(0), [])).rejects.toBeInstanceOf(ImageInputError);
    await expect(annotateImage(Buffer.from('hello, not an image'), [])).rejects.toBeInstanceOf(ImageInputError);
    const png = await plainImage(20, 20, GREY);
    await expect(annotateImage(png.subarray(0, 60), [])).rejects.toBeInstanceOf(ImageInputError);
    await expect(annotateImage(png, [], { maxInputPixels: 100 })).rejects.toThrow(/too large/i);
  });
});
