// eva_vit_g.pth, the EVA ViT-g/14 of EVA-CLIP (Fang et al.) as LAVIS / MiniGPT-v2 load it: cls_token, pos_embed,
// patch_embed.proj, then `depth` pre-norm blocks (norm1, attn with q_bias / v_bias and a fused qkv, norm2, mlp).
import { NORM_INIT, storageDType, WEIGHT_INIT, type RandomDType, type RandomInit, type RandomTensor } from './tensors.js';

export interface VitRandomShape {
  width: number;
  depth: number;
  /** not stored in the file; what `minigpt convert --vit-heads` must be told */
  heads: number;
  mlpHidden: number;
  patch: number;
  /** input size the file is saved for (224 for eva_vit_g.pth: pos_embed [1, 257, 1408]) */
  nativeSize: number;
}

/** eva_vit_g.pth: the EVA ViT state dict as LAVIS/MiniGPT saves it (no ln_vision, no final norm), in its order. */
export function vitTensors(v: VitRandomShape, dtype: RandomDType): RandomTensor[] {
  const d = storageDType(dtype);
  const D = v.width;
  const grid = v.nativeSize / v.patch;
  if (!Number.isInteger(grid)) throw new Error(`ViT native size ${v.nativeSize} is not a multiple of the patch ${v.patch}`);
  const t = (name: string, shape: number[], init: RandomInit = WEIGHT_INIT): RandomTensor => ({ name, dtype: d, shape, file: 'vit', init });
  const out = [
    t('cls_token', [1, 1, D]),
    t('pos_embed', [1, 1 + grid * grid, D]),
    t('patch_embed.proj.weight', [D, 3, v.patch, v.patch]),
    t('patch_embed.proj.bias', [D]),
  ];
  for (let i = 0; i < v.depth; i++) {
    const p = `blocks.${i}`;
    out.push(
      t(`${p}.norm1.weight`, [D], NORM_INIT),
      t(`${p}.norm1.bias`, [D]),
      t(`${p}.attn.q_bias`, [D]),
      t(`${p}.attn.v_bias`, [D]),
      t(`${p}.attn.qkv.weight`, [3 * D, D]),
      t(`${p}.attn.proj.weight`, [D, D]),
      t(`${p}.attn.proj.bias`, [D]),
      t(`${p}.norm2.weight`, [D], NORM_INIT),
      t(`${p}.norm2.bias`, [D]),
      t(`${p}.mlp.fc1.weight`, [v.mlpHidden, D]),
      t(`${p}.mlp.fc1.bias`, [v.mlpHidden]),
      t(`${p}.mlp.fc2.weight`, [D, v.mlpHidden]),
      t(`${p}.mlp.fc2.bias`, [D]),
    );
  }
  return out;
}
