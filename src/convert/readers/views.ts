import { CheckpointError } from './errors.js';
import { describeKeys, type TensorInfo, type TensorSource } from './types.js';

/**
 * A view of `source` holding only the tensors whose names start with `prefix`, with the prefix stripped
 * (e.g. `unwrapPrefix(src, 'model.')` for `torch.save({'model': state_dict})` checkpoints).
 * Closing the view closes the underlying source.
 */
export function unwrapPrefix(source: TensorSource, prefix: string): TensorSource {
  const names = source
    .list()
    .map((t) => t.name)
    .filter((n) => n.startsWith(prefix) && n.length > prefix.length);
  if (names.length === 0) {
    throw new CheckpointError(
      `no tensor names start with '${prefix}' in ${source.files.join(', ')} (${describeKeys(source.list().map((t) => t.name))})`,
    );
  }
  const inner = new Set(names.map((n) => n.slice(prefix.length)));
  const full = (name: string): string => {
    if (!inner.has(name)) {
      throw new CheckpointError(
        `tensor '${name}' (i.e. '${prefix}${name}') not found in ${source.files.join(', ')} (${describeKeys([...inner])})`,
      );
    }
    return prefix + name;
  };
  return {
    files: source.files,
    list: () =>
      source
        .list()
        .filter((t) => t.name.startsWith(prefix) && t.name.length > prefix.length)
        .map((t) => ({ ...t, name: t.name.slice(prefix.length) })),
    has: (name) => inner.has(name),
    info: (name): TensorInfo => ({ ...source.info(full(name)), name }),
    readFloat32: async (name) => source.readFloat32(full(name)),
    readRaw: async (name) => source.readRaw(full(name)),
    close: () => source.close(),
  };
}

/** Several sources (e.g. shards) seen as one; names must be unique across them. */
export class MergedSource implements TensorSource {
  readonly files: string[];
  private readonly owner = new Map<string, TensorSource>();
  private readonly order: string[] = [];

  constructor(
    private readonly sources: TensorSource[],
    /** extra files to report (e.g. the shard index) */
    extraFiles: string[] = [],
  ) {
    this.files = [...extraFiles, ...sources.flatMap((s) => s.files)];
    for (const s of sources) {
      for (const t of s.list()) {
        const prev = this.owner.get(t.name);
        if (prev) {
          throw new CheckpointError(`tensor '${t.name}' appears in both ${prev.files.join(', ')} and ${s.files.join(', ')}`);
        }
        this.owner.set(t.name, s);
        this.order.push(t.name);
      }
    }
  }

  list(): TensorInfo[] {
    return this.sources.flatMap((s) => s.list());
  }

  has(name: string): boolean {
    return this.owner.has(name);
  }

  info(name: string): TensorInfo {
    return this.src(name).info(name);
  }

  readFloat32(name: string): Promise<Float32Array> {
    return this.src(name).readFloat32(name);
  }

  readRaw(name: string): Promise<Uint8Array> {
    return this.src(name).readRaw(name);
  }

  async close(): Promise<void> {
    const results = await Promise.allSettled(this.sources.map((s) => s.close()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  private src(name: string): TensorSource {
    const s = this.owner.get(name);
    if (!s) throw new CheckpointError(`tensor '${name}' not found in ${this.files.join(', ')} (${describeKeys(this.order)})`);
    return s;
  }
}
