// A package's memory-mapped weights read once, start to end, so that their pages are in the OS page cache before a
// run needs them. On the CPU provider onnxruntime maps a graph's external data file into memory instead of copying
// it, and the token embedding table (262 MB at 7B in fp16) is read by a Gather one row at a time, whatever the
// provider: each token's first lookup then waits for its page from disk. Measured with the 7B-shaped int4 package,
// its files evicted from the page cache first (as after a reboot): a lookup took 3.5 ms on average (10-16 ms on a
// loaded machine with the full-size package) against 0.1 ms cached; that first answer decoded at 46.7 instead of
// ~56 tok/s. One sequential read is far cheaper than thousands of page faults and costs no process memory (the
// pages belong to the page cache, mapped on use). Awaited at load it cost `ask` 0.5 s, more than it saves on a
// short answer, so the long-running server reads it in the background.
import { open } from 'node:fs/promises';

/** Reads the files through (the data discarded), stopping early when `signal` aborts; returns the bytes read. */
export async function readThrough(paths: readonly string[], signal?: AbortSignal, chunkBytes = 4 * 1024 * 1024): Promise<number> {
  const buf = Buffer.allocUnsafe(chunkBytes);
  let total = 0;
  for (const path of paths) {
    const file = await open(path, 'r');
    try {
      while (!signal?.aborted) {
        const { bytesRead } = await file.read(buf, 0, chunkBytes, null);
        if (bytesRead === 0) break;
        total += bytesRead;
      }
    } finally {
      await file.close();
    }
  }
  return total;
}
