// An OpenAI chat completion request -> what the conversation manager takes: the messages array becomes the
// stateless conversation (earlier exchanges, the image, the question answered), the sampling parameters
// become generation settings. Anything the server cannot do is refused with a 400 naming the parameter,
// never silently ignored, except what is harmless to leave out (system messages, logprobs: false, ...).
import type { PriorTurn, RequestGeneration } from '../../src/conversation/index.js';
import { badRequest } from './errors.js';
import { LIMITS } from '../../src/conversation/limits.js';

/** Where the image of the conversation comes from. */
export type ImageSource = { kind: 'data'; mime: string; base64: string } | { kind: 'url'; url: string };

export interface ChatRequest {
  model: string;
  stream: boolean;
  /** `stream_options.include_usage`: a last chunk with `usage` */
  includeUsage: boolean;
  /** the last user message: the one answered */
  text: string;
  /** earlier exchanges since the image (or since the start, without one) */
  history: PriorTurn[];
  image?: ImageSource;
  generation: RequestGeneration;
  /** `user`: recorded with the turn */
  user?: string;
  /** extension `minigpt.annotated_image`: return the image with the answer's boxes drawn */
  annotatedImage: boolean;
  /** `n`: how many answers (choices) to give */
  choices: number;
}

export const MAX_MESSAGES = 512;
/** longest text of one message; the model's context is far shorter, this only bounds the work per request */
export const MAX_MESSAGE_CHARS = 64 * 1024;
/** OpenAI's own limit */
export const MAX_STOP = 4;

interface Message {
  role: 'user' | 'assistant';
  text: string;
  images: ImageSource[];
}

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const present = (v: unknown) => v !== undefined && v !== null;

/**
 * Validates a parsed JSON body. `vocabSize`: the model's, where this process knows it (a front end without the
 * package does not): a logit_bias id at or above it is refused.
 */
export function parseChatRequest(body: unknown, vocabSize?: number): ChatRequest {
  if (!isObject(body)) throw badRequest('The request body must be a JSON object.');
  const model = body.model;
  if (typeof model !== 'string' || model.length === 0)
    throw badRequest('you must provide a model parameter', 'model', 'missing_required_parameter');
  refuseUnsupported(body);

  const messages = parseMessages(body.messages);
  const { text, history, image } = conversationOf(messages);

  const generation: RequestGeneration = {};
  const temperature = numberParam(body, 'temperature', 0, 2);
  if (temperature !== undefined) generation.temperature = temperature;
  const topP = numberParam(body, 'top_p', 0, 1);
  // top_p 0 keeps only the most likely token: greedy decoding.
  if (topP === 0) generation.temperature = 0;
  else if (topP !== undefined) generation.topP = topP;
  const maxTokens = integerParam(body, 'max_completion_tokens', 1) ?? integerParam(body, 'max_tokens', 1);
  if (maxTokens !== undefined) generation.maxNewTokens = maxTokens;
  const seed = integerParam(body, 'seed', Number.MIN_SAFE_INTEGER);
  if (seed !== undefined) generation.seed = seed;
  for (const [param, key] of [
    ['frequency_penalty', 'frequencyPenalty'],
    ['presence_penalty', 'presencePenalty'],
  ] as const) {
    const v = numberParam(body, param, -2, 2);
    if (v) generation[key] = v;
  }
  const bias = logitBiasParam(body.logit_bias, vocabSize);
  if (bias) generation.logitBias = bias;
  const logprobs = body.logprobs;
  if (present(logprobs) && typeof logprobs !== 'boolean') throw badRequest('logprobs must be a boolean', 'logprobs');
  const top = integerParam(body, 'top_logprobs', 0, LIMITS.topLogprobs);
  if (top !== undefined && logprobs !== true) throw badRequest('top_logprobs needs logprobs: true', 'top_logprobs');
  if (logprobs === true) generation.logprobs = top ?? 0;
  const stop = stopParam(body.stop);
  if (stop.length > 0) generation.stop = stop;

  const ext = body.minigpt;
  if (present(ext) && !isObject(ext)) throw badRequest('minigpt must be an object', 'minigpt');
  const extension = isObject(ext) ? ext : {};
  const beams = integerParam(extension, 'num_beams', 1, LIMITS.beams, 'minigpt.num_beams');
  if (beams !== undefined) generation.numBeams = beams;
  const beamSearch = (beams ?? 1) > 1;
  if (beamSearch && generation.logprobs !== undefined)
    throw badRequest('logprobs are not reported with beam search (minigpt.num_beams > 1)', 'logprobs', 'unsupported_value');
  const choices = integerParam(body, 'n', 1, LIMITS.choices) ?? 1;
  // (beam search gives its one best answer: n of them would be the same)
  if (beamSearch && choices > 1)
    throw badRequest('n > 1 is not supported with beam search (minigpt.num_beams > 1): it gives one best answer', 'n', 'unsupported_value');
  const penalty = numberParam(extension, 'repetition_penalty', 0.01, 10, 'minigpt.repetition_penalty');
  if (penalty !== undefined) generation.repetitionPenalty = penalty;
  const annotated = extension.annotated_image;
  if (present(annotated) && typeof annotated !== 'boolean')
    throw badRequest('minigpt.annotated_image must be a boolean', 'minigpt.annotated_image');

  const stream = body.stream;
  if (present(stream) && typeof stream !== 'boolean') throw badRequest('stream must be a boolean', 'stream');
  const options = body.stream_options;
  if (present(options) && !isObject(options)) throw badRequest('stream_options must be an object', 'stream_options');
  if (present(options) && stream !== true) throw badRequest('stream_options is only allowed when stream is true', 'stream_options');
  const user = body.user;
  if (present(user) && typeof user !== 'string') throw badRequest('user must be a string', 'user');

  return {
    model,
    stream: stream === true,
    includeUsage: isObject(options) && options.include_usage === true,
    text,
    history,
    ...(image ? { image } : {}),
    generation,
    ...(typeof user === 'string' && user ? { user: user.slice(0, 200) } : {}),
    annotatedImage: annotated === true,
    choices,
  };
}

