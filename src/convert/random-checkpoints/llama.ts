// The Llama-2 half of a random MiniGPT-v2: a Hugging Face LlamaForCausalLM folder's tensors (embed_tokens, per
// layer self_attn q_proj / k_proj / v_proj / o_proj and the SwiGLU mlp gate_proj / up_proj / down_proj, RMSNorms,
// lm_head) and its config.json.
import { NORM_INIT, storageDType, WEIGHT_INIT, type RandomDType, type RandomInit, type RandomTensor } from './tensors.js';

export interface LlamaRandomShape {
  hidden: number;
  layers: number;
  heads: number;
  /** defaults to heads (Llama-2-7B has no grouped-query attention) */
  kvHeads?: number;
  intermediate: number;
  vocab: number;
  rmsNormEps: number;
  maxPositions: number;
  ropeTheta: number;
}

/**
 * The Llama weights of a Hugging Face folder in the order transformers (<= 4.30) saves them, including the
 * `rotary_emb.inv_freq` buffers that were persistent then (cast to the checkpoint dtype like every buffer).
 */
export function llamaTensors(l: LlamaRandomShape, dtype: RandomDType, o: { invFreq?: boolean } = {}): RandomTensor[] {
  const d = storageDType(dtype);
  const H = l.hidden;
  const headDim = H / l.heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw new Error(`hidden ${H} / heads ${l.heads} is not an even head size`);
  const kvOut = (l.kvHeads ?? l.heads) * headDim;
  const t = (name: string, shape: number[], init: RandomInit = WEIGHT_INIT): RandomTensor => ({ name, dtype: d, shape, file: 'llm', init });
  const out = [t('model.embed_tokens.weight', [l.vocab, H])];
  for (let i = 0; i < l.layers; i++) {
    const p = `model.layers.${i}`;
    out.push(
      t(`${p}.self_attn.q_proj.weight`, [H, H]),
      t(`${p}.self_attn.k_proj.weight`, [kvOut, H]),
      t(`${p}.self_attn.v_proj.weight`, [kvOut, H]),
      t(`${p}.self_attn.o_proj.weight`, [H, H]),
    );
    if (o.invFreq ?? true)
      out.push(t(`${p}.self_attn.rotary_emb.inv_freq`, [headDim / 2], { kind: 'invFreq', headDim, theta: l.ropeTheta }));
    out.push(
      t(`${p}.mlp.gate_proj.weight`, [l.intermediate, H]),
      t(`${p}.mlp.down_proj.weight`, [H, l.intermediate]),
      t(`${p}.mlp.up_proj.weight`, [l.intermediate, H]),
      t(`${p}.input_layernorm.weight`, [H], NORM_INIT),
      t(`${p}.post_attention_layernorm.weight`, [H], NORM_INIT),
    );
  }
  out.push(t('model.norm.weight', [H], NORM_INIT), t('lm_head.weight', [l.vocab, H]));
  return out;
}

/** Hugging Face config.json of a Llama-2 model of this shape. */
export function llamaConfigJson(l: LlamaRandomShape, dtype: RandomDType): Record<string, unknown> {
  return {
    _name_or_path: 'random/Llama-2-chat-shaped',
    architectures: ['LlamaForCausalLM'],
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
    hidden_size: l.hidden,
    initializer_range: 0.02,
    intermediate_size: l.intermediate,
    max_position_embeddings: l.maxPositions,
    model_type: 'llama',
    num_attention_heads: l.heads,
    num_hidden_layers: l.layers,
    num_key_value_heads: l.kvHeads ?? l.heads,
    pad_token_id: 0,
    pretraining_tp: 1,
    rms_norm_eps: l.rmsNormEps,
    rope_scaling: null,
    rope_theta: l.ropeTheta,
    tie_word_embeddings: false,
    torch_dtype: dtype === 'fp16' ? 'float16' : 'float32',
    transformers_version: '4.30.0',
    use_cache: true,
    vocab_size: l.vocab,
  };
}
