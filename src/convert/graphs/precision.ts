// The compute type of the decoder and the ViT trunk (`minigpt convert --compute fp16`). In float16 the decoder
// does what transformers'
// LlamaForCausalLM does in torch.float16: Linears, rotary, the residual stream and the KV cache in float16;
// RMSNorm's mean of squares in float32 (then back to float16 before the weight multiply, as HF's
// `hidden_states.to(input_dtype)`); attention scores scaled, masked and softmaxed in float32, the
// probabilities back to float16 for the product with the values. The graph's border stays float32 where the
// runtime computes on it (inputs_embeds, spliced from the vision and embedding graphs; logits, sampled in JS);
// only the KV cache, which the runtime just moves, crosses the border in float16. The EVA ViT runs in float16
// as upstream MiniGPT runs it (`vit_precision: fp16`), with LayerNorm statistics and the attention softmax in
// float32; ln_vision's output goes on in float32 (the 4-concat and llama_proj, or the Q-Former).
import { type ComputeType, DataType, type DataTypeId, type GraphBuilder, type GraphIO } from '../onnx/builder.js';
import { toFloat16 } from '../quantize.js';

const HALF = (g: GraphBuilder) => g.compute === 'float16';

/**
 * Builds `build`'s part of the graph in `type` (the builder's compute type restored after): the vision graph
 * computes its ViT trunk in the compute type and what follows ln_vision in float32.
 */
export async function withCompute<T>(g: GraphBuilder, type: GraphBuilder['compute'], build: () => Promise<T>): Promise<T> {
  const was = g.compute;
  g.compute = type;
  try {
    return await build();
  } finally {
    g.compute = was;
  }
}

/** The ONNX type id of the compute type. */
export function computeTypeId(g: GraphBuilder): DataTypeId {
  return HALF(g) ? DataType.FLOAT16 : DataType.FLOAT;
}

/** The compute type as a graph input/output type. */
export function computeIO(g: GraphBuilder): GraphIO['dtype'] {
  return HALF(g) ? 'float16' : 'float32';
}

/** x cast to the compute type (no node in float32). */
export function toCompute(g: GraphBuilder, x: string, name: string): string {
  return HALF(g) ? g.op('Cast', [x], { to: DataType.FLOAT16 }, { name }) : x;
}

/** x (in the compute type) cast to float32 (no node in float32). */
export function toFloat32(g: GraphBuilder, x: string, name: string): string {
  return HALF(g) ? g.op('Cast', [x], { to: DataType.FLOAT }, { name }) : x;
}

/** A small weight (a norm's gamma, a bias, rotary tables) stored in the compute type. */
export function computeWeight(g: GraphBuilder, name: string, dims: number[], data: Float32Array): string {
  return HALF(g) ? g.weight(name, dims, toFloat16(data), DataType.FLOAT16) : g.weight(name, dims, data);
}

/** A scalar constant in the compute type (in float32 exactly g.scalar's, so float32 graphs keep their bytes). */
export function computeScalar(g: GraphBuilder, value: number, hint: string): string {
  return HALF(g) ? g.weight(hint, [], toFloat16(Float32Array.of(value)), DataType.FLOAT16) : g.scalar(value, hint);
}

/** The most negative finite value of `type`: what HF fills masked attention scores with (torch.finfo(dtype).min). */
export function lowestFinite(type: ComputeType): number {
  return type === 'float16' ? -65504 : -3.4028234663852886e38;
}

/** lowestFinite of the graph's compute type. */
export function computeMin(g: GraphBuilder): number {
  return lowestFinite(g.compute);
}
