// One chat completion through the conversation manager, and the OpenAI response objects made from it:
// `chat.completion` for a plain request, `chat.completion.chunk`s for a streamed one. The `minigpt` field is
// this server's extension: the task, the boxes in pixels, the annotated image when asked, timings.
import type { AnswerLogprob, ConversationRequest, LogprobToken, TaskTag } from '../../src/conversation/index.js';
import { gridToPixels, type Entity } from '../../src/grounding/parse.js';
import { onAnswerEvents, type AnswerEventOf } from '../shared/answer-events.js';
import type { ConversationPort } from '../shared/port.js';
import { ApiError, managerError } from './errors.js';

/** What the API needs from the conversation manager. */
export type ApiConversationManager = Pick<ConversationPort, 'handle'>;

export interface Answer {
  text: string;
  finishReason: 'stop' | 'length';
  entities: Entity[];
  task: TaskTag | 'chat';
  image?: { width: number; height: number };
  annotated?: { data: Buffer; mime: string };
  timings: Record<string, number>;
  /** the answer's tokens, when the request asked for them */
  logprobs?: AnswerLogprob[];
}

/**
 * Runs the request; `onText` gets each streamed piece (awaited, so a slow client holds the next piece
 * back, not the model), with its tokens' log-probabilities when asked for. Error events become ApiErrors.
 */
export async function runCompletion(
  manager: ApiConversationManager,
  request: ConversationRequest,
  onText?: (text: string, logprobs: AnswerLogprob[] | undefined) => void | Promise<void>,
): Promise<Answer> {
  let final: AnswerEventOf<'final'> | undefined;
  let annotated: Answer['annotated'];
  let timings: Record<string, number> = {};
  const asked = request.generation?.logprobs !== undefined;
  let logprobs: AnswerLogprob[] = [];
  await onAnswerEvents(manager.handle(request), {
    text: (ev) => {
      if (asked && ev.logprobs) logprobs.push(...ev.logprobs);
      return onText?.(ev.text, asked ? (ev.logprobs ?? []) : undefined);
    },
    restart: () => {
      logprobs = [];
      // Streamed text cannot be taken back: the client asks again (a plain request just gets the final text).
      if (onText)
        throw new ApiError(
          503,
          'server_error',
          'answer_interrupted',
          'The answer was interrupted (its worker stopped) and came out differently on another one; please send the request again.',
        );
    },
    final: (ev) => {
      final = ev;
    },
    image: (ev) => {
      annotated = { data: ev.data, mime: ev.mime };
    },
    timings: (ev) => {
      timings = ev.timings;
    },
    error: (ev) => {
      throw managerError(ev.code, ev.message);
    },
  });
  if (!final) throw new ApiError(500, 'server_error', 'internal_error', 'the answer ended without a result');
  return {
    text: final.text,
    finishReason: final.finishReason === 'length' ? 'length' : 'stop',
    entities: final.entities,
    task: final.task ?? 'chat',
    ...(final.image ? { image: final.image } : {}),
    ...(annotated ? { annotated } : {}),
    timings,
    ...(asked ? { logprobs } : {}),
  };
}

/** A token in OpenAI's shape. */
function openAiToken(t: LogprobToken) {
  return { token: t.token, logprob: t.logprob, bytes: t.bytes };
}

/** `choices[].logprobs`: the tokens with their alternatives, or null when not asked for. */
export function logprobsObject(logprobs: readonly AnswerLogprob[] | undefined) {
  if (!logprobs) return null;
  return { content: logprobs.map((t) => ({ ...openAiToken(t), top_logprobs: t.top.map(openAiToken) })), refusal: null };
}

/** A box of the answer in pixels of the request's image (after EXIF orientation), with the model's grid box. */
export interface ApiBox {
  phrase: string | null;
  left: number;
  top: number;
  width: number;
  height: number;
  /** the box as the model wrote it, on its 0..100 grid: [x1, y1, x2, y2] */
  grid: [number, number, number, number];
}

