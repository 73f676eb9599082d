// Each kind of model work run once on made-up input before the first request, so that the first user does not pay
// for what a provider does on first use. WebGPU compiles a shader program the first time each is dispatched: on
// Mesa's software driver the demo package's first image + answer took 362 ms to first token against 230 ms for the
// next (measured by hand: three rounds of encodeImage + an 8-token greedy answer in one process); on the CPU
// provider the same with the 7B-shaped int4 package was 1363 against 1297 ms, not worth a warm-up that costs a
// whole image and prefill (~18 s at full size), hence `auto`: GPU providers only.
import { conversationPrompt } from './prompt.js';
import type { MiniGPT } from './model.js';

export type WarmUpChoice = 'auto' | boolean;

export interface WarmUpTimings {
  /** the vision graph on one image of the package's size */
  visionMs: number;
  /** one answer: the prompt's prefill and a few decoding steps */
  answerMs: number;
  /** the engine's most answers at once (prefills, then their batched steps); null when it takes one at a time */
  batchMs: number | null;
}

/** Whether `choice` warms up a model running on `provider` (`auto`: off the CPU only). */
export function shouldWarmUp(choice: WarmUpChoice, provider: string): boolean {
  return choice === 'auto' ? provider !== 'cpu' : choice;
}

/**
 * Runs the model's image, prompt and decoding paths once through its engine (so it queues behind nothing and ahead
 * of everything) and leaves nothing behind: no kept context, every KV cache freed.
 */
export async function warmUp(model: MiniGPT): Promise<WarmUpTimings> {
  const size = model.meta.vision.imageSize;
  const t0 = performance.now();
  // (zeros: the normalised pixel values of an image in the mean colour)
  const image = await model.engine.exclusive(() => model.vision.encode(new Float32Array(3 * size * size)));
  const t1 = performance.now();
  const prompt = conversationPrompt(model.meta.prompt, [{ user: 'describe this image' }]);
  // greedy and without stop conditions, so that every answer takes all its steps
  const answer = async (steps: number) => {
    for await (const _ of model.answer(prompt, [image], { temperature: 0, maxNewTokens: steps, stopIds: [], stopStrings: [] })) {
      // drained: only the work matters
    }
  };
  await answer(4);
  const t2 = performance.now();
  const rows = model.engine.maxBatch;
  if (rows > 1) await Promise.all(Array.from({ length: rows }, () => answer(3)));
  const t3 = performance.now();
  return { visionMs: t1 - t0, answerMs: t2 - t1, batchMs: rows > 1 ? t3 - t2 : null };
}
