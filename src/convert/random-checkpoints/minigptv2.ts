// The MiniGPT-v2 checkpoint's own tensors (minigptv2_checkpoint.pth, `{'model': ...}`): the LoRA adapters of
// q_proj / v_proj under peft 0.2 names, the rotary buffers, and llama_proj (four ViT tokens concatenated -> Llama hidden).
import type { VitRandomShape } from './eva-vit.js';
import type { LlamaRandomShape } from './llama.js';
import { storageDType, WEIGHT_INIT, type RandomDType, type RandomInit, type RandomTensor } from './tensors.js';

export interface MiniGPTv2RandomShape {
  llm: LlamaRandomShape;
  vit: VitRandomShape;
  lora: { r: number; alpha: number };
  /** vision input size of the converted package (448 for MiniGPT-v2) */
  imageSize: number;
}

/**
 * The state dict inside the MiniGPT-v2 checkpoint (`{'model': ...}`): what upstream's runner keeps (trainable
 * parameters and persistent buffers): LoRA A/B of q_proj/v_proj under peft 0.2 names, the rotary buffers, llama_proj.
 */
export function ckptTensors(s: MiniGPTv2RandomShape, dtype: RandomDType): RandomTensor[] {
  const d = storageDType(dtype);
  const H = s.llm.hidden;
  const headDim = H / s.llm.heads;
  const kvOut = (s.llm.kvHeads ?? s.llm.heads) * headDim;
  const r = s.lora.r;
  const t = (name: string, shape: number[], init: RandomInit = WEIGHT_INIT): RandomTensor => ({
    name,
    dtype: d,
    shape,
    file: 'ckpt',
    init,
  });
  const out: RandomTensor[] = [];
  for (let i = 0; i < s.llm.layers; i++) {
    const p = `llama_model.base_model.model.model.layers.${i}.self_attn`;
    out.push(
      t(`${p}.q_proj.lora_A.weight`, [r, H]),
      t(`${p}.q_proj.lora_B.weight`, [H, r]),
      t(`${p}.v_proj.lora_A.weight`, [r, H]),
      t(`${p}.v_proj.lora_B.weight`, [kvOut, r]),
      t(`${p}.rotary_emb.inv_freq`, [headDim / 2], { kind: 'invFreq', headDim, theta: s.llm.ropeTheta }),
    );
  }
  out.push(t('llama_proj.weight', [H, 4 * s.vit.width]), t('llama_proj.bias', [H]));
  return out;
}
