import { open, type FileHandle } from 'node:fs/promises';
import { resolve } from 'node:path';
import { CheckpointError } from './errors.js';

/** Largest single read() we issue (fs limits one read to < 2 GiB). */
const MAX_CHUNK = 1 << 30;

/** Random-access, read-only view of one file. Every read is bounds-checked against the file size. */
export class RandomAccessFile {
  private closed = false;

  private constructor(
    private readonly fh: FileHandle,
    /** absolute path */
    readonly path: string,
    readonly size: number,
  ) {}

  static async open(path: string): Promise<RandomAccessFile> {
    const abs = resolve(path);
    let fh: FileHandle;
    try {
      fh = await open(abs, 'r');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new CheckpointError(`cannot open checkpoint ${abs}: ${code ?? (err as Error).message}`, { cause: err });
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new CheckpointError(`${abs} is not a regular file`);
      return new RandomAccessFile(fh, abs, st.size);
    } catch (err) {
      await fh.close().catch(() => undefined);
      if (err instanceof CheckpointError) throw err;
      throw new CheckpointError(`cannot stat ${abs}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Reads exactly `length` bytes at `offset` into a fresh Uint8Array (own ArrayBuffer). */
  async read(offset: number, length: number, what: string): Promise<Uint8Array> {
    if (this.closed) throw new CheckpointError(`${this.path} has been closed`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new CheckpointError(`${this.path}: invalid read of ${what} (offset ${offset}, length ${length})`);
    }
    if (offset + length > this.size) {
      throw new CheckpointError(
        `${this.path}: ${what} (bytes ${offset}..${offset + length}) extends past the end of the file (${this.size} bytes); the file is truncated or corrupt`,
      );
    }
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const chunk = Math.min(MAX_CHUNK, length - done);
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.fh.read(out, done, chunk, offset + done));
      } catch (err) {
        throw new CheckpointError(`${this.path}: read error in ${what}: ${(err as Error).message}`, { cause: err });
      }
      if (bytesRead === 0) {
        throw new CheckpointError(`${this.path}: unexpected end of file while reading ${what}; the file is truncated`);
      }
      done += bytesRead;
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}
