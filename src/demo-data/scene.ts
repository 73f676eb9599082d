// Synthetic scenes: 1-5 flat-coloured shapes on a background, with exact geometric boxes.
//
// Every shape is drawn from the same numbers its box is computed from: polygons are written to the SVG as
// their already-rotated vertices (rounded to 1/100 px, and the box is taken from the rounded vertices),
// circles and ellipses as <circle>/<ellipse> with their analytic extents. Unrotated squares and rectangles
// sit on whole pixels, so their boxes are whole-pixel boxes that the colour fills exactly.
import type { Rng } from './rng.js';

export const COLOURS = {
  red: [220, 30, 35],
  orange: [245, 135, 20],
  yellow: [240, 220, 30],
  green: [40, 165, 60],
  blue: [35, 85, 225],
  purple: [135, 55, 185],
  pink: [245, 125, 195],
  brown: [125, 78, 38],
  black: [22, 22, 22],
  white: [250, 250, 250],
  gray: [128, 128, 128],
  cyan: [40, 200, 225],
} as const satisfies Record<string, readonly [number, number, number]>;
export type ColourName = keyof typeof COLOURS;
export const COLOUR_NAMES = Object.keys(COLOURS) as ColourName[];

/** The classic shape set (`--shapes classic`): the one the demo model was first trained on (c112, models/demo/train). */
export const SHAPES = ['circle', 'square', 'rectangle', 'triangle', 'star', 'hexagon', 'diamond', 'cross', 'ellipse'] as const;
/** Shapes only in other sets. */
export const EXTRA_SHAPES = ['ring', 'heart'] as const;
export type ShapeName = (typeof SHAPES)[number] | (typeof EXTRA_SHAPES)[number];
export const ALL_SHAPES: readonly ShapeName[] = [...SHAPES, ...EXTRA_SHAPES];

/**
 * The shape sets a split can be drawn from. MiniGPT-v2 stretches every image to a square, so in a 2:1 image a
 * circle reaches the model as an ellipse of axis ratio 1/2 and a square as a 2:1 rectangle: from the model's input
 * an unrotated ellipse or rectangle is often indistinguishable from a stretched circle or square (measured in
 * models/demo/train/README.md, "What identify lacks"). `aspect-safe` replaces those two by a ring and a heart,
 * whose names survive any stretch.
 */
export const SHAPE_SETS = {
  classic: SHAPES,
  'aspect-safe': ['circle', 'square', 'triangle', 'star', 'hexagon', 'diamond', 'cross', 'ring', 'heart'],
} as const satisfies Record<string, readonly ShapeName[]>;
export type ShapeSetName = keyof typeof SHAPE_SETS;
export const SHAPE_SET_NAMES = Object.keys(SHAPE_SETS) as ShapeSetName[];
/** The set of the committed demo model (models/demo/PROVENANCE.json, heldout.shapes); splits written before the
 * option existed, whose manifest.json has no `scene.shapes`, are classic. */
export const DEFAULT_SHAPE_SET: ShapeSetName = 'aspect-safe';

export function plural(shape: ShapeName): string {
  return shape === 'cross' ? 'crosses' : `${shape}s`;
}

export type Rgb = readonly [number, number, number];

/** Muted background tones: objects of a colour too close to the tones in use are not drawn. */
export const BACKGROUND_TONES = {
  light: [
    [232, 222, 200],
    [205, 218, 232],
    [210, 225, 205],
    [215, 215, 215],
    [225, 205, 165],
    [225, 215, 235],
  ],
  dark: [
    [55, 65, 75],
    [30, 60, 65],
    [60, 45, 35],
    [45, 45, 50],
    [30, 35, 65],
    [35, 55, 35],
  ],
} as const satisfies Record<string, readonly Rgb[]>;

export const BACKGROUND_KINDS = ['plain', 'gradient', 'noisy', 'textured', 'striped'] as const;
export type BackgroundKind = (typeof BACKGROUND_KINDS)[number];

export interface Background {
  kind: BackgroundKind;
  /** two tones (equal for plain) */
  tones: [Rgb, Rgb];
  /** gradient / stripe direction in radians */
  angle: number;
  /** per-pixel noise amplitude (noisy, textured) */
  noise: number;
  /** stripe period in px, texture feature size in px */
  scale: number;
  /** seed of the pixel noise */
  seed: number;
}

export interface SceneObject {
  /** drawing order index (later objects are drawn on top) */
  index: number;
  shape: ShapeName;
  colour: ColourName;
  /** centre, px */
  cx: number;
  cy: number;
  /** unrotated extent, px */
  w: number;
  h: number;
  /** degrees, clockwise */
  rotation: number;
  /** polygon vertices (px, already rotated) for polygon shapes */
  points?: [number, number][];
  /** exact box [x, y, w, h] in px */
  bbox: [number, number, number, number];
}

