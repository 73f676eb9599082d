import type { DecodeState } from './types.js';

/**
 * The set of live (owned, not yet disposed) decoding states. A state shared by several beams is one entry, so
 * it is disposed exactly once; release() of an unknown or already released state is a no-op.
 */
export class StatePool<S extends DecodeState> {
  private readonly live = new Set<S>();

  get size(): number {
    return this.live.size;
  }

  has(state: S): boolean {
    return this.live.has(state);
  }

  add(state: S): void {
    this.live.add(state);
  }

  /** Stop tracking a state without disposing it (ownership handed to someone else). */
  take(state: S): void {
    this.live.delete(state);
  }

  /** Dispose a state (once). */
  release(state: S): void {
    if (this.live.delete(state)) state.dispose();
  }

  /** Dispose every live state not in `keep`. */
  releaseAllExcept(keep: ReadonlySet<S>): void {
    for (const s of [...this.live]) if (!keep.has(s)) this.release(s);
  }

  /** Dispose everything; every state is attempted even if one dispose() throws (the first error is rethrown). */
  disposeAll(): void {
    let firstError: unknown;
    let failed = false;
    for (const s of [...this.live]) {
      this.live.delete(s);
      try {
        s.dispose();
      } catch (err) {
        if (!failed) {
          failed = true;
          firstError = err;
        }
      }
    }
    if (failed) throw firstError;
  }
}

/**
 * Runs one batched model step, registering the returned states in the pool before anything else so that they are
 * disposed whatever happens next. Returns null when the signal aborted (before, during or right after the step);
 * a rejection caused by the abort is swallowed, any other error is rethrown.
 * The step is always awaited to completion: disposing its input states while it may still be reading them (native
 * KV-cache buffers) would be unsafe, so cancellation mid-step relies on the model honouring `signal`.
 */
export async function runStep<S extends DecodeState>(
  model: { step(states: readonly S[], tokens: readonly number[], signal?: AbortSignal): Promise<{ states: S[]; logits: Float32Array[] }> },
  states: readonly S[],
  tokens: readonly number[],
  pool: StatePool<S>,
  signal: AbortSignal | undefined,
): Promise<{ states: S[]; logits: Float32Array[] } | null> {
  if (signal?.aborted) return null;
  let res: { states: S[]; logits: Float32Array[] };
  try {
    res = await model.step(states, tokens, signal);
  } catch (err) {
    if (signal?.aborted) return null;
    throw err;
  }
  for (const s of res.states ?? []) if (s) pool.add(s);
  if (signal?.aborted) return null;
  if (!res.states || !res.logits || res.states.length !== states.length || res.logits.length !== states.length) {
    throw new Error(`StepModel.step returned ${res.states?.length} states / ${res.logits?.length} logits for a batch of ${states.length}`);
  }
  return res;
}
