import { CheckpointError } from '../readers/errors.js';
import { DTYPE_ITEMSIZE, numelOf, type StorageDType } from '../readers/types.js';

/** One tensor to be written: its name, storage dtype and shape (C order). */
export interface TensorSpec {
  name: string;
  dtype: StorageDType;
  shape: number[];
}

/**
 * A piece of one tensor's raw little-endian bytes. A tensor may arrive in several consecutive chunks with the
 * same name (so a generator never needs the whole tensor in memory); tensors must come in the order of the specs.
 */
export interface TensorChunk {
  name: string;
  data: ArrayBufferView;
}

export type TensorStream = Iterable<TensorChunk> | AsyncIterable<TensorChunk>;

/** Bytes a tensor occupies in its storage dtype. */
export function tensorByteLength(spec: TensorSpec): number {
  return numelOf(spec.shape, `tensor '${spec.name}'`) * DTYPE_ITEMSIZE[spec.dtype];
}

export function checkUniqueNames(specs: readonly TensorSpec[], where: string): void {
  const seen = new Set<string>();
  for (const s of specs) {
    if (typeof s.name !== 'string' || s.name === '') throw new CheckpointError(`${where}: tensor with an empty name`);
    if (seen.has(s.name)) throw new CheckpointError(`${where}: tensor '${s.name}' is listed twice`);
    seen.add(s.name);
    tensorByteLength(s);
  }
}

function asBytes(v: ArrayBufferView): Uint8Array {
  return v instanceof Uint8Array ? v : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/**
 * Walks `stream` against `specs`: yields every chunk as bytes together with its tensor, and fails as soon as a
 * chunk names the wrong tensor, a tensor gets more or fewer bytes than its dtype and shape need, or the stream
 * ends early or goes on after the last tensor. Empty tensors need no chunk.
 */
export async function* checkedChunks(
  specs: readonly TensorSpec[],
  stream: TensorStream,
  where: string,
): AsyncGenerator<{ index: number; spec: TensorSpec; bytes: Uint8Array; last: boolean }> {
  let i = 0;
  let done = 0;
  const need = specs.map(tensorByteLength);
  const skipEmpty = () => {
    while (i < specs.length && need[i] === 0) i++;
  };
  skipEmpty();
  for await (const chunk of stream as AsyncIterable<TensorChunk>) {
    const bytes = asBytes(chunk.data);
    if (bytes.byteLength === 0) continue;
    if (i >= specs.length) {
      throw new CheckpointError(`${where}: got data for '${chunk.name}' after the last tensor`);
    }
    const spec = specs[i];
    if (chunk.name !== spec.name) {
      throw new CheckpointError(
        `${where}: expected data for tensor '${spec.name}' (${need[i] - done} bytes still due) but got '${chunk.name}'`,
      );
    }
    if (done + bytes.byteLength > need[i]) {
      throw new CheckpointError(
        `${where}: tensor '${spec.name}' gets more than the ${need[i]} bytes that ${spec.dtype}[${spec.shape.join(', ')}] needs`,
      );
    }
    done += bytes.byteLength;
    const last = done === need[i];
    yield { index: i, spec, bytes, last };
    if (last) {
      i++;
      done = 0;
      skipEmpty();
    }
  }
  if (i < specs.length) {
    throw new CheckpointError(
      `${where}: the data ended at tensor '${specs[i].name}' (${done} of ${need[i]} bytes), ${specs.length - i} tensor(s) missing`,
    );
  }
}
