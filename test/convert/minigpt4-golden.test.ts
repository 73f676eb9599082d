// MiniGPT-4 acceptance test: convert the tiny MiniGPT-4 checkpoints (EVA ViT, BLIP-2 Q-Former, llama_proj,
// Llama) in their original formats and check the packages against tensors computed by the original
// PyTorch code, for the Q-Former variant (Vicuna v0 / Llama-2 / chat prompts) and the Llama-2 variant
// without Q-Former (has_qformer: False).
//
// test/fixtures/minigpt4-tiny is ../shared/golden/minigpt4-tiny minus what no test reads
// (llama/pytorch_model.bin, input_rgb, resized_rgb, vit_output, qformer_embeddings_output,
// qformer_layer_outputs), plus llama/tokenizer.json from
// `node scripts/make-fixture-tokenizer.mjs --fixture test/fixtures/minigpt4-tiny`.
import { beforeAll, describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { convert, defaultPromptStyle, type ConvertOptions } from '../../src/convert/convert.js';
import { verifyPackage, type VerifyReport } from '../../src/inference/verify.js';
import { loadPackage } from '../../src/inference/package.js';
import { MINIGPT4_PROMPTS } from '../../src/inference/presets.js';
import { conversationPrompt } from '../../src/inference/prompt.js';
import { promptSegmentIds } from '../../src/inference/context.js';
import { loadTokenizer } from '../../src/inference/tokenizer.js';
import { minigpt, ROOT } from '../helpers/cli.js';
import { tempDirPerFile } from '../helpers/temp-dir.js';
import { GOLDEN_M4 as GOLDEN, TINY_LLM_META, TINY_M4_OPTIONS } from '../helpers/tiny-package.js';

const V2_TOKENIZER = join(ROOT, 'test/fixtures/minigptv2-tiny/llama/tokenizer.json');
const TOL = 1e-4;

interface Segment {
  text: string;
  add_special_tokens: boolean;
  ids: number[];
}
interface Manifest {
  prompts: Record<string, { prompt: string; segments: Segment[]; greedy_ids: number[]; sequence_length: number }>;
}

function tinyConvert(out: string, extra: Partial<ConvertOptions> = {}) {
  return convert({ ...TINY_M4_OPTIONS, out, ...extra });
}

let work: string;
let manifest: Manifest;
let qPkg: string;
let nPkg: string;
let qReport: VerifyReport;
let nReport: VerifyReport;

tempDirPerFile('minigpt4-golden-', (dir) => (work = dir));
beforeAll(async () => {
  manifest = JSON.parse(await readFile(join(GOLDEN, 'manifest.json'), 'utf8')) as Manifest;
  qPkg = join(work, 'qformer');
  nPkg = join(work, 'noqformer');
  await tinyConvert(qPkg);
  // The has_qformer: False checkpoint; --qformer is given too, to show the variant follows llama_proj.
  await tinyConvert(nPkg, { ckpt: join(GOLDEN, 'minigpt4_llama2_noqformer_ckpt.pth'), qformerHeads: undefined });
  qReport = await verifyPackage(qPkg, GOLDEN, { provider: 'cpu' });
  nReport = await verifyPackage(nPkg, GOLDEN, { provider: 'cpu' });
});

describe('minigpt-4 tiny package with the Q-Former against the PyTorch golden tensors', () => {
  it('writes a package whose model.json validates and describes the Q-Former', async () => {
    const pkg = await loadPackage(qPkg);
    expect(pkg.meta.architecture).toBe('minigpt-4');
    expect(pkg.meta.vision).toMatchObject({ imageSize: 56, imageTokens: 4, width: 32, layers: 2, heads: 4, patchSize: 14 });
    expect(pkg.meta.vision.qformer).toEqual({ queryTokens: 4, hidden: 32, layers: 2, heads: 4, intermediate: 64, crossAttentionFreq: 2 });
    expect(pkg.meta.llm).toMatchObject(TINY_LLM_META);
    expect(pkg.meta.provenance.sources.map((s) => s.role)).toEqual(
      expect.arrayContaining(['vit', 'qformer', 'checkpoint', 'llm-config', 'llm-weights', 'tokenizer']),
    );
    expect(pkg.meta.provenance.options).toMatchObject({
      arch: 'minigpt-4',
      variant: 'qformer',
      qformerHeads: 4,
      vitHeads: 4,
      imageSize: 56,
      prompt: 'vicuna0',
    });
    // the config is not Llama-2's, so the prompt defaults to Vicuna v0
    expect(pkg.meta.prompt).toMatchObject({ ...MINIGPT4_PROMPTS.vicuna0, stopIds: [2] });
    expect(pkg.meta.graphs.vision.outputs.map((o) => o.name)).toEqual(['image_embeds', 'ln_vision_output', 'query_output']);
  });

  it('matches ln_vision, the Q-Former output and the image embeddings within 1e-4', () => {
    for (const stage of ['ln_vision_output', 'query_output', 'image_embeds']) {
      expect(qReport.stages[stage]?.max_abs_err, stage).toBeLessThan(TOL);
    }
    expect(qReport.stages.preprocess.mean_abs_err).toBeLessThan(0.02);
  });

  it('verifies exactly the Q-Former prompts of the folder', () => {
    expect(Object.keys(qReport.prompts).sort()).toEqual(['chat_vicuna0', 'llama2', 'vicuna0']);
  });

  for (const prompt of ['vicuna0', 'llama2', 'chat_vicuna0']) {
    it(`matches inputs_embeds, logits (and step logits) within 1e-4 and the 8 greedy tokens (${prompt})`, () => {
      const p = qReport.prompts[prompt];
      expect(p, `golden prompt ${prompt}`).toBeDefined();
      expect(p.stages.inputs_embeds.max_abs_err).toBeLessThan(TOL);
      expect(p.stages.logits.max_abs_err).toBeLessThan(TOL);
      if (prompt !== 'chat_vicuna0') expect(p.stages.greedy_step_logits.max_abs_err).toBeLessThan(TOL);
      expect(p.expected_greedy_ids).toEqual(manifest.prompts[prompt].greedy_ids);
      expect(p.greedy_ids).toEqual(manifest.prompts[prompt].greedy_ids);
      expect(p.ok).toBe(true);
    });
  }

  it('reports ok overall', () => {
    expect(qReport.ok).toBe(true);
  });

  it('needs the right --qformer-heads: a wrong count is caught by verify', async () => {
    const bad = join(work, 'qformer-2heads');
    await tinyConvert(bad, { qformerHeads: 2 });
    const r = await verifyPackage(bad, GOLDEN, { provider: 'cpu' });
    expect(r.ok).toBe(false);
    expect(r.stages.query_output.max_abs_err).toBeGreaterThan(TOL);
    expect(r.stages.ln_vision_output.max_abs_err).toBeLessThan(TOL);
  });
});

describe('minigpt-4 tiny package without Q-Former (Llama-2 variant, has_qformer: False)', () => {
  it('is chosen from llama_proj (4 x ViT width inputs) and gets the Llama-2 prompt', async () => {
    const pkg = await loadPackage(nPkg);
    expect(pkg.meta.vision.qformer).toBeUndefined();
    expect(pkg.meta.vision.imageTokens).toBe(4);
    expect(pkg.meta.provenance.options).toMatchObject({ variant: 'noqformer', prompt: 'llama2' });
    expect(pkg.meta.provenance.sources.map((s) => s.role)).not.toContain('qformer');
    expect(pkg.meta.prompt).toMatchObject({ ...MINIGPT4_PROMPTS.llama2, stopIds: [2] });
    expect(pkg.meta.graphs.vision.outputs.map((o) => o.name)).toEqual(['image_embeds']);
  });

  it('matches noqformer_image_embeds, the logits and the greedy tokens of noqformer_llama2', () => {
    expect(Object.keys(nReport.prompts)).toEqual(['noqformer_llama2']);
    expect(nReport.stages.image_embeds.max_abs_err).toBeLessThan(TOL);
    const p = nReport.prompts.noqformer_llama2;
    expect(p.stages.logits.max_abs_err).toBeLessThan(TOL);
    expect(p.greedy_ids).toEqual(manifest.prompts.noqformer_llama2.greedy_ids);
    expect(p.greedy_ids).toEqual(p.expected_greedy_ids);
    expect(nReport.ok).toBe(true);
  });

  it('converts without --qformer too', async () => {
    const out = join(work, 'noqformer-plain');
    const meta = await tinyConvert(out, {
      qformer: undefined,
      qformerHeads: undefined,
      ckpt: join(GOLDEN, 'minigpt4_llama2_noqformer_ckpt.pth'),
    });
    expect(meta.provenance.options).toMatchObject({ variant: 'noqformer' });
  });
});

describe('minigpt-4 prompts and tokenizer', () => {
  it('the presets give exactly the golden prompt strings', () => {
    const user = '<Img><ImageHere></Img> What is this?';
    expect(MINIGPT4_PROMPTS.vicuna0.template.replace('{}', user)).toBe(manifest.prompts.vicuna0.prompt);
    expect(MINIGPT4_PROMPTS.llama2.template.replace('{}', user)).toBe(manifest.prompts.llama2.prompt);
    // the chat variant: upstream Chat with CONV_VISION_Vicuna0
    expect(conversationPrompt({ ...MINIGPT4_PROMPTS.vicuna0, stopIds: [2] }, [{ user: 'What is this?' }])).toBe(
      manifest.prompts.chat_vicuna0.prompt,
    );
    // CONV_VISION_LLama2 (upstream's literal <s> after the system text)
    expect(conversationPrompt({ ...MINIGPT4_PROMPTS.llama2, stopIds: [2] }, [{ user: 'What is this?' }])).toBe(
      `${MINIGPT4_PROMPTS.llama2.system}<s>[INST] <Img><ImageHere></Img> What is this? [/INST] `,
    );
  });

  it('the fixture tokenizer is what the script generates and splits every golden prompt into the golden ids', async () => {
    const script = fileURLToPath(new URL('../../scripts/make-fixture-tokenizer.mjs', import.meta.url));
    const mod = (await import(script)) as { buildFixtureTokenizer: (m: unknown) => { tokenizer: unknown } };
    const onDisk = JSON.parse(await readFile(join(GOLDEN, 'llama/tokenizer.json'), 'utf8'));
    expect(onDisk).toEqual(mod.buildFixtureTokenizer(manifest).tokenizer);

    const tok = await loadTokenizer(join(qPkg, 'tokenizer.json'));
    for (const [name, p] of Object.entries(manifest.prompts)) {
      const segs = p.segments.length ? p.segments : manifest.prompts.llama2.segments;
      expect(promptSegmentIds(p.prompt, '<ImageHere>', 1, tok), name).toEqual(segs.map((s) => s.ids));
    }
    // The MiniGPT-v2 fixture's vocabulary lacks MiniGPT-4's pieces (e.g. "Human"), hence a tokenizer of its own.
    const v2 = await loadTokenizer(V2_TOKENIZER);
    expect(v2.encode('###Human: <Img>', { addBos: true })).not.toEqual(manifest.prompts.vicuna0.segments[0].ids);
  });

  it('defaults the prompt style from the language model', () => {
    expect(defaultPromptStyle('noqformer', '/m/vicuna-7b', {})).toBe('llama2');
    expect(defaultPromptStyle('qformer', '/m/vicuna-7b', { max_position_embeddings: 2048 })).toBe('vicuna0');
    expect(defaultPromptStyle('qformer', '/m/Llama-2-7b-chat-hf/', { max_position_embeddings: 2048 })).toBe('llama2');
    expect(defaultPromptStyle('qformer', '/m/x', { _name_or_path: 'meta-llama/Llama-2-7b-chat-hf' })).toBe('llama2');
    expect(defaultPromptStyle('qformer', '/m/x', { max_position_embeddings: 4096 })).toBe('llama2');
  });

  it('--prompt overrides the default', async () => {
    const meta = await tinyConvert(join(work, 'qformer-llama2'), { prompt: 'llama2' });
    expect(meta.prompt.template).toBe('[INST] {} [/INST] ');
    expect(meta.provenance.options.prompt).toBe('llama2');
  });

  it('refuses a Q-Former checkpoint without --qformer, heads that do not divide the width, and LoRA options', async () => {
    await expect(tinyConvert(join(work, 'no-q'), { qformer: undefined })).rejects.toThrow(/needs --qformer/);
    await expect(tinyConvert(join(work, 'q12'), { qformerHeads: undefined })).rejects.toThrow(/not divisible by --qformer-heads 12/);
    await expect(tinyConvert(join(work, 'lora'), { loraR: 8 })).rejects.toThrow(/no LoRA/);
  });
});

describe('minigpt verify on the MiniGPT-4 folder (CLI)', () => {
  it('prints one object per prompt and exits 0 within tolerance, 1 over it', async () => {
    const ok = await minigpt(['verify', '--model', qPkg, '--golden', GOLDEN]);
    expect(ok.code, ok.stderr).toBe(0);
    const report = JSON.parse(ok.stdout) as VerifyReport;
    expect(Object.keys(report.prompts).sort()).toEqual(['chat_vicuna0', 'llama2', 'vicuna0']);
    for (const p of Object.values(report.prompts)) expect(p.stages.logits.max_abs_err).toBeLessThan(TOL);

    const badPkg = join(work, 'cli-qformer-2heads');
    await tinyConvert(badPkg, { qformerHeads: 2 });
    const bad = await minigpt(['verify', '--model', badPkg, '--golden', GOLDEN]);
    expect(bad.code).toBe(1);
    expect((JSON.parse(bad.stdout) as VerifyReport).ok).toBe(false);
  });
});
