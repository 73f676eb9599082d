// The synthetic data generator: deterministic from the seed, boxes that match the pixels, all six tasks.
import { beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ALL_SHAPES,
  COLOURS,
  Rng,
  DEFAULT_SHAPE_SET,
  SHAPE_SETS,
  expressions,
  gridBox,
  imageData,
  renderSceneRaw,
  sampleScene,
  shapeGeometry,
  writeDemoData,
  type Scene,
  type SceneObject,
  type TrainSample,
} from '../../src/demo-data/index.js';
import { PROMPT_FORMS } from '../../src/demo-data/language.js';
import { parseGrounding, parseUserBox } from '../../src/grounding/parse.js';
import { TASK_BUTTON_PROMPTS, EVAL_PROMPTS } from '../../src/grounding/tasks.js';
import { tempDirPerFile } from '../helpers/temp-dir.js';

let work: string;
tempDirPerFile('minigpt-demo-data-', (dir) => (work = dir));

async function digest(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (sub: string) => {
    for (const e of await readdir(join(dir, sub), { withFileTypes: true })) {
      const rel = sub ? `${sub}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(rel);
      else
        out[rel] = createHash('sha256')
          .update(await readFile(join(dir, rel)))
          .digest('hex');
    }
  };
  await walk('');
  return out;
}

/** max over channels of |a - b| */
const diff = (px: Uint8Array, i: number, c: readonly number[]) =>
  Math.max(Math.abs(px[i] - c[0]), Math.abs(px[i + 1] - c[1]), Math.abs(px[i + 2] - c[2]));

function plainScene(width: number, height: number, objects: SceneObject[]): Scene {
  const tone = [232, 222, 200] as const;
  return { width, height, background: { kind: 'plain', tones: [tone, tone], angle: 0, noise: 0, scale: 32, seed: 1 }, objects };
}

describe('demo-data determinism', () => {
  it('the same seed gives identical bytes; another seed gives other images', async () => {
    const a = join(work, 'a');
    const b = join(work, 'b');
    const c = join(work, 'c');
    await writeDemoData(a, { seed: 11, count: 6 });
    await writeDemoData(b, { seed: 11, count: 6 });
    await writeDemoData(c, { seed: 12, count: 6 });
    const da = await digest(a);
    expect(Object.keys(da).sort()).toEqual(
      [
        'caption.json',
        'identify.json',
        'manifest.json',
        'refer.json',
        'scenes.json',
        'train.jsonl',
        'vqa.json',
        ...Array.from({ length: 6 }, (_, i) => `images/s11_00000${i}.png`),
      ].sort(),
    );
    expect(await digest(b)).toEqual(da);
    const dc = await digest(c);
    expect(dc['images/s12_000000.png']).not.toBe(da['images/s11_000000.png']);
    expect(dc['train.jsonl']).not.toBe(da['train.jsonl']);
  });

  it('image i of a seed does not depend on the count (a split is a prefix of a longer one)', () => {
    const short = imageData({ seed: 5, count: 3 }, 2);
    const long = imageData({ seed: 5, count: 300 }, 2);
    expect(long).toEqual(short);
  });

  it('varies image sizes, aspect ratios, backgrounds, shapes, colours, counts and rotations', () => {
    const scenes = Array.from({ length: 200 }, (_, i) => sampleScene(new Rng(3, i, 1)));
    const objs = scenes.flatMap((s) => s.objects);
    expect(new Set(scenes.map((s) => s.background.kind)).size).toBe(5);
    expect(new Set(scenes.map((s) => (s.width / s.height).toFixed(2))).size).toBeGreaterThanOrEqual(7);
    expect(new Set(scenes.map((s) => s.width)).size).toBeGreaterThan(50);
    expect(new Set(objs.map((o) => o.shape))).toEqual(new Set(SHAPE_SETS[DEFAULT_SHAPE_SET]));
    expect(new Set(objs.map((o) => o.colour)).size).toBe(Object.keys(COLOURS).length);
    expect(new Set(scenes.map((s) => s.objects.length))).toEqual(new Set([1, 2, 3, 4, 5]));
    expect(objs.filter((o) => o.rotation !== 0).length).toBeGreaterThan(objs.length / 5);
    // some boxes overlap (occlusion), never by much
    const overlapping = scenes.filter((s) =>
      s.objects.some((o, i) =>
        s.objects
          .slice(i + 1)
          .some(
            (p) =>
              o.bbox[0] < p.bbox[0] + p.bbox[2] &&
              p.bbox[0] < o.bbox[0] + o.bbox[2] &&
              o.bbox[1] < p.bbox[1] + p.bbox[3] &&
              p.bbox[1] < o.bbox[1] + o.bbox[3],
          ),
      ),
    );
    expect(overlapping.length).toBeGreaterThan(5);
    // every box lies inside its image
    for (const s of scenes)
      for (const o of s.objects) {
        expect(o.bbox[0]).toBeGreaterThanOrEqual(0);
        expect(o.bbox[1]).toBeGreaterThanOrEqual(0);
        expect(o.bbox[0] + o.bbox[2]).toBeLessThanOrEqual(s.width);
        expect(o.bbox[1] + o.bbox[3]).toBeLessThanOrEqual(s.height);
      }
  });
});

describe('demo-data boxes match the rendered pixels', () => {
  it('an unrotated square / rectangle fills exactly its box with its colour', async () => {
    const rng = new Rng(99);
    for (let k = 0; k < 12; k++) {
      const shape = k % 2 ? 'square' : 'rectangle';
      const w = rng.int(6, 60);
      const h = shape === 'square' ? w : rng.int(6, 60);
      const base = {
        index: 0,
        shape,
        colour: 'blue',
        cx: rng.int(40, 80) + w / 2,
        cy: rng.int(40, 80) + h / 2,
        w,
        h,
        rotation: 0,
      } as const;
      const o: SceneObject = { ...base, ...shapeGeometry(base) };
      const scene = plainScene(160, 150, [o]);
      const px = await renderSceneRaw(scene);
      const [bx, by, bw, bh] = o.bbox;
      expect(o.bbox).toEqual([cxToX(o), cyToY(o), w, h]);
      const wrong: string[] = [];
      for (let y = 0; y < scene.height; y++) {
        for (let x = 0; x < scene.width; x++) {
          const inside = x >= bx && x < bx + bw && y >= by && y < by + bh;
          const i = (y * scene.width + x) * 3;
          if (diff(px, i, inside ? COLOURS.blue : scene.background.tones[0]) > 1)
            wrong.push(`(${x},${y}) ${inside ? 'inside' : 'outside'}`);
        }
      }
      expect(wrong, `${shape} ${w}x${h} box [${o.bbox}]`).toEqual([]);
    }
  });

  it('every shape, rotated or not, covers its box tightly and nothing outside it', async () => {
    const rng = new Rng(7);
    for (const shape of ALL_SHAPES) {
      for (const rotation of [0, rng.int(-40, -5), rng.int(5, 40)]) {
        const s = rng.range(30, 70);
        const base = {
          index: 0,
          shape,
          colour: 'red',
          cx: rng.range(70, 90),
          cy: rng.range(70, 90),
          w: s,
          h: shape === 'ellipse' || shape === 'rectangle' ? s * 0.6 : s,
          rotation,
        } as const;
        const o: SceneObject = { ...base, ...shapeGeometry(base) };
        const scene = plainScene(170, 160, [o]);
        const px = await renderSceneRaw(scene);
        const bg = scene.background.tones[0];
        const contrast = diff(Uint8Array.from(COLOURS.red), 0, bg);
        let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
        for (let y = 0; y < scene.height; y++) {
          for (let x = 0; x < scene.width; x++) {
            if (diff(px, (y * scene.width + x) * 3, bg) > 0.1 * contrast) {
              x0 = Math.min(x0, x);
              y0 = Math.min(y0, y);
              x1 = Math.max(x1, x + 1);
              y1 = Math.max(y1, y + 1);
            }
          }
        }
        const [bx, by, bw, bh] = o.bbox;
        const what = `${shape} rotated ${rotation}: pixels [${x0},${y0},${x1},${y1}] box [${bx},${by},${bx + bw},${by + bh}]`;
        // nothing outside the box (anti-aliasing touches at most the pixel the edge runs through) ...
        expect(x0, what).toBeGreaterThanOrEqual(Math.floor(bx));
        expect(y0, what).toBeGreaterThanOrEqual(Math.floor(by));
        expect(x1, what).toBeLessThanOrEqual(Math.ceil(bx + bw));
        expect(y1, what).toBeLessThanOrEqual(Math.ceil(by + bh));
        // ... and the drawing reaches every side of the box (sharp star tips may fade over ~2 px)
        expect(x0 - bx, what).toBeLessThanOrEqual(2);
        expect(y0 - by, what).toBeLessThanOrEqual(2);
        expect(bx + bw - x1, what).toBeLessThanOrEqual(2);
        expect(by + bh - y1, what).toBeLessThanOrEqual(2);
      }
    }
  });

  it('in generated scenes, each object colour appears inside its box and only inside boxes of that colour', async () => {
    let checked = 0;
    for (let i = 0; i < 24; i++) {
      const { scene } = imageData({ seed: 21, count: 24 }, i);
      const px = await renderSceneRaw(scene);
      for (const o of scene.objects) {
        const col = COLOURS[o.colour];
        const same = scene.objects.filter((p) => p.colour === o.colour);
        const inSame = (x: number, y: number) =>
          same.some(
            (p) =>
              x >= Math.floor(p.bbox[0]) &&
              x < Math.ceil(p.bbox[0] + p.bbox[2]) &&
              y >= Math.floor(p.bbox[1]) &&
              y < Math.ceil(p.bbox[1] + p.bbox[3]),
          );
        let inside = 0;
        for (let y = 0; y < scene.height; y++) {
          for (let x = 0; x < scene.width; x++) {
            if (diff(px, (y * scene.width + x) * 3, col) > 2) continue;
            const inOwn =
              x >= Math.floor(o.bbox[0]) &&
              x < Math.ceil(o.bbox[0] + o.bbox[2]) &&
              y >= Math.floor(o.bbox[1]) &&
              y < Math.ceil(o.bbox[1] + o.bbox[3]);
            if (inOwn) inside++;
            else expect(inSame(x, y), `image ${i}: ${o.colour} pixel at (${x},${y}) outside every ${o.colour} box`).toBe(true);
          }
        }
        // objects drawn later may cover part of it, never most of it
        expect(inside, `image ${i}: ${o.colour} ${o.shape}`).toBeGreaterThan(0.3 * o.w * o.h * (o.shape === 'star' ? 0.35 : 0.5));
        // unrotated squares / rectangles not covered by a later object are exactly filled
        const covered = scene.objects.some(
          (p) =>
            p.index > o.index &&
            p.bbox[0] < o.bbox[0] + o.bbox[2] &&
            o.bbox[0] < p.bbox[0] + p.bbox[2] &&
            p.bbox[1] < o.bbox[1] + o.bbox[3] &&
            o.bbox[1] < p.bbox[1] + p.bbox[3],
        );
        if ((o.shape === 'square' || o.shape === 'rectangle') && o.rotation === 0 && !covered) {
          expect(inside, `image ${i}: ${o.colour} ${o.shape} fills its box`).toBe(o.bbox[2] * o.bbox[3]);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(3);
  });
});

describe('demo-data shape sets', () => {
  const words = (text: string) => new Set(text.toLowerCase().split(/[^a-z]+/));

  it('aspect-safe (the default) draws rings and hearts instead of ellipses and rectangles, and asks only about its own shapes', () => {
    const safe = Array.from({ length: 200 }, (_, i) => sampleScene(new Rng(3, i, 1), { shapes: 'aspect-safe' }));
    expect(new Set(safe.flatMap((s) => s.objects.map((o) => o.shape)))).toEqual(new Set(SHAPE_SETS['aspect-safe']));
    for (let i = 0; i < 50; i++) expect(sampleScene(new Rng(3, i, 1), { shapes: 'aspect-safe' })).toEqual(sampleScene(new Rng(3, i, 1)));
    const classic = Array.from({ length: 200 }, (_, i) => sampleScene(new Rng(3, i, 1), { shapes: 'classic' }));
    expect(new Set(classic.flatMap((s) => s.objects.map((o) => o.shape)))).toEqual(new Set(SHAPE_SETS.classic));
    let absent = 0;
    for (let i = 0; i < 80; i++) {
      const d = imageData({ seed: 4, count: 80, scene: { shapes: 'aspect-safe' } }, i);
      const texts = [
        ...d.vqa.map((q) => q.question),
        ...d.train.flatMap((t) => t.turns.flatMap((u) => [u.user, u.assistant])),
        ...d.refer.map((r) => r.sents),
      ];
      for (const t of texts) {
        const w = words(t);
        expect(w.has('ellipse') || w.has('ellipses') || w.has('rectangle') || w.has('rectangles'), t).toBe(false);
      }
      // questions about shapes that are not in the image name shapes of the set (rings, hearts too)
      const drawn = new Set(d.scene.objects.map((o) => o.shape));
      absent += texts.filter(
        (t) =>
          /^(is there|how many)/.test(t) &&
          (['ring', 'heart'] as const).some((s) => !drawn.has(s) && (words(t).has(s) || words(t).has(`${s}s`))),
      ).length;
    }
    expect(absent).toBeGreaterThan(0);
  });

  it('a ring is a band around a hole of half its radius; a heart points down with a cleft at the top', async () => {
    const at = (_px: Uint8Array, width: number, x: number, y: number) => (Math.round(y) * width + Math.round(x)) * 3;
    const ringBase = { index: 0, shape: 'ring', colour: 'blue', cx: 60.5, cy: 60.5, w: 48, h: 48, rotation: 0 } as const;
    const ring: SceneObject = { ...ringBase, ...shapeGeometry(ringBase) };
    const heartBase = { index: 1, shape: 'heart', colour: 'red', cx: 150.5, cy: 60.5, w: 60, h: 60, rotation: 0 } as const;
    const heart: SceneObject = { ...heartBase, ...shapeGeometry(heartBase) };
    const scene = plainScene(200, 120, [ring, heart]);
    const px = await renderSceneRaw(scene);
    const bg = scene.background.tones[0];
    const isBg = (x: number, y: number) => diff(px, at(px, scene.width, x, y), bg) <= 2;
    const isCol = (x: number, y: number, c: readonly number[]) => diff(px, at(px, scene.width, x, y), c) <= 2;
    expect(ring.bbox).toEqual([36.5, 36.5, 48, 48]);
    for (const [dx, dy] of [
      [0, 0],
      [5, 0],
      [0, -5],
      [-7, 3],
    ])
      expect(isBg(ring.cx + dx, ring.cy + dy), `ring hole at ${dx},${dy}`).toBe(true);
    for (const [dx, dy] of [
      [18, 0],
      [-18, 0],
      [0, 18],
      [0, -18],
      [12.7, 12.7],
    ])
      expect(isCol(ring.cx + dx, ring.cy + dy, COLOURS.blue), `ring band at ${dx},${dy}`).toBe(true);
    const [hx, hy, hw, hh] = heart.bbox;
    expect([hw, hh]).toEqual([60, 60]);
    // the cleft: background between the two lobes near the top, colour in each lobe
    expect(isBg(hx + hw / 2, hy + 0.1 * hh)).toBe(true);
    expect(isCol(hx + 0.25 * hw, hy + 0.15 * hh, COLOURS.red)).toBe(true);
    expect(isCol(hx + 0.75 * hw, hy + 0.15 * hh, COLOURS.red)).toBe(true);
    // the point: near the bottom, colour only close to the middle
    const row = Math.round(hy + 0.93 * hh);
    const filled = Array.from({ length: scene.width }, (_, x) => x).filter((x) => isCol(x, row, COLOURS.red));
    expect(filled.length).toBeGreaterThan(0);
    expect(Math.max(...filled) - Math.min(...filled)).toBeLessThan(0.2 * hw);
    expect(Math.abs((Math.max(...filled) + Math.min(...filled)) / 2 - (hx + hw / 2))).toBeLessThan(2);
  });
});

describe('demo-data tasks', () => {
  let samples: TrainSample[];
  let dir: string;
  beforeAll(async () => {
    dir = join(work, 'tasks');
    await writeDemoData(dir, { seed: 4, count: 20 });
    samples = (await readFile(join(dir, 'train.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as TrainSample);
  });

  it('has samples of all six MiniGPT-v2 tasks in their original prompt forms, and multi-turn follow-ups', () => {
    const byTask = (t: string) => samples.filter((s) => s.task === t);
    expect(new Set(samples.map((s) => s.task))).toEqual(
      new Set(['caption', 'grounding', 'refer', 'detection', 'identify', 'vqa', 'multi']),
    );
    const firsts = samples.map((s) => s.turns[0].user);
    // the demo buttons' and eval scripts' forms all occur
    expect(firsts).toContain(TASK_BUTTON_PROMPTS.grounding);
    expect(firsts).toContain(TASK_BUTTON_PROMPTS.caption);
    expect(firsts).toContain(EVAL_PROMPTS.caption());
    expect(firsts.some((u) => u.startsWith('[refer] give me the location of '))).toBe(true);
    expect(firsts.some((u) => /^\[identify\] what is this \{<\d+><\d+><\d+><\d+>\}$/.test(u))).toBe(true);
    expect(firsts.some((u) => u.startsWith('[vqa] Based on the image, respond to this question with a short answer: '))).toBe(true);
    for (const t of ['caption', 'grounding', 'refer', 'detection', 'identify', 'vqa'] as const) {
      for (const s of byTask(t)) expect(s.turns[0].user.startsWith(`[${t}]`), s.turns[0].user).toBe(true);
    }
    for (const s of byTask('refer')) expect(s.turns[0].assistant).toMatch(/^\{<\d+><\d+><\d+><\d+>\}$/);
    for (const s of byTask('grounding'))
      expect(parseGrounding(s.turns[0].assistant).entities.every((e) => e.phrase && e.boxes.length === 1)).toBe(true);
    const det = byTask('detection').map((s) => s.turns[0].assistant);
    expect(det.every((a) => /^<p>[a-z ]+<\/p> \{<\d+><\d+><\d+><\d+>\}(<delim>\{<\d+><\d+><\d+><\d+>\})*$/.test(a))).toBe(true);
    expect(det.some((a) => a.includes('<delim>'))).toBe(true);
    const vqaAnswers = new Set(byTask('vqa').map((s) => s.turns[0].assistant));
    for (const a of ['yes', 'no', '1', '2']) expect(vqaAnswers).toContain(a);
    const multi = byTask('multi');
    expect(multi.length).toBe(20);
    expect(multi.every((s) => s.turns.length >= 2)).toBe(true);
    expect(multi.some((s) => s.turns[1].user.endsWith('what color is it?') || s.turns[1].user.endsWith('what shape is it?'))).toBe(true);
    // every upstream refer / identify / grounding form is used somewhere in a larger split
    const many = Array.from({ length: 120 }, (_, i) => imageData({ seed: 4, count: 120 }, i).train)
      .flat()
      .map((s) => s.turns[0].user);
    for (const f of [
      ...PROMPT_FORMS.refer,
      ...PROMPT_FORMS.identify,
      ...PROMPT_FORMS.grounding,
      ...PROMPT_FORMS.caption,
      ...PROMPT_FORMS.vqa,
    ]) {
      const [pre, post] = f.split('{}');
      expect(
        many.some((u) => u.startsWith(pre) && u.endsWith(post ?? '')),
        f,
      ).toBe(true);
    }
  });

  it('answers hold the boxes of the right objects; identify prompts hold the box of the named object', async () => {
    const scenes = JSON.parse(await readFile(join(dir, 'scenes.json'), 'utf8')) as (Scene & { image: string })[];
    const byImage = new Map(scenes.map((s) => [s.image, s]));
    for (const s of samples.filter((x) => x.task === 'identify')) {
      const scene = byImage.get(s.image)!;
      const box = parseUserBox(s.turns[0].user)!;
      const o = scene.objects.find((p) => gridBox(p.bbox, scene.width, scene.height).join() === [box.x1, box.y1, box.x2, box.y2].join());
      expect(o, s.turns[0].user).toBeDefined();
      expect(s.turns[0].assistant).toBe(`${o!.colour} ${o!.shape}`);
    }
  });

  it('names the object each last answer is about (`about`), and none when it is about several or the scene', async () => {
    const scenes = JSON.parse(await readFile(join(dir, 'scenes.json'), 'utf8')) as (Scene & { image: string })[];
    const byImage = new Map(scenes.map((s) => [s.image, s]));
    const seen = new Set<string>();
    for (const s of samples) {
      const scene = byImage.get(s.image)!;
      const last = s.turns[s.turns.length - 1];
      const q = last.user.replace(/^\[vqa\] (Based on the image, respond to this question with a short answer: )?/, '');
      if (s.about === undefined) {
        // the scene, several objects, or a question whose answer no single object gives
        expect(['caption', 'grounding', 'detection', 'vqa', 'multi'], last.user).toContain(s.task);
        if (s.task === 'vqa' || s.task === 'multi') {
          // counts, absent objects, the relation of two objects
          expect(/^how many |^is there |^is the .* (to the left of|on the right of|above|below) the /.test(q), q).toBe(true);
          if (/^is there/.test(q)) expect(last.assistant).toBe('no');
        }
        continue;
      }
      const o = scene.objects[s.about];
      expect(o, s.id).toBeDefined();
      const box = gridBox(o.bbox, scene.width, scene.height);
      const boxText = `{${box.map((v) => `<${v}>`).join('')}}`;
      let kind: string;
      if (last.user.startsWith('[refer]')) [kind] = ['refer', expect(last.assistant).toBe(boxText)];
      else if (last.user.startsWith('[identify]'))
        [kind] = ['identify', expect(last.user).toContain(boxText), expect(last.assistant).toBe(`${o.colour} ${o.shape}`)];
      else if (/what color|the color of/.test(q)) [kind] = ['colour', expect(last.assistant).toBe(o.colour)];
      else if (/^what shape/.test(q)) [kind] = ['shape', expect(last.assistant).toBe(o.shape)];
      else if (/^is there/.test(q)) [kind] = ['exist', expect(last.assistant).toBe('yes'), expect(q).toContain(`${o.colour} ${o.shape}`)];
      else if (/^which side/.test(q))
        [kind] = ['side', expect(last.assistant).toBe(o.bbox[0] + o.bbox[2] / 2 < scene.width / 2 ? 'left' : 'right')];
      else throw new Error(`unexpected question about one object: ${last.user}`);
      seen.add(`${s.task}:${kind}`);
    }
    for (const k of ['refer:refer', 'identify:identify', 'vqa:colour', 'vqa:shape', 'multi:colour']) expect(seen).toContain(k);
  });

  it('writes the evaluation sets: refer.json (RefCOCO style), vqa.json, identify.json, caption.json', async () => {
    const refer = JSON.parse(await readFile(join(dir, 'refer.json'), 'utf8'));
    const vqa = JSON.parse(await readFile(join(dir, 'vqa.json'), 'utf8'));
    const identify = JSON.parse(await readFile(join(dir, 'identify.json'), 'utf8'));
    const caption = JSON.parse(await readFile(join(dir, 'caption.json'), 'utf8'));
    const scenes = JSON.parse(await readFile(join(dir, 'scenes.json'), 'utf8')) as (Scene & { image: string })[];
    const nObjects = scenes.reduce((n, s) => n + s.objects.length, 0);
    expect(refer.length).toBeGreaterThan(nObjects);
    for (const r of refer) {
      expect(Object.keys(r).sort()).toEqual(['bbox', 'height', 'image', 'img_id', 'sents', 'width']);
      expect(typeof r.sents).toBe('string');
      expect(r.img_id).toMatch(/^s4_\d{6}_\d$/);
      const scene = scenes.find((s) => s.image === r.image)!;
      expect(scene.objects[Number(r.img_id.split('_').pop())].bbox).toEqual(r.bbox);
      expect([r.width, r.height]).toEqual([scene.width, scene.height]);
    }
    expect(vqa.length).toBe(60);
    for (const q of vqa) {
      expect(q.answers).toHaveLength(10);
      expect(typeof q.question).toBe('string');
      expect(['count', 'colour', 'shape', 'exist', 'relation', 'side']).toContain(q.question_type);
    }
    expect(identify.length).toBe(nObjects);
    expect(caption.length).toBe(20);
    expect(caption[0].objects.length).toBeGreaterThan(0);
    for (const [i, c] of (caption as { caption: string; background: string; image: string }[]).entries()) {
      expect(c.background).toMatch(/^(light|dark) (plain|gradient|noisy|textured|striped)$/);
      expect(c.caption.endsWith(` on a ${c.background} background`), c.caption).toBe(true);
      expect(scenes[i].image).toBe(c.image);
      expect(c.background.split(' ')[1]).toBe(scenes[i].background.kind);
    }
  });

  it('referring expressions pick out exactly one object', () => {
    const mk = (
      index: number,
      shape: SceneObject['shape'],
      colour: SceneObject['colour'],
      cx: number,
      cy: number,
      s: number,
    ): SceneObject => {
      const base = { index, shape, colour, cx, cy, w: s, h: s, rotation: 0 };
      return { ...base, ...shapeGeometry(base) };
    };
    const scene = plainScene(400, 300, [
      mk(0, 'circle', 'red', 50, 150, 40),
      mk(1, 'circle', 'blue', 200, 60, 80),
      mk(2, 'square', 'red', 340, 240, 40),
    ]);
    const texts = scene.objects.map((o) => expressions(o, scene).map((e) => e.text));
    expect(texts[0]).toEqual(
      expect.arrayContaining(['red circle', 'circle on the left', 'leftmost circle', 'leftmost object', 'smallest circle']),
    );
    expect(texts[0]).not.toContain('circle');
    expect(texts[0]).not.toContain('red object');
    expect(texts[1]).toEqual(expect.arrayContaining(['blue circle', 'blue object', 'largest circle', 'largest object', 'top object']));
    expect(texts[2]).toEqual(expect.arrayContaining(['square', 'red square', 'rightmost object', 'bottom object']));
    // no expression is shared by two objects
    const all = texts.flat();
    expect(new Set(all).size).toBe(all.length);
  });
});

const cxToX = (o: SceneObject) => o.cx - o.w / 2;
const cyToY = (o: SceneObject) => o.cy - o.h / 2;