/** Parameters of the OpenAI API that this server does not implement: refused unless they ask for nothing. */
function refuseUnsupported(body: Json): void {
  for (const p of ['tools', 'functions'] as const) {
    if (Array.isArray(body[p]) && (body[p] as unknown[]).length > 0)
      throw badRequest(`${p} are not supported: MiniGPT has no tool calling`, p, 'unsupported_parameter');
  }
  const format = body.response_format;
  if (present(format) && !(isObject(format) && format.type === 'text')) {
    throw badRequest('response_format: only {"type": "text"} is supported', 'response_format', 'unsupported_value');
  }
  const modalities = body.modalities;
  if (Array.isArray(modalities) && modalities.some((m) => m !== 'text'))
    throw badRequest('only text output is supported', 'modalities', 'unsupported_value');
}

function numberParam(obj: Json, name: string, min: number, max: number, shown = name): number | undefined {
  const v = obj[name];
  if (!present(v)) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max)
    throw badRequest(`${shown} must be a number from ${min} to ${max}`, shown);
  return v;
}

function integerParam(obj: Json, name: string, min: number, max = Number.MAX_SAFE_INTEGER, shown = name): number | undefined {
  const v = obj[name];
  if (!present(v)) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw badRequest(
      max === Number.MAX_SAFE_INTEGER
        ? `${shown} must be an integer of at least ${min}`
        : `${shown} must be an integer from ${min} to ${max}`,
      shown,
    );
  }
  return v;
}

/** OpenAI's logit_bias: {"<token id>": bias from -100 to 100}; undefined when absent or empty. */
function logitBiasParam(v: unknown, vocabSize: number | undefined): Record<string, number> | undefined {
  if (!present(v)) return undefined;
  if (!isObject(v)) throw badRequest('logit_bias must be an object mapping token ids to biases', 'logit_bias');
  const entries = Object.entries(v);
  if (entries.length > LIMITS.logitBias)
    throw badRequest(`logit_bias takes at most ${LIMITS.logitBias} token ids, got ${entries.length}`, 'logit_bias');
  if (entries.length === 0) return undefined;
  const out: Record<string, number> = {};
  for (const [key, bias] of entries) {
    const id = /^\d{1,9}$/.test(key) ? Number(key) : Number.NaN;
    if (!Number.isInteger(id) || (vocabSize !== undefined && id >= vocabSize)) {
      throw badRequest(
        `logit_bias: ${JSON.stringify(key)} is not a token id of this model${vocabSize !== undefined ? ` (0 to ${vocabSize - 1})` : ''}`,
        'logit_bias',
      );
    }
    if (typeof bias !== 'number' || !Number.isFinite(bias) || bias < -100 || bias > 100)
      throw badRequest(`logit_bias: the bias of token ${key} must be a number from -100 to 100`, 'logit_bias');
    out[String(id)] = bias;
  }
  return out;
}

function stopParam(v: unknown): string[] {
  if (!present(v)) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.some((s) => typeof s !== 'string'))
    throw badRequest('stop must be a string or an array of strings', 'stop');
  if (list.length > MAX_STOP) throw badRequest(`stop takes at most ${MAX_STOP} sequences`, 'stop');
  return (list as string[]).filter((s) => s.length > 0);
}

function parseMessages(v: unknown): Message[] {
  if (!Array.isArray(v) || v.length === 0) throw badRequest('messages must be a non-empty array', 'messages');
  if (v.length > MAX_MESSAGES) throw badRequest(`messages has ${v.length} entries; at most ${MAX_MESSAGES} are accepted`, 'messages');
  const out: Message[] = [];
  v.forEach((m, i) => {
    const param = `messages[${i}]`;
    if (!isObject(m)) throw badRequest(`${param} must be an object`, param);
    const role = m.role;
    // MiniGPT's prompt templates carry their own system text; a client's system message has no place in them.
    if (role === 'system' || role === 'developer') return;
    if (role === 'tool' || role === 'function')
      throw badRequest(`${param}: role "${role}" is not supported: MiniGPT has no tool calling`, `${param}.role`);
    if (role !== 'user' && role !== 'assistant')
      throw badRequest(`${param}.role must be one of system, developer, user, assistant`, `${param}.role`);
    if (role === 'assistant' && Array.isArray(m.tool_calls) && m.tool_calls.length > 0) {
      throw badRequest(`${param}: tool calls are not supported`, `${param}.tool_calls`);
    }
    const { text, images } = parseContent(m.content, role, `${param}.content`);
    out.push({ role, text, images });
  });
  return out;
}

