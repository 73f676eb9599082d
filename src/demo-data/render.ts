// Scene -> pixels: the background is computed here (deterministic, seeded), the shapes are an SVG that
// sharp (librsvg) renders with anti-aliasing on top of it.
import sharp from 'sharp';
import { Rng } from './rng.js';
import { COLOURS, type Background, type Rgb, type Scene } from './scene.js';

export type ImageFormat = 'png' | 'jpg';

const clamp255 = (v: number) => (v < 0 ? 0 : v > 255 ? 255 : Math.round(v));
const smooth = (t: number) => t * t * (3 - 2 * t);

/** Value noise in [0, 1] with cells of `cell` px, bilinear with smoothstep. */
function valueNoise(width: number, height: number, cell: number, rng: Rng): Float32Array {
  const gw = Math.ceil(width / cell) + 2;
  const gh = Math.ceil(height / cell) + 2;
  const grid = new Float32Array(gw * gh);
  for (let i = 0; i < grid.length; i++) grid[i] = rng.next();
  const out = new Float32Array(width * height);
  for (let y = 0; y < height; y++) {
    const fy = y / cell;
    const iy = Math.floor(fy);
    const ty = smooth(fy - iy);
    for (let x = 0; x < width; x++) {
      const fx = x / cell;
      const ix = Math.floor(fx);
      const tx = smooth(fx - ix);
      const a = grid[iy * gw + ix];
      const b = grid[iy * gw + ix + 1];
      const c = grid[(iy + 1) * gw + ix];
      const d = grid[(iy + 1) * gw + ix + 1];
      out[y * width + x] = (a + (b - a) * tx) * (1 - ty) + (c + (d - c) * tx) * ty;
    }
  }
  return out;
}

/** The background as raw RGB (HWC, 8 bit). */
export function renderBackground(bg: Background, width: number, height: number): Uint8Array {
  const out = new Uint8Array(width * height * 3);
  const [t0, t1] = bg.tones;
  const rng = new Rng(bg.seed, 0x6267);
  const cos = Math.cos(bg.angle);
  const sin = Math.sin(bg.angle);
  // projection range of the image corners on the gradient direction
  const corners = [0, width * cos, height * sin, width * cos + height * sin];
  const uMin = Math.min(...corners);
  const uSpan = Math.max(...corners) - uMin || 1;
  let mix: ((x: number, y: number, i: number) => number) | null = null;
  switch (bg.kind) {
    case 'plain':
      mix = () => 0;
      break;
    case 'gradient':
    case 'noisy':
      mix = (x, y) => (x * cos + y * sin - uMin) / uSpan;
      break;
    case 'striped': {
      const period = bg.scale;
      mix = (x, y) => {
        const u = x * cos + y * sin;
        return Math.min(1, Math.max(0, 0.5 + 2 * Math.sin((2 * Math.PI * u) / period)));
      };
      break;
    }
    case 'textured': {
      const octaves = [
        [bg.scale, 0.55],
        [bg.scale / 2, 0.27],
        [bg.scale / 4, 0.13],
        [Math.max(2, bg.scale / 12), 0.05],
      ] as const;
      const fields = octaves.map(([cell]) => valueNoise(width, height, Math.max(2, cell), rng));
      mix = (_x, _y, i) => {
        let v = 0;
        for (let k = 0; k < octaves.length; k++) v += fields[k][i] * octaves[k][1];
        return Math.min(1, Math.max(0, (v - 0.5) * 1.8 + 0.5));
      };
      break;
    }
  }
  const noise = bg.noise;
  for (let y = 0, i = 0; y < height; y++) {
    for (let x = 0; x < width; x++, i++) {
      const m = mix(x, y, i);
      const n = noise > 0 ? (rng.next() * 2 - 1) * noise : 0;
      const o = i * 3;
      for (let c = 0; c < 3; c++) {
        const jitter = noise > 0 ? (rng.next() * 2 - 1) * noise * 0.3 : 0;
        out[o + c] = clamp255(t0[c] + (t1[c] - t0[c]) * m + n + jitter);
      }
    }
  }
  return out;
}

const rgb = (c: Rgb) => `rgb(${c[0]},${c[1]},${c[2]})`;
const num = (v: number) => String(Math.round(v * 100) / 100);

/** The shapes of a scene as an SVG document of the scene's size. */
export function sceneSvg(scene: Scene): string {
  const parts: string[] = [];
  for (const o of scene.objects) {
    const fill = rgb(COLOURS[o.colour]);
    if (o.points) {
      parts.push(`<polygon points="${o.points.map(([x, y]) => `${num(x)},${num(y)}`).join(' ')}" fill="${fill}"/>`);
    } else if (o.shape === 'circle') {
      parts.push(`<circle cx="${num(o.cx)}" cy="${num(o.cy)}" r="${num(o.w / 2)}" fill="${fill}"/>`);
    } else if (o.shape === 'ring') {
      // outer radius w/2 (the box), inner radius w/4: a stroke of width w/4 centred on radius 3w/8
      parts.push(
        `<circle cx="${num(o.cx)}" cy="${num(o.cy)}" r="${num((3 * o.w) / 8)}" fill="none" stroke="${fill}" stroke-width="${num(o.w / 4)}"/>`,
      );
    } else {
      const rot = o.rotation ? ` transform="rotate(${o.rotation} ${num(o.cx)} ${num(o.cy)})"` : '';
      parts.push(`<ellipse cx="${num(o.cx)}" cy="${num(o.cy)}" rx="${num(o.w / 2)}" ry="${num(o.h / 2)}"${rot} fill="${fill}"/>`);
    }
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${scene.width}" height="${scene.height}" viewBox="0 0 ${scene.width} ${scene.height}">${parts.join('')}</svg>`;
}

/** The scene as raw RGB pixels (HWC, 8 bit). */
export async function renderSceneRaw(scene: Scene): Promise<Uint8Array> {
  const { width, height } = scene;
  const bg = renderBackground(scene.background, width, height);
  const img = sharp(bg, { raw: { width, height, channels: 3 } });
  const composed = scene.objects.length > 0 ? img.composite([{ input: Buffer.from(sceneSvg(scene)), top: 0, left: 0 }]) : img;
  const { data, info } = await composed.removeAlpha().raw().toBuffer({ resolveWithObject: true });
  if (info.width !== width || info.height !== height || info.channels !== 3) {
    throw new Error(`rendered ${info.width}x${info.height}x${info.channels}, expected ${width}x${height}x3`);
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** The scene encoded as PNG (lossless, the default) or JPEG (quality 92, no chroma subsampling). */
export async function renderScene(scene: Scene, format: ImageFormat = 'png'): Promise<Buffer> {
  const raw = await renderSceneRaw(scene);
  const img = sharp(raw, { raw: { width: scene.width, height: scene.height, channels: 3 } });
  return format === 'png' ? img.png({ compressionLevel: 6 }).toBuffer() : img.jpeg({ quality: 92, chromaSubsampling: '4:4:4' }).toBuffer();
}
