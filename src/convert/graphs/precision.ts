// The decoder's compute type (`minigpt convert --compute fp16`). In float16 the graph does what transformers'
// LlamaForCausalLM does in torch.float16: Linears, rotary, the residual stream and the KV cache in float16;
// RMSNorm's mean of squares in float32 (then back to float16 before the weight multiply, as HF's
// `hidden_states.to(input_dtype)`); attention scores scaled, masked and softmaxed in float32, the
// probabilities back to float16 for the product with the values. The graph's border stays float32 where the
// runtime computes on it (inputs_embeds, spliced from the vision and embedding graphs; logits, sampled in JS);
// only the KV cache, which the runtime just moves, crosses the border in float16.
import { DataType, type DataTypeId, type GraphBuilder, type GraphIO } from '../onnx/builder.js';
import { toFloat16 } from '../quantize.js';

const HALF = (g: GraphBuilder) => g.compute === 'float16';

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

/** A scalar constant in the compute type. */
export function computeScalar(g: GraphBuilder, value: number, hint: string): string {
  return computeWeight(g, hint, [], Float32Array.of(value));
}

/** The most negative finite value of the compute type: what HF fills masked attention scores with (torch.finfo(dtype).min). */
export function computeMin(g: GraphBuilder): number {
  return HALF(g) ? -65504 : -3.4028234663852886e38;
}
