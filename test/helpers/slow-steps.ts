// A model too small to stop mid-answer by hand, slowed: every decoding step waits a while first, so that a test
// can press a Stop button while the answer is being written.
import type { MiniGPT } from '../../src/inference/model.js';

export interface SlowSteps {
  /** decoding steps run so far */
  steps(): number;
  restore(): void;
}

export function slowSteps(model: MiniGPT, delayMs: number): SlowSteps {
  const m = model as unknown as Record<string, any>;
  // batched decoding goes through the engine; a model without one steps its decoder
  const target = (m.engine && typeof m.engine.step === 'function' ? m.engine : m.decoder) as Record<string, any>;
  const original = target.step as (...args: unknown[]) => Promise<unknown>;
  let steps = 0;
  target.step = async function (this: unknown, ...args: unknown[]) {
    steps++;
    await new Promise((r) => setTimeout(r, delayMs));
    return original.apply(this, args);
  };
  return { steps: () => steps, restore: () => (target.step = original) };
}
