// Each kind of model work run once on made-up input before the first request, so that the first user does not pay
// for what a provider does on first use. WebGPU compiles a shader program the first time each is dispatched: on
// Mesa's software driver the demo package's first image + answer took 362 ms to first token against 230 ms for the
// next (measured by hand: three rounds of encodeImage + an 8-token greedy answer in one process); on the CPU
// provider the same with the 7B-shaped int4 package was 1363 against 1297 ms, not worth a warm-up that costs a
// whole image and prefill (~18 s at full size), hence `auto`: GPU providers only.
import { conversationPrompt } from './prompt.js';
import { argmax } from './generation/index.js';
import type { KvCache } from './kv-cache.js';
import type { MiniGPT } from './model.js';

export type WarmUpChoice = 'auto' | boolean;

export interface WarmUpTimings {
  /** the vision graph on one image of the package's size */
  visionMs: number;
  /** one answer: the prompt's prefill and a few decoding steps */
  answerMs: number;
  /** the engine's widest batch: as many prefills, then two steps of them all; null when it takes one at a time */
  batchMs: number | null;
}

/** Whether `choice` warms up a model running on `provider` (`auto`: off the CPU only). */
export function shouldWarmUp(choice: WarmUpChoice, provider: string): boolean {
  return choice === 'auto' ? provider !== 'cpu' : choice;
}

/**
 * Runs the model's image, prompt and decoding paths once through its engine (so it queues behind nothing and ahead
 * of everything): an image, an answer of 4 tokens, and `maxBatch` prompts decoded together for two steps. Leaves
 * nothing behind: no kept context, every KV cache freed.
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
  if (rows > 1) await batchedSteps(model, prompt, image, rows);
  const t3 = performance.now();
  return { visionMs: t1 - t0, answerMs: t2 - t1, batchMs: rows > 1 ? t3 - t2 : null };
}

/**
 * `rows` prefills, then two decoding steps of all of them in one run: the batch at its widest. (As answers at once
 * they would not reliably meet: the engine lets a step run between prefills that take long, so the first answers
 * could be done before the last one joined.)
 */
async function batchedSteps(model: MiniGPT, prompt: string, image: Float32Array, rows: number): Promise<void> {
  const context = await model.context(prompt, [image]);
  // every state made, disposed once at the end whatever a step returned (the same state or a new one)
  const made = new Set<KvCache>();
  try {
    let states: KvCache[] = [];
    let token = 0;
    for (let i = 0; i < rows; i++) {
      const pre = await model.engine.exclusive(() => model.prefill(context));
      made.add(pre.state);
      states.push(pre.state);
      token = argmax(pre.logits);
    }
    for (let step = 0; step < 2; step++) {
      const next = await model.engine.step(
        states,
        states.map(() => token),
      );
      for (const s of next.states) made.add(s);
      states = next.states;
    }
  } finally {
    for (const s of made) s.dispose();
  }
}
