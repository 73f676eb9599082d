// `minigpt ask`: one answer about one image, streamed to the terminal or printed as JSON.
import { MiniGPT } from '../inference/model.js';
import { conversationPrompt } from '../inference/prompt.js';
import type { ProviderChoice } from '../inference/providers.js';
import type { GenerationOptions } from '../inference/generation/index.js';

export interface AskRequest {
  modelDir: string;
  image: Uint8Array;
  prompt: string;
  json: boolean;
  provider: ProviderChoice;
  threads?: number;
  generation: Partial<GenerationOptions>;
  signal?: AbortSignal;
  log: (line: string) => void;
  write: (text: string) => void;
}

export interface AskResult {
  text: string;
  token_ids: number[];
  finish_reason: string;
  prompt: string;
  image: { width: number; height: number };
  provider: string;
  timings: {
    load_ms: number;
    preprocess_ms: number;
    vision_ms: number;
    prefill_ms: number;
    first_token_ms: number;
    decode_ms: number;
    total_ms: number;
    prompt_tokens: number;
    new_tokens: number;
    decode_tokens_per_s: number;
  };
}

export async function runAsk(req: AskRequest): Promise<AskResult> {
  const t0 = performance.now();
  const model = await MiniGPT.load(req.modelDir, { provider: req.provider, threads: req.threads, log: req.log });
  const loadMs = performance.now() - t0;
  try {
    const img = await model.encodeImage(req.image);
    const prompt = conversationPrompt(model.meta.prompt, [{ user: req.prompt }]);
    let text = '';
    let tokenIds: number[] = [];
    let finish = 'stop';
    let timings: AskResult['timings'] | null = null;
    for await (const ev of model.answer(prompt, [img.embeds], req.generation, req.signal)) {
      if (ev.type === 'text') {
        if (!req.json) req.write(ev.text);
      } else if (ev.type === 'done') {
        text = ev.text;
        tokenIds = ev.tokenIds;
        finish = ev.finishReason;
      } else {
        const t = ev.timings;
        const decodeTokens = Math.max(0, t.newTokens - 1);
        timings = {
          load_ms: loadMs,
          preprocess_ms: img.preprocessMs,
          vision_ms: img.visionMs,
          prefill_ms: t.prefillMs,
          first_token_ms: img.preprocessMs + img.visionMs + t.firstTokenMs,
          decode_ms: t.decodeMs,
          total_ms: img.preprocessMs + img.visionMs + t.totalMs,
          prompt_tokens: t.promptTokens,
          new_tokens: t.newTokens,
          decode_tokens_per_s: t.decodeMs > 0 ? (decodeTokens * 1000) / t.decodeMs : 0,
        };
      }
    }
    const result: AskResult = {
      text,
      token_ids: tokenIds,
      finish_reason: finish,
      prompt,
      image: { width: img.width, height: img.height },
      provider: model.provider,
      timings: timings!,
    };
    if (req.json) req.write(`${JSON.stringify(result, null, 2)}\n`);
    else req.write('\n');
    return result;
  } finally {
    await model.close();
  }
}
