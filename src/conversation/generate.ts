// One turn's model run: the answer streamed as it decodes, from the KV cache of the conversation's last turn
// where the prompts agree, and this turn's cache handed back to be kept (src/inference/model.ts answer()).
import type { MiniGPT, Timings } from '../inference/model.js';
import type { CachedContext, SharedContexts } from '../inference/kv-reuse.js';
import type { GenerationOptions, TokenLogprob } from '../inference/generation/index.js';
import type { TextTokenizer } from '../inference/tokenizer.js';
import { CANCELLED, Failure } from './failure.js';
import type { Answer } from './turn.js';
import type { AnswerLogprob, LogprobToken } from './types.js';

/** The turn's image as the model takes it: embeddings and their cache keys (none for a text-only turn). */
export interface ModelImages {
  embeds: Float32Array[];
  keys: string[];
}

/** What the model gave for one turn; `context` (its KV cache, when asked for) is the caller's to keep or dispose. */
export interface Generated extends Answer {
  /** when the first text came (performance.now()), 0: none */
  firstText: number;
  timings: Timings | undefined;
  context: CachedContext | undefined;
}

export interface GenerateRun {
  prompt: string;
  images: ModelImages;
  gen: GenerationOptions;
  signal: AbortSignal;
  /** the last turn's cache, owned by the model from here */
  reuse: CachedContext | undefined;
  /** other conversations' kept contexts, to start from where one shares more of the prompt than `reuse` */
  shared?: SharedContexts;
  /** whether this turn's cache is wanted */
  keep: boolean;
  /** a streamed piece, with its tokens' log-probabilities when `gen.logprobs` asks for them */
  onText: (text: string, logprobs?: AnswerLogprob[]) => void;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** A token's id, text and bytes (bytes that are no UTF-8 text on their own, part of a character: `\xNN` each, as OpenAI). */
function logprobToken(id: number, logprob: number, tokenizer: Pick<TextTokenizer, 'tokenBytes'>): LogprobToken {
  const bytes = tokenizer.tokenBytes(id);
  let token: string;
  try {
    token = strictUtf8.decode(bytes);
  } catch {
    token = Array.from(bytes, (b) => `\\x${b.toString(16).padStart(2, '0')}`).join('');
  }
  return { id, token, bytes: Array.from(bytes), logprob };
}

/** The model's token log-probabilities with the tokens' text. */
export function answerLogprobs(entries: readonly TokenLogprob[], tokenizer: Pick<TextTokenizer, 'tokenBytes'>): AnswerLogprob[] {
  return entries.map((e) => ({
    ...logprobToken(e.id, e.logprob, tokenizer),
    top: e.top.map((t) => logprobToken(t.id, t.logprob, tokenizer)),
  }));
}

/** The answer; a cancelled or unfinished one is `cancelled` (its cache, if any, disposed). */
export async function generate(model: Pick<MiniGPT, 'answer' | 'tokenizer'>, run: GenerateRun): Promise<Generated> {
  // Written by the model's callback, which control-flow analysis cannot see: a holder, not a narrowed `let`.
  const held: { context?: CachedContext } = {};
  let answer: Answer | undefined;
  let firstText = 0;
  let timings: Timings | undefined;
  try {
    const keep = run.keep ? (c: CachedContext) => (held.context = c) : undefined;
    for await (const ev of model.answer(run.prompt, run.images.embeds, run.gen, run.signal, {
      imageKeys: run.images.keys,
      reuse: run.reuse,
      shared: run.shared,
      keep,
    })) {
      if (ev.type === 'text') {
        if (!firstText) firstText = performance.now();
        run.onText(ev.text, ev.logprobs && answerLogprobs(ev.logprobs, model.tokenizer));
      } else if (ev.type === 'done') {
        answer = { text: ev.text, finishReason: ev.finishReason };
      } else {
        timings = ev.timings;
      }
    }
    if (!answer || answer.finishReason === 'aborted') throw new Failure('cancelled', CANCELLED);
  } catch (err) {
    held.context?.dispose();
    throw err;
  }
  return { ...answer, firstText, timings, context: held.context };
}
