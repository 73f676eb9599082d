import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { CheckpointError } from '../readers/errors.js';

/** Largest single write() we issue (fs limits one call to < 2 GiB). */
const MAX_WRITE = 1 << 30;

/**
 * Sequential output file with positioned patches. Data goes to `<path>.partial` and is renamed into place by
 * `commit()`, so a failed or interrupted write never leaves a truncated file under the final name.
 */
export class OutputFile {
  private offset = 0;
  private closed = false;

  private constructor(
    private readonly fh: FileHandle,
    readonly path: string,
    private readonly tmpPath: string,
  ) {}

  static async create(path: string): Promise<OutputFile> {
    const tmp = `${path}.partial`;
    try {
      return new OutputFile(await open(tmp, 'w'), path, tmp);
    } catch (err) {
      throw new CheckpointError(`cannot create ${tmp}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
    }
  }

  /** Bytes written so far (the offset of the next write). */
  get position(): number {
    return this.offset;
  }

  async write(bytes: Uint8Array): Promise<void> {
    await this.writeAt(this.offset, bytes);
    this.offset += bytes.byteLength;
  }

  /** Overwrites bytes already written (e.g. a header field known only after the data). */
  async patch(position: number, bytes: Uint8Array): Promise<void> {
    if (position + bytes.byteLength > this.offset) {
      throw new CheckpointError(`${this.path}: patch at ${position} reaches past the written data (${this.offset} bytes)`);
    }
    await this.writeAt(position, bytes);
  }

  private async writeAt(position: number, bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.byteLength) {
      const len = Math.min(MAX_WRITE, bytes.byteLength - done);
      let n: number;
      try {
        ({ bytesWritten: n } = await this.fh.write(bytes, done, len, position + done));
      } catch (err) {
        throw new CheckpointError(`${this.path}: write error: ${(err as Error).message}`, { cause: err });
      }
      if (n <= 0) throw new CheckpointError(`${this.path}: write made no progress (disk full?)`);
      done += n;
    }
  }

  /** Closes the file and moves it to its final name (no fsync: the page cache writes it back). */
  async commit(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
    await rename(this.tmpPath, this.path);
  }

  /** Closes and deletes the partial file (after an error). */
  async abort(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.fh.close().catch(() => undefined);
    }
    await rm(this.tmpPath, { force: true });
  }
}

/** Runs `body` on a fresh OutputFile, committing it on success and removing it on failure. */
export async function withOutputFile<T>(path: string, body: (f: OutputFile) => Promise<T>): Promise<T> {
  const f = await OutputFile.create(path);
  try {
    const r = await body(f);
    await f.commit();
    return r;
  } catch (err) {
    await f.abort();
    throw err;
  }
}
