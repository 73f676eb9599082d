// Streaming torch.save writer (the zip format of torch >= 1.6): `<archive>/data.pkl` (computed up front from
// the shapes), `<archive>/byteorder`, one `<archive>/data/<key>` storage per tensor written as the data
// streams, `<archive>/version`. Holds at most one chunk of tensor data in memory.
import { basename, extname } from 'node:path';
import { withOutputFile } from './output.js';
import { stateDictPickle, type PickleScalar } from './pickle.js';
import { checkUniqueNames, checkedChunks, tensorByteLength, type TensorSpec, type TensorStream } from './types.js';
import { ZipWriter } from './zip.js';

export interface TorchWriteOptions {
  /** save `{wrap: state_dict}` (MiniGPT checkpoints: 'model') instead of the bare state dict */
  wrap?: string;
  /** other top-level entries of a wrapped checkpoint (e.g. {epoch: 3}) */
  extras?: Record<string, PickleScalar>;
  /** folder name inside the zip; torch uses the file name without extension */
  archiveName?: string;
  /** ZIP64 records only where needed ('auto', default) or for everything ('always') */
  zip64?: 'auto' | 'always';
}

const enc = new TextEncoder();

/** The archive folder name torch.save uses for `path`. */
export function defaultArchiveName(path: string): string {
  const base = basename(path);
  const stem = base.slice(0, base.length - extname(base).length) || base;
  return stem.replace(/[^A-Za-z0-9_.-]/g, '_') || 'archive';
}

/** Writes a torch.save checkpoint of `specs` (in order) from `data`. Returns the file size. */
export async function writeTorchCheckpoint(
  path: string,
  specs: readonly TensorSpec[],
  data: TensorStream,
  opts: TorchWriteOptions = {},
): Promise<number> {
  checkUniqueNames(specs, path);
  const archive = opts.archiveName ?? defaultArchiveName(path);
  const pkl = stateDictPickle(specs, { wrap: opts.wrap, extras: opts.extras });
  return withOutputFile(path, async (f) => {
    const zip = new ZipWriter(f, { align: 64, zip64: opts.zip64 });
    await zip.add(`${archive}/data.pkl`, pkl);
    await zip.add(`${archive}/byteorder`, enc.encode('little'));
    let open = -1;
    const openUpTo = async (index: number) => {
      // storages of empty tensors have no chunk: open (and close) them in passing
      while (open < index) {
        if (open >= 0) await zip.end();
        open++;
        await zip.begin(`${archive}/data/${open}`, tensorByteLength(specs[open]));
      }
    };
    for await (const { index, bytes } of checkedChunks(specs, data, path)) {
      await openUpTo(index);
      await zip.data(bytes);
    }
    if (specs.length > 0) {
      await openUpTo(specs.length - 1);
      await zip.end();
    }
    await zip.add(`${archive}/version`, enc.encode('3\n'));
    await zip.finish();
    return f.position;
  });
}
