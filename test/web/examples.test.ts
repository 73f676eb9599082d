// Issue 7 "the web demo offers example scenes": GET /examples lists synthetic scenes of a seed that no
// training or evaluation split uses, one suggested prompt per task built from the scene's real objects;
// GET /examples/<id>.png serves each scene, rendered in memory and identical from one server start to the next.
// The answers themselves are the browser test's business (test/web/browser.test.ts): here the conversation
// manager is never asked anything.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EXAMPLE_SEED, EXAMPLE_TASKS } from '../../adapters/web/examples.js';
import { startWebServer, type WebConversationManager, type WebServer } from '../../adapters/web/server.js';
import { expressions, gridBox, imageData, plural, renderScene, type Scene } from '../../src/demo-data/index.js';
import { rawRequest, ROOT, type ListedExample } from './helpers.js';

const unused: WebConversationManager = {
  handle() {
    throw new Error('the examples never reach the conversation manager');
  },
  async reset() {
    return 'forgotten' as const;
  },
};

let first: WebServer;
let second: WebServer;

beforeAll(async () => {
  first = await startWebServer({ manager: unused, port: 0 });
  second = await startWebServer({ manager: unused, port: 0 });
});

afterAll(async () => {
  await first?.close();
  await second?.close();
});

async function list(server: WebServer): Promise<ListedExample[]> {
  const res = await fetch(new URL('/examples', server.url));
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toBe('application/json; charset=utf-8');
  return (await res.json()) as ListedExample[];
}

async function png(server: WebServer, id: string): Promise<Buffer> {
  const res = await fetch(new URL(`/examples/${id}.png`, server.url));
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toBe('image/png');
  expect(res.headers.get('x-content-type-options')).toBe('nosniff');
  return Buffer.from(await res.arrayBuffer());
}

/** The generator's own scene for an example id (`s<seed>_<index>`), rebuilt here independently. */
function sceneOf(id: string): Scene {
  const m = /^s(\d+)_(\d{6})$/.exec(id);
  expect(m, id).not.toBeNull();
  const seed = Number(m![1]);
  const index = Number(m![2]);
  return imageData({ seed, count: index + 1 }, index).scene;
}

/** The objects that a referring phrase picks out by the generator's own expressions. */
const referents = (scene: Scene, phrase: string) => scene.objects.filter((o) => expressions(o, scene).some((e) => e.text === phrase));

