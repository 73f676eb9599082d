// The tiny MiniGPT-v2 fixture (random weights, PyTorch golden tensors) converted by our own converter.
import { join } from 'node:path';
import { convert, type ConvertOptions } from '../../src/convert/convert.js';

export const GOLDEN_V2 = join(import.meta.dirname, '..', 'fixtures', 'minigptv2-tiny');

/** Converts the tiny MiniGPT-v2 fixture (its own language-model folder unless `extra.llm`) into `out`. */
export function convertTinyV2(out: string, extra: Partial<ConvertOptions> = {}) {
  return convert({
    arch: 'minigpt-v2',
    vit: join(GOLDEN_V2, 'eva_vit.pth'),
    llm: join(GOLDEN_V2, 'llama'),
    ckpt: join(GOLDEN_V2, 'minigptv2_ckpt.pth'),
    vitHeads: 4,
    imageSize: 112,
    loraR: 8,
    loraAlpha: 16,
    out,
    ...extra,
  });
}
