// Test images made with sharp, free of vitest (the soak harness, run by `npm run soak` outside vitest, uses them).
import sharp from 'sharp';

/** A PNG: a `background` rectangle with a `square` one half its size, a fifth in from the top left. */
export async function squareOn(width: number, height: number, square: string, background: string): Promise<Buffer> {
  const inner = await sharp({ create: { width: Math.round(width / 2), height: Math.round(height / 2), channels: 3, background: square } })
    .png()
    .toBuffer();
  return sharp({ create: { width, height, channels: 3, background } })
    .composite([{ input: inner, left: Math.round(width / 5), top: Math.round(height / 5) }])
    .png()
    .toBuffer();
}

/** A PNG: a grey background with a red square (the Discord tests' image). */
export function testPng(width = 200, height = 150, background = '#888888'): Promise<Buffer> {
  return squareOn(width, height, '#dd2222', background);
}

/** A grey PNG with a dark green square where the forced answer's box is (the Slack tests' image). */
export function squarePng(width = 200, height = 150): Promise<Buffer> {
  return squareOn(width, height, '#2a7f3a', '#808080');
}