export interface Scene {
  width: number;
  height: number;
  background: Background;
  objects: SceneObject[];
}

const round2 = (v: number) => Math.round(v * 100) / 100;

function localPolygon(shape: ShapeName, w: number, h: number): [number, number][] | null {
  const hw = w / 2;
  const hh = h / 2;
  switch (shape) {
    case 'square':
    case 'rectangle':
      return [
        [-hw, -hh],
        [hw, -hh],
        [hw, hh],
        [-hw, hh],
      ];
    case 'triangle':
      return [
        [0, -hh],
        [hw, hh],
        [-hw, hh],
      ];
    case 'diamond':
      return [
        [0, -hh],
        [hw, 0],
        [0, hh],
        [-hw, 0],
      ];
    case 'heart': {
      // the parametric heart (x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t), point down, its 40
      // vertices scaled to fill exactly w x h
      const raw = Array.from({ length: 40 }, (_, k) => {
        const t = (k * Math.PI) / 20;
        return [16 * Math.sin(t) ** 3, -(13 * Math.cos(t) - 5 * Math.cos(2 * t) - 2 * Math.cos(3 * t) - Math.cos(4 * t))] as const;
      });
      const ys = raw.map((p) => p[1]);
      const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
      return raw.map(([x, y]) => [(x / 16) * hw, ((y - y0) / (y1 - y0) - 0.5) * h] as [number, number]);
    }
    case 'hexagon':
      return Array.from({ length: 6 }, (_, k) => [hw * Math.cos((k * Math.PI) / 3), hh * Math.sin((k * Math.PI) / 3)] as [number, number]);
    case 'star': {
      const pts: [number, number][] = [];
      for (let k = 0; k < 10; k++) {
        const a = -Math.PI / 2 + (k * Math.PI) / 5;
        const r = k % 2 === 0 ? 1 : 0.45;
        pts.push([hw * r * Math.cos(a), hh * r * Math.sin(a)]);
      }
      return pts;
    }
    case 'cross': {
      const t = 0.18; // half arm thickness as a fraction of the size
      const ax = w * t;
      const ay = h * t;
      return [
        [-ax, -hh],
        [ax, -hh],
        [ax, -ay],
        [hw, -ay],
        [hw, ay],
        [ax, ay],
        [ax, hh],
        [-ax, hh],
        [-ax, ay],
        [-hw, ay],
        [-hw, -ay],
        [-ax, -ay],
      ];
    }
    default:
      return null;
  }
}

/** Fills in `points` and `bbox` from shape, centre, size and rotation. */
export function shapeGeometry(o: Omit<SceneObject, 'points' | 'bbox'>): Pick<SceneObject, 'points' | 'bbox'> {
  const th = (o.rotation * Math.PI) / 180;
  const cos = Math.cos(th);
  const sin = Math.sin(th);
  const local = localPolygon(o.shape, o.w, o.h);
  if (local) {
    const points = local.map(([x, y]) => [round2(o.cx + x * cos - y * sin), round2(o.cy + x * sin + y * cos)] as [number, number]);
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    const x0 = Math.min(...xs);
    const y0 = Math.min(...ys);
    return { points, bbox: [round2(x0), round2(y0), round2(Math.max(...xs) - x0), round2(Math.max(...ys) - y0)] };
  }
  // circle / ring / ellipse: rx = w/2, ry = h/2 rotated by th
  const rx = o.w / 2;
  const ry = o.h / 2;
  const ex = Math.sqrt((rx * cos) ** 2 + (ry * sin) ** 2);
  const ey = Math.sqrt((rx * sin) ** 2 + (ry * cos) ** 2);
  return { bbox: [round2(o.cx - ex), round2(o.cy - ey), round2(2 * ex), round2(2 * ey)] };
}

export function boxArea(b: readonly number[]): number {
  return b[2] * b[3];
}

export function intersection(a: readonly number[], b: readonly number[]): number {
  const w = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
  const h = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
  return w > 0 && h > 0 ? w * h : 0;
}

export function colourDistance(a: Rgb, b: Rgb): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
}

/** Minimum RGB distance between an object's colour and the background tones. */
export const MIN_CONTRAST = 100;

const ASPECTS = [1, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16, 2, 1 / 2];

export interface SceneOptions {
  /** longest side range in px; default [192, 448] */
  longSide?: [number, number];
  /** object count range; default [1, 5] */
  objects?: [number, number];
  /** the shapes drawn; default DEFAULT_SHAPE_SET */
  shapes?: ShapeSetName;
}

