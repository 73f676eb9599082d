// How the Linear weights of a package are stored: the weight type and, for int8 / int4, MatMulNBits' block size
// and accuracy level. Its own module so that the graph builder (onnx/builder.ts) and the quantiser
// (quantize.ts, which builds on the builder) both use it without importing each other.

export type WeightDType = 'fp32' | 'fp16' | 'int8' | 'int4';
export const WEIGHT_DTYPES: readonly WeightDType[] = ['fp32', 'fp16', 'int8', 'int4'];

/** Block size along K for int8/int4 (onnxruntime's quantiser default). */
export const DEFAULT_BLOCK_SIZE = 32;

/**
 * MatMulNBits `accuracy_level`: the smallest type onnxruntime may compute in. 0 = unset (the provider's own
 * choice: float32 on the CPU), 1 = float32, 2 = float16, 3 = bfloat16, 4 = int8 (the activations are
 * quantised per block to int8 and multiplied with integer dot products; the weights stay as stored).
 */
export type AccuracyLevel = 0 | 1 | 2 | 3 | 4;
export const ACCURACY_LEVELS: readonly AccuracyLevel[] = [0, 1, 2, 3, 4];

/**
 * The default accuracy level, chosen by measurement (docs/quantisation.md, "Accuracy level"): on the CPU
 * provider level 4 makes a 7B-shaped decoding step ~3x (int4) to ~47x (int8) faster than the float32 path,
 * whose int8 kernel is a slow fallback; the error it adds is small beside the weight rounding itself.
 * onnxruntime's GPU providers ignore the level they have no kernel for (CUDA, WebGPU compute in the
 * activations' type), so the same package serves both.
 */
export const DEFAULT_ACCURACY_LEVEL: AccuracyLevel = 4;

export interface WeightFormat {
  dtype: WeightDType;
  /** MatMulNBits block size along K (int8/int4): a power of two >= 16 */
  blockSize: number;
  /** MatMulNBits accuracy_level (int8/int4) */
  accuracyLevel: AccuracyLevel;
}

export const FP32_WEIGHTS: WeightFormat = { dtype: 'fp32', blockSize: DEFAULT_BLOCK_SIZE, accuracyLevel: DEFAULT_ACCURACY_LEVEL };