export interface MinigptExtension {
  task: TaskTag | 'chat';
  image: { width: number; height: number } | null;
  boxes: ApiBox[];
  /** `data:image/png;base64,...`, when the request asked for it (`minigpt.annotated_image`) and there are boxes */
  annotated_image?: string;
  timings: { queue_ms: number; vision_ms: number; prefill_ms: number; first_token_ms: number; total_ms: number; image_cached: boolean };
}

export function extension(a: Answer): MinigptExtension {
  const boxes: ApiBox[] = [];
  if (a.image) {
    for (const e of a.entities) {
      for (const b of e.boxes)
        boxes.push({ phrase: e.phrase, ...gridToPixels(b, a.image.width, a.image.height), grid: [b.x1, b.y1, b.x2, b.y2] });
    }
  }
  const ms = (k: string) => Math.round((a.timings[k] ?? 0) * 10) / 10;
  return {
    task: a.task,
    image: a.image ?? null,
    boxes,
    ...(a.annotated ? { annotated_image: `data:${a.annotated.mime};base64,${a.annotated.data.toString('base64')}` } : {}),
    timings: {
      queue_ms: ms('queueMs'),
      vision_ms: ms('visionMs'),
      prefill_ms: ms('prefillMs'),
      first_token_ms: ms('firstTokenMs'),
      total_ms: ms('totalMs'),
      image_cached: a.timings.imageCached === 1,
    },
  };
}

/**
 * Token counts: the prompt counts the image's embedding rows (once, however many choices); the completion, every
 * choice's tokens; cached_tokens were reused from an earlier request.
 */
export function usage(answers: readonly Answer[]) {
  const prompt = answers[0]?.timings.promptTokens ?? 0;
  const completion = answers.reduce((sum, a) => sum + (a.timings.newTokens ?? 0), 0);
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: answers[0]?.timings.reusedTokens ?? 0 },
  };
}

export interface CompletionIds {
  id: string;
  created: number;
  model: string;
}

/**
 * The response to a plain request: one choice per answer. `minigpt` is the first answer's; with several choices,
 * each carries its own too (its boxes, timings).
 */
export function completionObject(ids: CompletionIds, answers: readonly Answer[]) {
  return {
    id: ids.id,
    object: 'chat.completion' as const,
    created: ids.created,
    model: ids.model,
    choices: answers.map((a, index) => ({
      index,
      message: { role: 'assistant' as const, content: a.text, refusal: null },
      logprobs: logprobsObject(a.logprobs),
      finish_reason: a.finishReason,
      ...(answers.length > 1 ? { minigpt: extension(a) } : {}),
    })),
    usage: usage(answers),
    system_fingerprint: null,
    minigpt: extension(answers[0]),
  };
}

/** What every chunk of a stream starts with. */
function chunkHead(ids: CompletionIds) {
  return {
    id: ids.id,
    object: 'chat.completion.chunk' as const,
    created: ids.created,
    model: ids.model,
    system_fingerprint: null,
  };
}

/** A chunk of choice `index`: a piece (`delta`) with its tokens, or its end (`finishReason`, `extra`). */
export function chunkObject(
  ids: CompletionIds,
  index: number,
  delta: { role?: 'assistant'; content?: string },
  finishReason: 'stop' | 'length' | null = null,
  extra: object = {},
  logprobs?: readonly AnswerLogprob[],
) {
  return {
    ...chunkHead(ids),
    choices: [{ index, delta, logprobs: logprobsObject(logprobs), finish_reason: finishReason }],
    ...extra,
  };
}

/** The last chunk with `stream_options.include_usage`: no choices, the usage of every choice. */
export function usageChunk(ids: CompletionIds, answers: readonly Answer[]) {
  return {
    ...chunkHead(ids),
    choices: [],
    usage: usage(answers),
  };
}
