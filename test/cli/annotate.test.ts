// `minigpt ask --annotate` with a known answer fed through the generator (MINIGPT_TEST_FORCED_ANSWER):
// the box lands on the right pixels of the displayed (EXIF-oriented) image.
import { describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { ANNOTATION_PALETTE } from '../../src/image/annotate.js';
import { minigpt, ROOT } from '../helpers/cli.js';
import { tempDirPerFile } from '../helpers/temp-dir.js';

let work: string;

/** `minigpt ask` on the demo model, its answer forced to `forced`. */
const ask = (args: string[], forced: string) =>
  minigpt(['ask', '--model', join(ROOT, 'models/demo'), '--provider', 'cpu', ...args], { MINIGPT_TEST_FORCED_ANSWER: forced });

async function pixel(file: string, x: number, y: number): Promise<number[]> {
  const { data, info } = await sharp(file).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const i = (y * info.width + x) * info.channels;
  return [data[i], data[i + 1], data[i + 2]];
}

const near = (a: number[], b: readonly number[], tol: number) => a.every((v, i) => Math.abs(v - b[i]) <= tol);

tempDirPerFile('minigpt-annotate-', (dir) => (work = dir));

describe('minigpt ask --annotate', () => {
  it('draws a [refer] answer box at the right pixels of an EXIF-rotated JPEG', async () => {
    // stored 120x80, orientation 6 (rotate 90 deg clockwise): displayed 80 wide, 120 high
    const jpeg = join(work, 'rotated.jpg');
    await writeFile(
      jpeg,
      await sharp({ create: { width: 120, height: 80, channels: 3, background: { r: 128, g: 128, b: 128 } } })
        .jpeg({ quality: 95 })
        .withMetadata({ orientation: 6 })
        .toBuffer(),
    );
    const out = join(work, 'out.png');
    const r = await ask(['--image', jpeg, '--annotate', out, '--json', '[refer] the target'], '<p>the target</p>{<25><25><75><50>}');
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout);
    expect(result.text).toBe('<p>the target</p>{<25><25><75><50>}');
    expect(result.plain_text).toBe('the target');
    expect(result.image).toEqual({ width: 80, height: 120 });
    expect(result.entities).toHaveLength(1);
    expect(result.entities[0].phrase).toBe('the target');
    expect(result.entities[0].boxes).toEqual([{ x1: 25, y1: 25, x2: 75, y2: 50 }]);
    expect(result.entities[0].pixelBoxes).toEqual([{ left: 20, top: 30, width: 40, height: 30 }]);
    expect(result.annotated).toBe(out);

    const meta = await sharp(out).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 80, 120]);
    const colour = ANNOTATION_PALETTE[0];
    expect(near(await pixel(out, 20, 45), colour, 2)).toBe(true); // left edge
    expect(near(await pixel(out, 59, 45), colour, 2)).toBe(true); // right edge
    expect(near(await pixel(out, 40, 59), colour, 2)).toBe(true); // bottom edge
    expect(near(await pixel(out, 40, 48), [128, 128, 128], 6)).toBe(true); // inside: untouched
    expect(near(await pixel(out, 5, 110), [128, 128, 128], 6)).toBe(true); // outside: untouched
  });

  it('draws the user box of an [identify] prompt, and writes nothing when the answer has no boxes', async () => {
    const png = join(ROOT, 'test/fixtures/minigptv2-tiny/input.png');
    const out = join(work, 'identify.png');
    const r = await ask(['--image', png, '--annotate', out, '--json', '[identify] what is this {<0><0><50><50>}'], 'a red square');
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout);
    expect(result.entities[0].boxes).toEqual([{ x1: 0, y1: 0, x2: 50, y2: 50 }]);
    expect(result.entities[0].pixelBoxes).toEqual([{ left: 0, top: 0, width: 60, height: 45 }]);
    expect(near(await pixel(out, 0, 30), ANNOTATION_PALETTE[0], 2)).toBe(true);

    const none = join(work, 'none.png');
    const plain = await ask(['--image', png, '--annotate', none, 'what is it?'], 'a red square');
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stdout).toBe('a red square\n');
    expect(plain.stderr).toMatch(/no boxes.*not written/);
    await expect(sharp(none).metadata()).rejects.toThrow();
  });
});