describe('web demo: example scenes', () => {
  it('lists one scene per task, from a seed that training and evaluation never use', async () => {
    // Every seed the demo package's runs trained on (PROVENANCE.json's data lines, the whole chain of runs), its
    // held-out evaluation seeds, and the held-out loss split of the recipe (models/demo/train/README.md --val s999).
    const used = new Set<number>();
    type Run = { data?: string; heldout?: { seed?: number }; package?: { heldout?: { seed?: number } }; started_from?: Run };
    const record = JSON.parse(await readFile(join(ROOT, 'models', 'demo', 'PROVENANCE.json'), 'utf8')) as Run;
    for (let run: Run | undefined = record; run; run = run.started_from) {
      for (const m of (run.data ?? '').matchAll(/seeds? (\d+)(?:-(\d+))?/g)) {
        for (let k = Number(m[1]); k <= Number(m[2] ?? m[1]); k++) used.add(k);
      }
      for (const seed of [run.heldout?.seed, run.package?.heldout?.seed]) if (seed !== undefined) used.add(seed);
    }
    const recipe = await readFile(join(ROOT, 'models', 'demo', 'train', 'README.md'), 'utf8');
    for (const m of recipe.matchAll(/demo-data --seed (\d+)/g)) used.add(Number(m[1]));
    expect(used.has(1) && used.has(16) && used.has(999) && used.has(1000)).toBe(true); // the lists were read
    expect(used.has(EXAMPLE_SEED)).toBe(false);
    const examples = await list(first);
    expect(examples.map((e) => e.task)).toEqual([...EXAMPLE_TASKS]);
    expect(EXAMPLE_TASKS).toEqual(['grounding', 'refer', 'detection', 'identify', 'vqa', 'caption']);
    expect(new Set(examples.map((e) => e.id)).size).toBe(examples.length);
    for (const e of examples) {
      expect(Object.keys(e).sort()).toEqual(['alt', 'height', 'id', 'prompt', 'task', 'width']);
      expect(e.id).toMatch(/^s4242_\d{6}$/);
      expect(e.prompt.startsWith(`[${e.task}] `)).toBe(true);
      expect(e.alt.length).toBeGreaterThan(10);
    }
    expect(await list(second)).toEqual(examples);
  });

  it('serves each scene as a PNG of the listed size, byte-identical across server starts and equal to the generator', async () => {
    const examples = await list(first);
    for (const e of examples) {
      const a = await png(first, e.id);
      const b = await png(second, e.id);
      const meta = await sharp(a).metadata();
      expect(meta.format).toBe('png');
      expect([meta.width, meta.height]).toEqual([e.width, e.height]);
      const { info } = await sharp(a).raw().toBuffer({ resolveWithObject: true });
      expect([info.width, info.height]).toEqual([e.width, e.height]);
      expect(b.equals(a), `${e.id} differs between two server starts`).toBe(true);
      const scene = sceneOf(e.id);
      expect([scene.width, scene.height]).toEqual([e.width, e.height]);
      expect((await renderScene(scene, 'png')).equals(a)).toBe(true);
    }
  });

  it('builds every prompt from objects that are in its scene', async () => {
    const examples = await list(first);
    for (const e of examples) {
      const scene = sceneOf(e.id);
      expect(scene.objects.length).toBeGreaterThan(0);
      // the alt text names every object of the scene
      for (const o of scene.objects) expect(e.alt).toContain(`${o.colour} ${o.shape}`);
      switch (e.task) {
        case 'grounding':
          expect(e.prompt).toBe('[grounding] describe this image in detail');
          break;
        case 'caption':
          expect(e.prompt).toBe('[caption] briefly describe this image');
          break;
        case 'refer': {
          const phrase = /^\[refer\] give me the location of the (.+)$/.exec(e.prompt)?.[1];
          expect(phrase, e.prompt).toBeTruthy();
          expect(referents(scene, phrase!), e.prompt).toHaveLength(1);
          break;
        }
        case 'detection': {
          const query = /^\[detection\] ([a-z]+)$/.exec(e.prompt)?.[1];
          expect(
            scene.objects.some((o) => plural(o.shape) === query),
            e.prompt,
          ).toBe(true);
          break;
        }
        case 'identify': {
          const m = /^\[identify\] what is this \{<(\d+)><(\d+)><(\d+)><(\d+)>\}$/.exec(e.prompt);
          expect(m, e.prompt).not.toBeNull();
          const box = m!.slice(1).map(Number);
          expect(
            scene.objects.some((o) => gridBox(o.bbox, scene.width, scene.height).join() === box.join()),
            e.prompt,
          ).toBe(true);
          break;
        }
        case 'vqa': {
          const phrase = /^\[vqa\] (?:what color is|what is the color of|what shape is) the (.+)\?$/.exec(e.prompt)?.[1];
          expect(phrase, e.prompt).toBeTruthy();
          expect(referents(scene, phrase!), e.prompt).toHaveLength(1);
          break;
        }
        default:
          throw new Error(`unexpected task ${e.task}`);
      }
    }
  });

  it('answers HEAD, refuses other methods, unknown ids and paths outside the list', async () => {
    const [e] = await list(first);
    const head = await rawRequest(first.url, { method: 'HEAD', path: `/examples/${e.id}.png` });
    expect(head.status).toBe(200);
    expect(head.headers['content-type']).toBe('image/png');
    expect(Number(head.headers['content-length'])).toBe((await png(first, e.id)).length);
    expect(head.body).toBe('');
    for (const path of [
      '/examples/s4242_999999.png',
      `/examples/${e.id}.jpg`,
      `/examples/${e.id}`,
      '/examples/..%2Findex.html',
      '/examples/../index.html.png',
      '/examples/',
    ]) {
      expect((await rawRequest(first.url, { path })).status, path).toBe(404);
    }
    const post = await rawRequest(first.url, { method: 'POST', path: '/examples', headers: { origin: new URL(first.url).origin } });
    expect(post.status).toBe(405);
    expect((await rawRequest(first.url, { path: '/examples', headers: { host: 'evil.example' } })).status).toBe(421);
  });

  it('offers plain questions to a model without task tags, and nothing when turned off', async () => {
    const v4 = await startWebServer({ manager: unused, port: 0, model: { name: 'mini4', architecture: 'minigpt-4' } });
    const off = await startWebServer({ manager: unused, port: 0, examples: false });
    try {
      const examples = await list(v4);
      expect(examples.map((e) => e.id)).toEqual((await list(first)).map((e) => e.id));
      for (const e of examples) {
        expect(e.task).toBe('chat');
        expect(e.prompt).not.toMatch(/[[\]{}<>]/);
      }
      expect(await list(off)).toEqual([]);
      expect((await rawRequest(off.url, { path: `/examples/${examples[0].id}.png` })).status).toBe(404);
    } finally {
      await v4.close();
      await off.close();
    }
  });
});
