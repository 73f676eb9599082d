// What a user waits for (issue 7: under a second): a grounding answer about a demo scene, from the image's
// bytes to the last token, with the package's own stop words (so a trained model stops by itself).
import { imageData, renderScene } from '../../../demo-data/index.js';
import type { BenchContext } from './context.js';

const GROUNDING_PROMPT = '[grounding] describe this image in detail';
/** The web demo's first example scene (adapters/web/examples.ts: seed 4242, used by no training or evaluation split). */
const DEMO_SCENE = { seed: 4242, index: 0 };

export interface GroundingSamples {
  ms: number[];
  /** the last run's answer */
  text: string;
  tokens: number;
}

export async function groundingAnswer(b: BenchContext): Promise<GroundingSamples> {
  const { model, profile: p, say } = b;
  say('grounding answer about a demo scene');
  const sceneBytes = await renderScene(imageData({ seed: DEMO_SCENE.seed, count: 1 }, DEMO_SCENE.index).scene, 'png');
  const out: GroundingSamples = { ms: [], text: '', tokens: 0 };
  for (let i = 0; i < p.warmup + p.reps; i++) {
    const t0 = performance.now();
    const img = await model.encodeImage(sceneBytes);
    for await (const ev of model.answer(b.ask([{ user: GROUNDING_PROMPT }]), [img.embeds], { temperature: 0, maxNewTokens: 300 })) {
      if (ev.type === 'done') [out.text, out.tokens] = [ev.text, ev.tokenIds.length];
    }
    if (i >= p.warmup) out.ms.push(performance.now() - t0);
  }
  return out;
}
