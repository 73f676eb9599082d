/**
 * Streaming writers for the published checkpoint formats: safetensors (single or sharded with a Hugging Face
 * index) and PyTorch `torch.save` zip archives. Tensor data comes from a (async) generator, tensor by tensor and
 * chunk by chunk, and goes straight to disk; headers are computed up front from the shapes.
 */
export type { TensorChunk, TensorSpec, TensorStream } from './types.js';
export { tensorByteLength } from './types.js';
export {
  planShards,
  safetensorsFileSize,
  safetensorsHeader,
  shardFileName,
  writeSafetensors,
  writeShardedSafetensors,
  type SafetensorsWriteOptions,
  type ShardPlanOptions,
  type ShardedWriteOptions,
  type ShardedWriteResult,
} from './safetensors.js';
export { defaultArchiveName, writeTorchCheckpoint, type TorchWriteOptions } from './torch.js';
export { Pickler, STORAGE_CLASS, stateDictPickle, type PickleScalar } from './pickle.js';
export { ZipWriter, crc32, type ZipWriterOptions } from './zip.js';
export { OutputFile, withOutputFile } from './output.js';