function parseContent(content: unknown, role: 'user' | 'assistant', param: string): { text: string; images: ImageSource[] } {
  if (content === null || content === undefined) {
    if (role === 'assistant') return { text: '', images: [] };
    throw badRequest(`${param} is required`, param);
  }
  if (typeof content === 'string') return { text: checkLength(content, param), images: [] };
  if (!Array.isArray(content)) throw badRequest(`${param} must be a string or an array of content parts`, param);
  const texts: string[] = [];
  const images: ImageSource[] = [];
  content.forEach((part, j) => {
    const p = `${param}[${j}]`;
    if (!isObject(part)) throw badRequest(`${p} must be an object`, p);
    if (part.type === 'text' || (role === 'assistant' && part.type === 'refusal')) {
      const t = part.type === 'text' ? part.text : part.refusal;
      if (typeof t !== 'string') throw badRequest(`${p}.${String(part.type)} must be a string`, p);
      texts.push(t);
    } else if (part.type === 'image_url' && role === 'user') {
      images.push(imageSource(part.image_url, `${p}.image_url`));
    } else if (part.type === 'image_url') {
      throw badRequest(`${p}: only user messages may carry images`, p);
    } else {
      throw badRequest(`${p}: content parts of type ${JSON.stringify(part.type)} are not supported (use text and image_url)`, `${p}.type`);
    }
  });
  return { text: checkLength(texts.join('\n'), param), images };
}

function checkLength(text: string, param: string): string {
  if (text.length > MAX_MESSAGE_CHARS)
    throw badRequest(`${param} is too long (${text.length} characters; at most ${MAX_MESSAGE_CHARS})`, param, 'string_above_max_length');
  return text;
}

const DATA_URL_RE = /^data:([\w.+-]+\/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,/i;

function imageSource(v: unknown, param: string): ImageSource {
  const url = isObject(v) ? v.url : undefined;
  if (typeof url !== 'string' || url.length === 0) throw badRequest(`${param}.url must be a string`, `${param}.url`);
  const m = DATA_URL_RE.exec(url.slice(0, 256));
  if (m) {
    const mime = (m[1] ?? '').toLowerCase();
    if (mime && !mime.startsWith('image/') && mime !== 'application/octet-stream') {
      throw badRequest(`${param}.url: a data URL of type ${mime} is not an image`, `${param}.url`, 'invalid_image');
    }
    return { kind: 'data', mime, base64: url.slice(m[0].length) };
  }
  if (/^data:/i.test(url))
    throw badRequest(`${param}.url: only base64 data URLs are supported (data:image/png;base64,...)`, `${param}.url`, 'invalid_image_url');
  if (/^https?:\/\//i.test(url)) return { kind: 'url', url };
  throw badRequest(`${param}.url must be a data: URL or an http(s) URL`, `${param}.url`, 'invalid_image_url');
}

/**
 * The messages as MiniGPT's conversation: consecutive messages of one role merged, leading assistant
 * messages (a greeting) dropped, the last message the user's question. MiniGPT holds one image per
 * conversation in its first turn, so the conversation starts at the latest user message with an image, as a
 * new image in a chat thread starts it afresh.
 */
function conversationOf(messages: Message[]): { text: string; history: PriorTurn[]; image?: ImageSource } {
  const merged: Message[] = [];
  for (const m of messages) {
    const last = merged[merged.length - 1];
    if (!last && m.role === 'assistant') continue;
    if (last && last.role === m.role) {
      last.text = [last.text, m.text].filter(Boolean).join('\n');
      last.images.push(...m.images);
    } else {
      merged.push({ role: m.role, text: m.text, images: [...m.images] });
    }
  }
  const final = merged[merged.length - 1];
  if (final?.role !== 'user') throw badRequest('the last message must be a user message: it is the one answered', 'messages');
  let start = 0;
  for (let i = merged.length - 1; i >= 0; i--) {
    if (merged[i].images.length > 0) {
      start = i;
      break;
    }
  }
  const first = merged[start];
  if (first.images.length > 1) {
    throw badRequest(
      'MiniGPT takes one image per conversation turn: send one image_url part (a new image starts the conversation afresh)',
      'messages',
      'too_many_images',
    );
  }
  if (!final.text.trim() && first.images.length === 0) throw badRequest('the last user message has no text', 'messages');
  const history: PriorTurn[] = [];
  for (let i = start; i + 1 < merged.length - 1; i += 2) history.push({ user: merged[i].text, assistant: merged[i + 1].text });
  return { text: final.text, history, ...(first.images.length === 1 ? { image: first.images[0] } : {}) };
}