function sampleBackground(rng: Rng): Background {
  const kind = rng.weighted(BACKGROUND_KINDS, [2, 2, 2, 3, 1]);
  const family: readonly Rgb[] = rng.chance(0.6) ? BACKGROUND_TONES.light : BACKGROUND_TONES.dark;
  const t0 = rng.pick(family);
  const t1 = kind === 'plain' ? t0 : rng.pick(family.filter((t) => t !== t0));
  return {
    kind,
    tones: [t0, t1],
    angle: rng.range(0, Math.PI),
    noise: kind === 'noisy' ? rng.int(6, 16) : kind === 'textured' ? rng.int(2, 6) : 0,
    scale: kind === 'striped' ? rng.int(8, 28) : rng.int(24, 96),
    seed: rng.u32(),
  };
}

function sampleObject(
  rng: Rng,
  index: number,
  W: number,
  H: number,
  colour: ColourName,
  shapes: readonly ShapeName[],
): Omit<SceneObject, 'points' | 'bbox'> {
  const shape = rng.pick(shapes);
  const m = Math.min(W, H);
  const s = m * rng.range(0.14, 0.42);
  let w = s;
  let h = s;
  if (shape === 'rectangle' || shape === 'ellipse') {
    const r = rng.range(0.45, 0.7);
    if (rng.chance(0.5)) h = s * r;
    else w = s * r;
  } else if (shape === 'diamond') {
    w = s * 0.65;
  } else if (shape === 'triangle') {
    h = s * 0.9;
  }
  const rotatable: Partial<Record<ShapeName, number>> = {
    square: 30,
    rectangle: 60,
    triangle: 40,
    star: 36,
    hexagon: 30,
    diamond: 25,
    cross: 40,
    ellipse: 60,
    heart: 30,
  };
  const maxRot = rotatable[shape] ?? 0;
  const rotation = maxRot > 0 && rng.chance(0.5) ? Math.round(rng.range(-maxRot, maxRot)) : 0;
  let cx = rng.range(0, W);
  let cy = rng.range(0, H);
  if ((shape === 'square' || shape === 'rectangle') && rotation === 0) {
    // whole-pixel edges
    w = Math.max(4, Math.round(w));
    h = Math.max(4, Math.round(h));
    cx = Math.round(cx - w / 2) + w / 2;
    cy = Math.round(cy - h / 2) + h / 2;
  } else {
    w = round2(w);
    h = round2(h);
    cx = round2(cx);
    cy = round2(cy);
  }
  return { index, shape, colour, cx, cy, w, h, rotation };
}

/** The shapes scenes of these options are drawn from. */
export function sceneShapes(opts: SceneOptions = {}): readonly ShapeName[] {
  return SHAPE_SETS[opts.shapes ?? DEFAULT_SHAPE_SET];
}

/** A random scene. The same rng state always gives the same scene. */
export function sampleScene(rng: Rng, opts: SceneOptions = {}): Scene {
  const [lo, hi] = opts.longSide ?? [192, 448];
  const aspect = rng.pick(ASPECTS);
  const long = rng.int(lo, hi);
  const width = aspect >= 1 ? long : Math.round(long * aspect);
  const height = aspect >= 1 ? Math.round(long / aspect) : long;
  const background = sampleBackground(rng);
  const allowed = COLOUR_NAMES.filter((c) => background.tones.every((t) => colourDistance(COLOURS[c], t) >= MIN_CONTRAST));
  const [nlo, nhi] = opts.objects ?? [1, 5];
  const shapes = sceneShapes(opts);
  const wanted = rng.int(nlo, nhi);
  const objects: SceneObject[] = [];
  for (let attempt = 0; objects.length < wanted && attempt < 60 * wanted; attempt++) {
    const colour = rng.pick(allowed);
    const base = sampleObject(rng, objects.length, width, height, colour, shapes);
    const o = { ...base, ...shapeGeometry(base) };
    const [x, y, w, h] = o.bbox;
    if (x < 1 || y < 1 || x + w > width - 1 || y + h > height - 1) continue;
    let ok = true;
    for (const p of objects) {
      const inter = intersection(o.bbox, p.bbox);
      if (inter === 0) continue;
      // Mild overlaps only: each object stays mostly visible, and same-coloured shapes never touch.
      if (p.colour === o.colour || inter > 0.2 * Math.min(boxArea(o.bbox), boxArea(p.bbox))) {
        ok = false;
        break;
      }
    }
    if (ok) objects.push(o);
  }
  return { width, height, background, objects };
}

/** Box corners [x1, y1, x2, y2] on the model's 0..grid grid, as upstream's training data writes them (int()). */
export function gridBox(bbox: readonly number[], width: number, height: number, grid = 100): [number, number, number, number] {
  const f = (v: number, size: number) => Math.min(grid, Math.max(0, Math.trunc((v / size) * grid)));
  return [f(bbox[0], width), f(bbox[1], height), f(bbox[0] + bbox[2], width), f(bbox[1] + bbox[3], height)];
}

export function formatGridBox(b: readonly number[]): string {
  return `{<${b[0]}><${b[1]}><${b[2]}><${b[3]}>}`;
}
