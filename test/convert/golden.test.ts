// The inference core's acceptance test: convert the tiny MiniGPT-v2 checkpoints (original formats) and
// check the package against tensors computed by the original PyTorch code.
import { beforeAll, describe, expect, it } from 'vitest';
import { copyFile, mkdir, readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { verifyPackage, type VerifyReport } from '../../src/inference/verify.js';
import { loadPackage } from '../../src/inference/package.js';
import { tempDirPerFile } from '../helpers/temp-dir.js';
import { convertTinyV2, GOLDEN_V2 as GOLDEN, TINY_LLM_META } from '../helpers/tiny-package.js';

let work: string;
let pkgDir: string;
let report: VerifyReport;

/** A Hugging Face folder holding only the given weight files (plus config and tokenizer). */
async function llmFolder(name: string, from: string, files: string[]): Promise<string> {
  const dir = join(work, name);
  await mkdir(dir, { recursive: true });
  for (const f of ['config.json', ...files]) await copyFile(join(from, f), join(dir, f));
  await copyFile(join(GOLDEN, 'llama', 'tokenizer.json'), join(dir, 'tokenizer.json'));
  return dir;
}

tempDirPerFile('minigpt-golden-', (dir) => (work = dir));
beforeAll(async () => {
  pkgDir = join(work, 'pkg');
  await convertTinyV2(pkgDir);
  report = await verifyPackage(pkgDir, GOLDEN, { provider: 'cpu' });
});

describe('minigpt-v2 tiny package against the PyTorch golden tensors', () => {
  it('writes a package whose model.json validates and records provenance', async () => {
    const pkg = await loadPackage(pkgDir);
    expect(pkg.meta.architecture).toBe('minigpt-v2');
    expect(pkg.meta.vision).toMatchObject({ imageSize: 112, imageTokens: 16, width: 32, layers: 2, heads: 4, patchSize: 14 });
    expect(pkg.meta.llm).toMatchObject(TINY_LLM_META);
    const roles = pkg.meta.provenance.sources.map((s) => s.role);
    expect(roles).toEqual(expect.arrayContaining(['vit', 'checkpoint', 'llm-weights', 'tokenizer']));
    for (const s of pkg.meta.provenance.sources) expect(s.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(pkg.meta.provenance.options).toMatchObject({ loraR: 8, loraAlpha: 16, vitHeads: 4, imageSize: 112 });
    // large weights live in external data files, not inside the protobuf
    expect(pkg.meta.graphs.decoder.data).toEqual(['decoder.onnx.data']);
  });

  it('preprocesses the golden PNG within 0.02 mean absolute of pixel_values', () => {
    expect(report.stages.preprocess.mean_abs_err).toBeLessThan(0.02);
  });

  it('matches image embeddings within 1e-4 (ViT fed the golden pixel_values)', () => {
    expect(report.stages.image_embeds.max_abs_err).toBeLessThan(1e-4);
  });

  for (const prompt of ['prompt', 'chat']) {
    it(`matches inputs_embeds, logits and step logits within 1e-4 and the 8 greedy tokens (${prompt})`, () => {
      const p = report.prompts[prompt];
      expect(p, `golden prompt ${prompt}`).toBeDefined();
      expect(p.stages.inputs_embeds.max_abs_err).toBeLessThan(1e-4);
      expect(p.stages.logits.max_abs_err).toBeLessThan(1e-4);
      expect(p.stages.greedy_step_logits.max_abs_err).toBeLessThan(1e-4);
      expect(p.expected_greedy_ids).toHaveLength(8);
      expect(p.greedy_ids).toEqual(p.expected_greedy_ids);
      expect(p.ok).toBe(true);
    });
  }

  it('reports ok overall', () => {
    expect(report.ok).toBe(true);
  });

  it('builds the same graphs from pytorch_model.bin as from model.safetensors', async () => {
    const binLlm = await llmFolder('llama-bin', join(GOLDEN, 'llama'), ['pytorch_model.bin']);
    const binPkg = join(work, 'pkg-bin');
    await convertTinyV2(binPkg, { llm: binLlm });
    const files = (await readdir(pkgDir)).filter((f) => f.includes('.onnx')).sort();
    expect(files).toEqual(['decoder.onnx', 'decoder.onnx.data', 'embed.onnx', 'embed.onnx.data', 'vision.onnx', 'vision.onnx.data']);
    for (const f of files) {
      const a = await readFile(join(pkgDir, f));
      const b = await readFile(join(binPkg, f));
      expect(Buffer.compare(a, b), f).toBe(0);
    }
  });

  it('converts the fp16 copy of the language model; its logits stay within fp16 rounding of the reference', async () => {
    const fp16Llm = await llmFolder('llama-fp16', join(GOLDEN, 'llama_fp16'), ['model.safetensors']);
    const fp16Pkg = join(work, 'pkg-fp16');
    await convertTinyV2(fp16Pkg, { llm: fp16Llm });
    const r = await verifyPackage(fp16Pkg, GOLDEN, { provider: 'cpu' });
    const logitsErr = r.prompts.prompt.stages.logits.max_abs_err;
    // fp16 weights perturb the logits measurably but slightly (the fp32 weights give < 1e-4)
    expect(logitsErr).toBeGreaterThan(1e-5);
    expect(logitsErr).toBeLessThan(0.05);
    expect(r.stages.image_embeds.max_abs_err).toBeLessThan(1e-4);
  });
});

describe('rotary inv_freq', () => {
  it('computed in fp32 like HF equals the buffer transformers 4.30 saved', async () => {
    const { openHfWeights } = await import('../../src/convert/readers/index.js');
    const { computeInvFreq } = await import('../../src/convert/graphs/llama.js');
    const src = await openHfWeights(join(GOLDEN, 'llama'));
    try {
      const saved = await src.readFloat32('model.layers.0.self_attn.rotary_emb.inv_freq');
      expect(Array.from(computeInvFreq(16, 10000))).toEqual(Array.from(saved));
    } finally {
      await src.close();
    }
  });
});
