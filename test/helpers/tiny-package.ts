// The tiny MiniGPT-v2 and MiniGPT-4 fixtures (random weights, PyTorch golden tensors) converted by our own converter.
import { join } from 'node:path';
import { convert, type ConvertOptions } from '../../src/convert/convert.js';

export const GOLDEN_V2 = join(import.meta.dirname, '..', 'fixtures', 'minigptv2-tiny');
export const GOLDEN_M4 = join(import.meta.dirname, '..', 'fixtures', 'minigpt4-tiny');

/** The convert options of the tiny MiniGPT-v2 fixture (its own language-model folder). */
export const TINY_V2_OPTIONS: Omit<ConvertOptions, 'out'> = {
  arch: 'minigpt-v2',
  vit: join(GOLDEN_V2, 'eva_vit.pth'),
  llm: join(GOLDEN_V2, 'llama'),
  ckpt: join(GOLDEN_V2, 'minigptv2_ckpt.pth'),
  vitHeads: 4,
  imageSize: 112,
  loraR: 8,
  loraAlpha: 16,
};

/** The convert options of the tiny MiniGPT-4 fixture with its Q-Former (the Vicuna v0 checkpoint). */
export const TINY_M4_OPTIONS: Omit<ConvertOptions, 'out'> = {
  arch: 'minigpt-4',
  vit: join(GOLDEN_M4, 'eva_vit.pth'),
  qformer: join(GOLDEN_M4, 'blip2_qformer.pth'),
  llm: join(GOLDEN_M4, 'llama'),
  ckpt: join(GOLDEN_M4, 'minigpt4_ckpt.pth'),
  vitHeads: 4,
  qformerHeads: 4,
  imageSize: 56,
};

/** model.json's `llm` of both tiny fixtures' language model. */
export const TINY_LLM_META = {
  layers: 2,
  heads: 4,
  headDim: 16,
  hidden: 64,
  vocabSize: 512,
  bosId: 1,
  eosId: 2,
  rmsNormEps: 1e-6,
};

/** Converts the tiny MiniGPT-v2 fixture (its own language-model folder unless `extra.llm`) into `out`. */
export function convertTinyV2(out: string, extra: Partial<ConvertOptions> = {}) {
  return convert({ ...TINY_V2_OPTIONS, out, ...extra });
}
