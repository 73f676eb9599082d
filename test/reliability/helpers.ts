// Shared by the reliability tests (issue 9): fault injection into the model, secret scanning, percentiles.
import { AsyncLocalStorage } from 'node:async_hooks';
import { expect } from 'vitest';
import type { MiniGPT } from '../../src/inference/model.js';

/** A grounded answer with one box, as the adapters' own tests force it (so an annotated image is drawn). */
export const FORCED = '<p>red square</p> {<20><20><70><70>} on a grey background';
export const FORCED_DISCORD = '**red square** on a grey background';

interface AnswerScope {
  prompt: string;
  steps: number;
}
const scope = new AsyncLocalStorage<AnswerScope>();

/**
 * Makes one answer's decoding fail mid-way (the inference failing while it runs), wherever the decoding steps
 * go: `when(prompt, step)` sees the prompt of the answer that is stepping and its step number (1-based) and
 * returns true to throw. The answer is known through AsyncLocalStorage around each resumption of
 * `model.answer`'s generator, so concurrent (batched) answers are told apart. The per-answer step entry is
 * `model.engine.step` when the model batches decoding, else `model.decoder.step`. Returns a restore function.
 */
export function injectAnswerFault(
  model: MiniGPT,
  when: (prompt: string, step: number) => boolean,
  message = 'injected ONNX Runtime failure',
): { restore(): void; thrown: () => number } {
  const m = model as unknown as Record<string, any>;
  const originalAnswer = m.answer as (...args: unknown[]) => AsyncGenerator<unknown>;
  m.answer = function (this: unknown, prompt: string, ...rest: unknown[]) {
    const gen = originalAnswer.call(model, prompt, ...rest);
    const st: AnswerScope = { prompt, steps: 0 };
    return {
      next: (v?: unknown) => scope.run(st, () => gen.next(v)),
      return: (v?: unknown) => scope.run(st, () => gen.return(v)),
      throw: (e?: unknown) => scope.run(st, () => gen.throw(e)),
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  };
  const target = (m.engine && typeof m.engine.step === 'function' ? m.engine : m.decoder) as Record<string, any>;
  const originalStep = target.step as (...args: unknown[]) => Promise<unknown>;
  let thrown = 0;
  target.step = function (this: unknown, ...args: unknown[]) {
    const st = scope.getStore();
    if (st) {
      st.steps++;
      if (when(st.prompt, st.steps)) {
        thrown++;
        return Promise.reject(new Error(`${message} (step ${st.steps})`));
      }
    }
    return originalStep.apply(this, args);
  };
  return {
    restore() {
      m.answer = originalAnswer;
      target.step = originalStep;
    },
    thrown: () => thrown,
  };
}

/**
 * Makes the decoder's ONNX session itself throw on its next `times` runs once armed: whatever is being run
 * then (one answer's step, or a batched step of several) fails, as a real session failure would.
 */
export function injectSessionFault(
  model: MiniGPT,
  message = 'injected session.run failure',
): { arm(times?: number, skip?: number): void; restore(): void; thrown: () => number } {
  const session = (model.decoder as unknown as { session: { run: (...args: unknown[]) => Promise<unknown> } }).session;
  const original = session.run;
  let armed = 0;
  let skipping = 0;
  let thrown = 0;
  session.run = function (this: unknown, ...args: unknown[]) {
    if (armed > 0 && skipping-- <= 0) {
      armed--;
      thrown++;
      return Promise.reject(new Error(message));
    }
    return original.apply(this, args);
  };
  return {
    /** the next `times` runs fail, after `skip` runs that succeed */
    arm: (times = 1, skip = 0) => {
      armed = times;
      skipping = skip;
    },
    restore: () => void (session.run = original),
    thrown: () => thrown,
  };
}

/** Asserts that none of `secrets` (nor common token shapes) appears in any of `texts`. */
export function expectNoSecrets(texts: readonly string[], secrets: readonly string[], what = 'the logs'): void {
  const all = texts.join('\n');
  for (const s of secrets) {
    if (!s) continue;
    expect(all.includes(s), `${what} contain a secret (${s.slice(0, 6)}…)`).toBe(false);
  }
  expect(all, `${what} contain a Slack token`).not.toMatch(/xox[bpa]-\d|xapp-\d/);
  expect(all, `${what} contain a signed URL query`).not.toMatch(/[?&](ex|is|hm|sig|signature|token|t)=[0-9a-f]{6,}/i);
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls until `cond` holds. */
export async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
