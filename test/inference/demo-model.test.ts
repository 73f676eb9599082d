// models/demo, the embedded default package: rebuilt by the project's own converter from the tiny random
// checkpoints; the committed files must be exactly what the recipe produces.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPackage } from '../../src/inference/package.js';
import { loadTokenizer } from '../../src/inference/tokenizer.js';
import { MiniGPT } from '../../src/inference/model.js';
import { conversationPrompt } from '../../src/inference/prompt.js';
import { sha256Hex } from '../../src/conversation/store.js';

const ROOT = join(import.meta.dirname, '..', '..');
const DEMO = join(ROOT, 'models', 'demo');
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-demo-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const sha256 = async (p: string) => sha256Hex(await readFile(p));

describe('models/demo', () => {
  it('is what scripts/build-demo-model.mjs builds from the recorded sources', async () => {
    const pkg = await loadPackage(DEMO);
    for (const s of pkg.meta.provenance.sources.filter((x) => ['vit', 'checkpoint', 'llm-config', 'llm-weights'].includes(x.role))) {
      const path = s.role === 'vit' || s.role === 'checkpoint' ? join(ROOT, 'test/fixtures/minigptv2-tiny', s.path) : join(ROOT, 'test/fixtures/minigptv2-tiny/llama', s.path);
      expect(await sha256(path), s.path).toBe(s.sha256);
    }
    const { execFileSync } = await import('node:child_process');
    const out = join(work, 'rebuilt');
    execFileSync(process.execPath, [join(ROOT, 'scripts/build-demo-model.mjs'), '--out', out], { cwd: ROOT, stdio: 'pipe' });
    for (const f of ['vision.onnx', 'vision.onnx.data', 'embed.onnx', 'embed.onnx.data', 'decoder.onnx', 'decoder.onnx.data', 'tokenizer.json']) {
      expect(await sha256(join(out, f)), f).toBe(await sha256(join(DEMO, f)));
    }
  });

  it('has a 512-piece tokenizer that round-trips ASCII text and box syntax exactly', async () => {
    const tok = await loadTokenizer(join(DEMO, 'tokenizer.json'), { bosId: 1, eosId: 2 });
    expect(tok.vocabSize).toBe(512);
    for (const text of ['<p>a red square</p> {<10><20><30><40>}<delim>{<0><0><100><100>}', '[refer] give me the location of the blue circle', 'Hello, World! 42 ~`|\\']) {
      const ids = tok.encode(text, { addBos: false });
      expect(ids.every((i) => i > 2 && i < 512)).toBe(true);
      expect(tok.decode(ids)).toBe(text);
    }
    expect(tok.encode('<s>[INST] hi', { addBos: true }).slice(0, 2)).toEqual([1, 1]);
  });

  it('answers through the forced-answer test hook with exactly the given text', async () => {
    const forced = '<p>red square</p>{<10><20><30><40>}';
    const model = await MiniGPT.load(DEMO, { provider: 'cpu', forcedAnswer: forced });
    try {
      const { embeds } = await model.encodeImage(await readFile(join(ROOT, 'test/fixtures/minigptv2-tiny/input.png')));
      const pieces: string[] = [];
      let final = '';
      let reason = '';
      for await (const ev of model.answer(conversationPrompt(model.meta.prompt, [{ user: '[refer] red square' }]), [embeds], { temperature: 0 })) {
        if (ev.type === 'text') pieces.push(ev.text);
        if (ev.type === 'done') [final, reason] = [ev.text, ev.finishReason];
      }
      expect(final).toBe(forced);
      expect(pieces.length).toBeGreaterThan(3);
      expect(pieces.join('')).toBe(forced);
      expect(reason).toBe('stop');
    } finally {
      await model.close();
    }
  });
});
