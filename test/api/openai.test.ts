// The OpenAI-compatible API driven by the official `openai` SDK: the embedded demo model (models/demo) behind the
// real conversation manager, greedy answers compared with the same questions asked through a chat thread and
// through the model directly, streaming, grounding boxes, KV-cache reuse across stateless requests, errors, auth.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import OpenAI from 'openai';
import sharp from 'sharp';
import { MiniGPT } from '../../src/inference/model.js';
import { conversationPrompt } from '../../src/inference/prompt.js';
import { logSoftmax } from '../../src/inference/generation/index.js';
import { promptSegmentIds } from '../../src/inference/context.js';
import { ConversationManager, type AnswerEvent, type ConversationRequest, type RequestGeneration } from '../../src/conversation/index.js';
import { gridToPixels, parseGrounding } from '../../src/grounding/parse.js';
import { renderExamples, type Example } from '../../adapters/web/examples.js';
import { startApiServer, type ApiServer, type ApiServerOptions } from '../../adapters/api/server.js';
import { UserRateLimiter } from '../../adapters/shared/rate-limit.js';
import { slowSteps } from '../helpers/slow-steps.js';

const ROOT = join(import.meta.dirname, '..', '..');
const DEMO = join(ROOT, 'models', 'demo');
const GREEDY = { temperature: 0 } as const;

let model: MiniGPT;
let manager: ConversationManager;
let server: ApiServer;
let client: OpenAI;
let refer: Example;
let vqa: Example;
let png: Buffer;
let vqaPng: Buffer;
let caption: Example;
let captionPng: Buffer;
let dataUrl: string;

beforeAll(async () => {
  model = await MiniGPT.load(DEMO, { provider: 'cpu' });
  manager = new ConversationManager({ model, defaults: { maxNewTokens: 40 }, kvCacheBytes: 64 * 1024 * 1024 });
  server = await startApiServer({
    manager,
    port: 0,
    model: {
      id: 'minigpt-demo',
      created: 1_700_000_000,
      architecture: 'minigpt-v2',
      vocabSize: model.meta.llm.vocabSize,
    },
  });
  client = new OpenAI({ baseURL: server.url, apiKey: 'not-checked-on-loopback', maxRetries: 0 });
  const examples = await renderExamples();
  refer = examples.list.find((e) => e.task === 'refer')!;
  vqa = examples.list.find((e) => e.task === 'vqa')!;
  png = examples.png(refer.id)!;
  vqaPng = examples.png(vqa.id)!;
  caption = examples.list.find((e) => e.task === 'caption')!;
  captionPng = examples.png(caption.id)!;
  dataUrl = `data:image/png;base64,${png.toString('base64')}`;
}, 120_000);

afterAll(async () => {
  await server?.close();
  await manager?.close();
  await model?.close();
});

type Part = OpenAI.Chat.Completions.ChatCompletionContentPart;
const withImage = (text: string, url = dataUrl): Part[] => [
  { type: 'text', text },
  { type: 'image_url', image_url: { url } },
];

/** The same question through a chat thread of the conversation manager (what Discord, Slack and the web demo use). */
async function threadAnswers(
  turns: { text: string; image?: Uint8Array }[],
  generation: RequestGeneration = {},
): Promise<{ text: string; timings: Record<string, number> }[]> {
  const key = { platform: 'cli' as const, workspace: 'test', channel: 'api', thread: `t${Math.random()}` };
  const out: { text: string; timings: Record<string, number> }[] = [];
  for (const t of turns) {
    const req: ConversationRequest = { key, user: 'test', text: t.text, generation: { ...GREEDY, ...generation } };
    if (t.image) req.image = t.image;
    let text = '';
    let timings: Record<string, number> = {};
    for await (const ev of manager.handle(req) as AsyncIterable<AnswerEvent>) {
      if (ev.type === 'error') throw new Error(ev.message);
      if (ev.type === 'final') text = ev.text;
      if (ev.type === 'timings') timings = ev.timings;
    }
    out.push({ text, timings });
  }
  return out;
}

type Extension = {
  task: string;
  image: { width: number; height: number } | null;
  boxes: { phrase: string | null; left: number; top: number; width: number; height: number; grid: number[] }[];
  annotated_image?: string;
  timings: Record<string, number | boolean>;
};
const ext = (o: object) => (o as { minigpt: Extension }).minigpt;
/** Until the answered requests' KV caches are kept (after their responses end), so that the next request can find them. */
const cachesKept = () => manager.cachesKept();

async function expectApiError(
  p: Promise<unknown>,
  status: number,
  code: string,
  param?: string,
): Promise<InstanceType<typeof OpenAI.APIError>> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(OpenAI.APIError);
  const e = err as InstanceType<typeof OpenAI.APIError>;
  expect(e.status).toBe(status);
  expect(e.code).toBe(code);
  if (param !== undefined) expect(e.param).toBe(param);
  expect(e.message.length).toBeGreaterThan(10);
  return e;
}

describe('OpenAI API: models', () => {
  it('lists and retrieves the served package; an unknown id is a 404', async () => {
    const page = await client.models.list();
    expect(page.data.map((m) => [m.id, m.object, m.owned_by, m.created])).toEqual([
      ['minigpt-demo', 'model', 'minigpt-bot', 1_700_000_000],
    ]);
    expect((await client.models.retrieve('minigpt-demo')).id).toBe('minigpt-demo');
    const err = await expectApiError(client.models.retrieve('gpt-4o'), 404, 'model_not_found');
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
  });
});

describe('OpenAI API: chat completions', () => {
  it('answers a text-only chat with the language model alone, as the model does for the same prompt', async () => {
    const r = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages: [
        { role: 'system', content: 'ignored' },
        { role: 'user', content: 'what is the red shape?' },
      ],
      ...GREEDY,
      max_tokens: 12,
    });
    expect(r.object).toBe('chat.completion');
    expect(r.id).toMatch(/^chatcmpl-[0-9a-f]{24}$/);
    expect(r.model).toBe('minigpt-demo');
    expect(r.choices).toHaveLength(1);
    const prompt = conversationPrompt(model.meta.prompt, [{ user: 'what is the red shape?' }], { image: false });
    expect(prompt).not.toContain(model.meta.prompt.imageToken);
    let direct = '';
    let steps = 0;
    for await (const ev of model.answer(prompt, [], { ...GREEDY, maxNewTokens: 12 })) {
      if (ev.type === 'done') [direct, steps] = [ev.text, ev.tokenIds.length];
    }
    expect(r.choices[0].message).toMatchObject({ role: 'assistant', content: direct });
    const promptTokens = promptSegmentIds(prompt, model.meta.prompt.imageToken, 0, model.tokenizer)[0].length;
    expect(r.usage).toMatchObject({ prompt_tokens: promptTokens, completion_tokens: steps, total_tokens: promptTokens + steps });
    expect(['stop', 'length']).toContain(r.choices[0].finish_reason);
    expect(ext(r).image).toBeNull();
    expect(ext(r).boxes).toEqual([]);
  });

  it('answers an image question sent as a data URL exactly as a chat thread does', async () => {
    const r = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages: [{ role: 'user', content: withImage(vqa.prompt, `data:image/png;base64,${vqaPng.toString('base64')}`) }],
      ...GREEDY,
    });
    const [thread] = await threadAnswers([{ text: vqa.prompt, image: vqaPng }]);
    expect(r.choices[0].message.content).toBe(thread.text);
    expect(r.choices[0].message.content!.length).toBeGreaterThan(0);
    expect(r.usage!.prompt_tokens).toBe(thread.timings.promptTokens);
    expect(r.usage!.completion_tokens).toBe(thread.timings.newTokens);
    expect(ext(r).task).toBe('vqa');
    expect(ext(r).image).toEqual({ width: vqa.width, height: vqa.height });
  });

  it('streams chunks that concatenate to the non-streamed answer, then finish_reason, usage and [DONE]', async () => {
    const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: 'user', content: withImage(refer.prompt) }];
    const whole = await client.chat.completions.create({ model: 'minigpt-demo', messages, ...GREEDY });
    const stream = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages,
      ...GREEDY,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.Chat.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id)).toBe(true);
    expect(chunks[0].choices[0].delta.role).toBe('assistant');
    const pieces = chunks.flatMap((c) => c.choices.map((ch) => ch.delta.content ?? ''));
    expect(pieces.filter(Boolean).length).toBeGreaterThan(2);
    expect(pieces.join('')).toBe(whole.choices[0].message.content);
    const finishing = chunks.filter((c) => c.choices[0]?.finish_reason);
    expect(finishing).toHaveLength(1);
    expect(finishing[0].choices[0].finish_reason).toBe(whole.choices[0].finish_reason);
    expect(ext(finishing[0]).boxes).toEqual(ext(whole).boxes);
    const last = chunks[chunks.length - 1];
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({ prompt_tokens: whole.usage!.prompt_tokens, completion_tokens: whole.usage!.completion_tokens });
  });

  it('returns a grounding answer with its boxes in pixels and, when asked, the annotated image', async () => {
    const r = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages: [{ role: 'user', content: withImage(refer.prompt) }],
      ...GREEDY,
      // @ts-expect-error the server's extension field
      minigpt: { annotated_image: true },
    });
    const text = r.choices[0].message.content!;
    const { entities } = parseGrounding(text);
    const grid = entities.flatMap((e) => e.boxes);
    expect(grid.length).toBeGreaterThan(0); // the demo model answers [refer] with a box
    const e = ext(r);
    expect(e.task).toBe('refer');
    expect(e.boxes).toEqual(
      grid.map((b, i) => ({
        phrase: entities.flatMap((en) => en.boxes.map(() => en.phrase))[i],
        ...gridToPixels(b, refer.width, refer.height),
        grid: [b.x1, b.y1, b.x2, b.y2],
      })),
    );
    const m = /^data:image\/(png|jpeg);base64,(.+)$/.exec(e.annotated_image ?? '');
    expect(m).not.toBeNull();
    const drawn = Buffer.from(m![2], 'base64');
    const meta = await sharp(drawn).metadata();
    expect([meta.width, meta.height]).toEqual([refer.width, refer.height]);
    // the box's outline is drawn over the scene: its top edge's pixels changed
    const box = e.boxes[0];
    const row = async (img: Buffer) =>
      await sharp(img).removeAlpha().extract({ left: box.left, top: box.top, width: box.width, height: 1 }).raw().toBuffer();
    expect((await row(drawn)).equals(await row(png))).toBe(false);
    // and only when asked
    const plain = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages: [{ role: 'user', content: withImage(refer.prompt) }],
      ...GREEDY,
    });
    expect(ext(plain).annotated_image).toBeUndefined();
    expect(ext(plain).boxes).toEqual(e.boxes);
  });

  it('continues a conversation from its messages, reusing the KV cache of the request it extends', async () => {
    const q1 = vqa.prompt;
    const q2 = '[refer] where is it?';
    const img = `data:image/png;base64,${vqaPng.toString('base64')}`;
    const first = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages: [{ role: 'user', content: withImage(q1, img) }],
      ...GREEDY,
    });
    const a1 = first.choices[0].message.content!;
    const follow: OpenAI.Chat.ChatCompletionMessageParam[] = [
      { role: 'user', content: withImage(q1, img) },
      { role: 'assistant', content: a1 },
      { role: 'user', content: q2 },
    ];
    await cachesKept();
    const second = await client.chat.completions.create({ model: 'minigpt-demo', messages: follow, ...GREEDY });
    await cachesKept();
    // the same answer as a thread's follow-up
    const thread = await threadAnswers([{ text: q1, image: vqaPng }, { text: q2 }]);
    expect(thread[0].text).toBe(a1);
    expect(second.choices[0].message.content).toBe(thread[1].text);
    expect(second.usage!.prompt_tokens).toBe(thread[1].timings.promptTokens);
    // everything up to the new question came from the first request's cache
    const cached = second.usage!.prompt_tokens_details!.cached_tokens!;
    const question = model.tokenizer.encode(` ${q2} [/INST]`, { addBos: false }).length;
    expect(cached).toBeGreaterThan(first.usage!.prompt_tokens);
    expect(second.usage!.prompt_tokens - cached).toBeLessThanOrEqual(question + 1);
    // the thread, asked the same after them, started each turn from the requests' caches: all but the last row
    expect(thread.map((t) => t.timings.reusedTokens)).toEqual(thread.map((t) => t.timings.promptTokens - 1));
    expect(ext(second).timings.image_cached).toBe(true);
    // a client that edits the history gets an answer to what it sent, from a shorter reused prefix (the image)
    await cachesKept();
    const edited = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages: [follow[0], { role: 'assistant', content: 'something else entirely' }, follow[2]],
      ...GREEDY,
    });
    expect(edited.usage!.prompt_tokens_details!.cached_tokens!).toBe(first.usage!.prompt_tokens);
    expect(edited.usage!.prompt_tokens).not.toBe(second.usage!.prompt_tokens);
    // a new conversation about the same image starts from the rows the others' caches hold: the image and the
    // text before it are not prefilled again
    await cachesKept();
    const fresh = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages: [{ role: 'user', content: withImage(q2, img) }],
      ...GREEDY,
    });
    expect(fresh.usage!.prompt_tokens_details!.cached_tokens!).toBeGreaterThan(model.meta.vision.imageTokens);
    expect(fresh.choices[0].message.content).toBe((await threadAnswers([{ text: q2, image: vqaPng }]))[0].text);
  });

  it('honours stop, max_tokens and seed', async () => {
    const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
      { role: 'user', content: withImage(caption.prompt, `data:image/png;base64,${captionPng.toString('base64')}`) },
    ];
    const full = (await client.chat.completions.create({ model: 'minigpt-demo', messages, ...GREEDY, max_tokens: 30 })).choices[0].message
      .content!;
    expect(full.length).toBeGreaterThan(10);
    const half = Math.floor(full.length / 2);
    const stop = full.slice(half, half + 3);
    const cut = await client.chat.completions.create({ model: 'minigpt-demo', messages, ...GREEDY, max_tokens: 30, stop: [stop] });
    expect(cut.choices[0].message.content).toBe(full.slice(0, full.indexOf(stop)));
    expect(cut.choices[0].finish_reason).toBe('stop');
    const short = await client.chat.completions.create({ model: 'minigpt-demo', messages, ...GREEDY, max_completion_tokens: 2 });
    expect(short.usage!.completion_tokens).toBe(2);
    expect(short.choices[0].finish_reason).toBe('length');
    const sampled = () =>
      client.chat.completions.create({ model: 'minigpt-demo', messages, temperature: 1.5, top_p: 1, seed: 7, max_tokens: 20 });
    expect((await sampled()).choices[0].message.content).toBe((await sampled()).choices[0].message.content);
  });

  it('honours logit_bias, frequency_penalty and presence_penalty as a chat thread given them does', async () => {
    const image = `data:image/png;base64,${captionPng.toString('base64')}`;
    const api = async (p: Partial<OpenAI.Chat.ChatCompletionCreateParamsNonStreaming>) =>
      (
        await client.chat.completions.create({
          model: 'minigpt-demo',
          messages: [{ role: 'user', content: withImage(caption.prompt, image) }],
          ...GREEDY,
          max_tokens: 30,
          ...p,
        })
      ).choices[0];
    const thread = async (g: RequestGeneration) =>
      (await threadAnswers([{ text: caption.prompt, image: captionPng }], { maxNewTokens: 30, ...g }))[0].text;
    const ids = (text: string) => model.tokenizer.encode(text, { addBos: false });
    const plain = (await api({})).message.content!;
    expect(plain).toBe(await thread({}));
    // the answer repeats tokens, which the penalties act on
    expect(new Set(ids(plain)).size).toBeLessThan(ids(plain).length);

    const first = ids(plain)[0];
    const banned = (await api({ logit_bias: { [first]: -100 } })).message.content!;
    expect(banned).toBe(await thread({ logitBias: { [first]: -100 } }));
    expect(ids(banned)).not.toContain(first);

    // +100 outweighs any logit of the model: that token, and only it, until max_tokens
    const forced = ids('circle')[0];
    const r = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages: [{ role: 'user', content: withImage(caption.prompt, image) }],
      ...GREEDY,
      max_tokens: 5,
      logit_bias: { [forced]: 100 },
    });
    expect(r.choices[0].message.content).toBe(
      model.tokenizer.decode([forced, forced, forced, forced, forced], { skipSpecialTokens: true }),
    );
    expect([r.choices[0].finish_reason, r.usage!.completion_tokens]).toEqual(['length', 5]);

    // The demo model is too sure of its answers for penalties of at most 2 to change them (their effect is held to
    // hand-computed sequences in generation.test.ts); sampled, the API's answer is the thread's with the same settings.
    const sampled = { temperature: 1.5, top_p: 1, seed: 11 };
    for (const [p, g] of [
      [{ frequency_penalty: 1.5 }, { frequencyPenalty: 1.5 }],
      [
        { presence_penalty: -2, logit_bias: { [first]: 3 } },
        { presencePenalty: -2, logitBias: { [first]: 3 } },
      ],
    ] as const) {
      expect((await api({ ...sampled, ...p })).message.content).toBe(
        await thread({ temperature: sampled.temperature, topP: sampled.top_p, seed: sampled.seed, ...g }),
      );
    }
  });

  it("returns the answer's token log-probabilities, streamed or not, as the model's own distribution", async () => {
    const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
      { role: 'user', content: withImage(caption.prompt, `data:image/png;base64,${captionPng.toString('base64')}`) },
    ];
    const asked = { model: 'minigpt-demo', messages, ...GREEDY, max_tokens: 30, logprobs: true, top_logprobs: 3 } as const;
    const r = await client.chat.completions.create(asked);
    const content = r.choices[0].logprobs!.content!;
    expect(r.choices[0].logprobs!.refusal).toBeNull();
    expect(content).toHaveLength(r.usage!.completion_tokens);
    expect(content.length).toBeGreaterThan(3);
    // the tokens spell the answer (the tokenizer's decoder drops the first one's leading space)
    expect(
      content
        .map((t) => t.token)
        .join('')
        .replace(/^ /, ''),
    ).toBe(r.choices[0].message.content);
    for (const t of content) {
      expect(t.bytes).toEqual([...Buffer.from(t.token, 'utf8')]);
      expect(t.top_logprobs).toHaveLength(3);
      // greedy: each token is its position's most likely one
      expect(t.top_logprobs[0]).toEqual({ token: t.token, logprob: t.logprob, bytes: t.bytes });
      expect(t.logprob).toBeLessThanOrEqual(0);
      const lp = t.top_logprobs.map((a) => a.logprob);
      expect(lp).toEqual([...lp].sort((a, b) => b - a));
      expect(lp.reduce((sum, l) => sum + Math.exp(l), 0)).toBeLessThanOrEqual(1 + 1e-9);
    }

    // streamed: the same tokens, each with the piece that completes it
    const chunks = await client.chat.completions.create({ ...asked, stream: true });
    const streamed: OpenAI.Chat.ChatCompletionTokenLogprob[] = [];
    let text = '';
    for await (const c of chunks) {
      const choice = c.choices[0];
      if (!choice) continue;
      text += choice.delta.content ?? '';
      streamed.push(...(choice.logprobs?.content ?? []));
      // a token comes with the piece that completes its text, never before
      expect(
        text.startsWith(
          streamed
            .map((t) => t.token)
            .join('')
            .replace(/^ /, ''),
        ),
      ).toBe(true);
    }
    expect(text).toBe(r.choices[0].message.content);
    expect(streamed).toEqual(content);

    // not asked for: null
    const plain = await client.chat.completions.create({ model: 'minigpt-demo', messages, ...GREEDY, max_tokens: 5 });
    expect(plain.choices[0].logprobs).toBeNull();
  });

  it("reports the log-softmax of the model's logits: the first token's against the prompt's prefill", async () => {
    const question = 'what is the red shape?';
    const r = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages: [{ role: 'user', content: question }],
      temperature: 1,
      top_p: 1,
      seed: 5,
      max_tokens: 1,
      logprobs: true,
      top_logprobs: 5,
    });
    const prompt = conversationPrompt(model.meta.prompt, [{ user: question }], { image: false });
    const { state, logits } = await model.prefill(await model.context(prompt, []));
    state.dispose();
    const ref = logSoftmax(logits);
    const order = Array.from(ref.keys()).sort((a, b) => ref[b] - ref[a] || a - b);
    const token = (id: number) => Buffer.from(model.tokenizer.tokenBytes(id)).toString('utf8');
    const [first] = r.choices[0].logprobs!.content!;
    const id = order.find((i) => token(i) === first.token)!;
    // to float rounding: the request may start from rows other conversations' caches hold (the prompt's opening
    // text), computed in another split than this prefill's
    expect(first.logprob).toBeCloseTo(ref[id], 5);
    expect(first.top_logprobs.map((t) => [t.token, t.logprob])).toEqual(
      order.slice(0, 5).map((i) => [token(i), expect.closeTo(ref[i], 5)]),
    );
  });

  it('gives n choices, answered side by side: each as a request of its own would be, streamed by index', async () => {
    const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
      { role: 'user', content: withImage(caption.prompt, `data:image/png;base64,${captionPng.toString('base64')}`) },
    ];
    const create = (p: Partial<OpenAI.Chat.ChatCompletionCreateParamsNonStreaming>) =>
      client.chat.completions.create({ model: 'minigpt-demo', messages, max_tokens: 12, ...p });
    const single = await create({ ...GREEDY });
    const three = await create({ ...GREEDY, n: 3 });
    expect(three.choices.map((c) => [c.index, c.message.content, c.finish_reason])).toEqual(
      [0, 1, 2].map((i) => [i, single.choices[0].message.content, single.choices[0].finish_reason]),
    );
    expect(three.usage).toMatchObject({
      prompt_tokens: single.usage!.prompt_tokens,
      completion_tokens: 3 * single.usage!.completion_tokens,
    });
    expect(three.choices.map((c) => (c as unknown as { minigpt: Extension }).minigpt.task)).toEqual(['caption', 'caption', 'caption']);

    // sampled with a seed: choice i is the answer to the seed + i, as asked alone
    const sampled = { temperature: 1.5, top_p: 1 };
    const seeded = await create({ ...sampled, seed: 40, n: 3 });
    for (const i of [0, 1, 2]) {
      expect(seeded.choices[i].message.content).toBe((await create({ ...sampled, seed: 40 + i })).choices[0].message.content);
    }

    // streamed: each choice's pieces under its index, one role and one finish chunk each, the usage of all
    const chunks = await client.chat.completions.create({
      model: 'minigpt-demo',
      messages,
      max_tokens: 12,
      ...sampled,
      seed: 40,
      n: 3,
      stream: true,
      stream_options: { include_usage: true },
    });
    const texts = ['', '', ''];
    const roles = [0, 0, 0];
    const finishes = [0, 0, 0];
    let used: OpenAI.CompletionUsage | undefined;
    for await (const c of chunks) {
      if (c.usage) used = c.usage;
      for (const ch of c.choices) {
        texts[ch.index] += ch.delta.content ?? '';
        if (ch.delta.role) roles[ch.index]++;
        if (ch.finish_reason) finishes[ch.index]++;
      }
    }
    expect(texts).toEqual(seeded.choices.map((c) => c.message.content));
    expect([roles, finishes]).toEqual([
      [1, 1, 1],
      [1, 1, 1],
    ]);
    expect(used?.completion_tokens).toBe(seeded.usage!.completion_tokens);
  });

  it('fetches an http image only from an allowed host', async () => {
    const images: Server = createServer((req, res) => {
      if (req.url === '/scene.png') res.writeHead(200, { 'content-type': 'image/png' }).end(vqaPng);
      else res.writeHead(302, { location: 'http://localhost:1/elsewhere.png' }).end();
    });
    await new Promise<void>((r) => images.listen(0, '127.0.0.1', r));
    const host = `127.0.0.1:${(images.address() as AddressInfo).port}`;
    const allowing = await startApiServer({
      manager,
      port: 0,
      imageHosts: [host],
      model: { id: 'minigpt-demo', created: 1, architecture: 'minigpt-v2' },
    });
    try {
      const c = new OpenAI({ baseURL: allowing.url, apiKey: 'x', maxRetries: 0 });
      const r = await c.chat.completions.create({
        model: 'minigpt-demo',
        messages: [{ role: 'user', content: withImage(vqa.prompt, `http://${host}/scene.png`) }],
        ...GREEDY,
      });
      const [thread] = await threadAnswers([{ text: vqa.prompt, image: vqaPng }]);
      expect(r.choices[0].message.content).toBe(thread.text);
      await expectApiError(
        c.chat.completions.create({
          model: 'minigpt-demo',
          messages: [{ role: 'user', content: withImage('hi', `http://${host}/redirect.png`) }],
        }),
        400,
        'image_url_not_allowed',
      );
      // the default server fetches nothing
      await expectApiError(
        client.chat.completions.create({
          model: 'minigpt-demo',
          messages: [{ role: 'user', content: withImage('hi', `http://${host}/scene.png`) }],
        }),
        400,
        'image_url_not_allowed',
      );
    } finally {
      await allowing.close();
      await new Promise((r) => images.close(r));
    }
  });
});

describe('OpenAI API: errors', () => {
  const ask = (body: Record<string, unknown>, c = client) =>
    c.chat.completions.create({
      model: 'minigpt-demo',
      messages: [{ role: 'user', content: withImage('what is this?') }],
      ...body,
    } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
  /** A streamed greedy answer to the refer prompt through `c`, once its first chunk is in (it is running). */
  const runningStream = async (c: OpenAI) => {
    const stream = await c.chat.completions.create({
      model: 'minigpt-demo',
      messages: [{ role: 'user', content: withImage(refer.prompt) }],
      ...GREEDY,
      stream: true,
    });
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    return { stream, it };
  };

  it("refuses an unreadable image, an unknown model and bad parameters in OpenAI's error shape", async () => {
    const notImage = `data:image/png;base64,${Buffer.from('this is not a picture').toString('base64')}`;
    const e = await expectApiError(ask({ messages: [{ role: 'user', content: withImage('hi', notImage) }] }), 400, 'invalid_image');
    expect(e).toBeInstanceOf(OpenAI.BadRequestError);
    await expectApiError(
      ask({ messages: [{ role: 'user', content: withImage('hi', 'data:image/png;base64,@@@') }] }),
      400,
      'invalid_image',
    );
    await expectApiError(ask({ model: 'gpt-4o' }), 404, 'model_not_found', 'model');
    await expectApiError(ask({ n: 9 }), 400, 'invalid_request', 'n');
    await expectApiError(ask({ n: 0 }), 400, 'invalid_request', 'n');
    await expectApiError(ask({ n: 2, minigpt: { num_beams: 2 } }), 400, 'unsupported_value', 'n');
    await expectApiError(ask({ temperature: 3 }), 400, 'invalid_request', 'temperature');
    await expectApiError(ask({ max_tokens: 0 }), 400, 'invalid_request', 'max_tokens');
    await expectApiError(ask({ stop: ['a', 'b', 'c', 'd', 'e'] }), 400, 'invalid_request', 'stop');
    await expectApiError(ask({ presence_penalty: 2.5 }), 400, 'invalid_request', 'presence_penalty');
    await expectApiError(ask({ top_logprobs: 2 }), 400, 'invalid_request', 'top_logprobs');
    await expectApiError(ask({ logprobs: true, top_logprobs: 21 }), 400, 'invalid_request', 'top_logprobs');
    await expectApiError(ask({ logprobs: 'yes' as unknown as boolean }), 400, 'invalid_request', 'logprobs');
    await expectApiError(ask({ logprobs: true, minigpt: { num_beams: 2 } }), 400, 'unsupported_value', 'logprobs');
    const vocab = model.meta.llm.vocabSize;
    for (const bias of [{ [vocab]: 1 }, { abc: 1 }, { '-1': 1 }, { '5': 101 }, { '5': 'x' }]) {
      const e = await expectApiError(ask({ logit_bias: bias as Record<string, number> }), 400, 'invalid_request', 'logit_bias');
      if (vocab in bias) expect(e.message).toContain(`0 to ${vocab - 1}`);
    }
    await expectApiError(ask({ tools: [{ type: 'function', function: { name: 'f' } }] }), 400, 'unsupported_parameter', 'tools');
    await expectApiError(
      ask({
        messages: [
          { role: 'user', content: 'hi' },
          { role: 'assistant', content: 'hello' },
        ],
      }),
      400,
      'invalid_request',
      'messages',
    );
    await expectApiError(ask({ messages: [] }), 400, 'invalid_request', 'messages');
    await expectApiError(
      ask({ messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: { data: '', format: 'wav' } }] }] }),
      400,
      'invalid_request',
      'messages[0].content[0].type',
    );
    await expectApiError(
      ask({ messages: [{ role: 'user', content: [...withImage('two'), { type: 'image_url', image_url: { url: dataUrl } }] }] }),
      400,
      'too_many_images',
    );
  });

  it("refuses a prompt longer than the model's window", async () => {
    const long = Array.from({ length: 3000 }, (_, i) => `w${i}`).join(' ');
    await expectApiError(ask({ messages: [{ role: 'user', content: withImage(long) }] }), 400, 'context_length_exceeded', 'messages');
  });

  it('refuses an image over the limit with 413, and a request body over the limit too', async () => {
    const small = await startApiServer({
      manager,
      port: 0,
      maxImageBytes: 4096,
      model: { id: 'minigpt-demo', created: 1, architecture: 'minigpt-v2' },
    });
    try {
      const c = new OpenAI({ baseURL: small.url, apiKey: 'x', maxRetries: 0 });
      expect(png.length).toBeGreaterThan(4096);
      const e = await expectApiError(ask({}, c), 413, 'image_too_large');
      expect(e.message).toContain(`(${(png.length / 1024).toFixed(1)} KB): the limit is 4.0 KB`);
      const huge = `data:image/png;base64,${Buffer.alloc(2 * 1024 * 1024).toString('base64')}`;
      await expectApiError(ask({ messages: [{ role: 'user', content: withImage('hi', huge) }] }, c), 413, 'request_too_large');
    } finally {
      await small.close();
    }
  });

  it('answers "busy" at once with 503 and Retry-After when the queue is full', async () => {
    const tight = new ConversationManager({ model, maxQueue: 0, defaults: { maxNewTokens: 40 } });
    const busy = await startApiServer({ manager: tight, port: 0, model: { id: 'minigpt-demo', created: 1, architecture: 'minigpt-v2' } });
    try {
      const c = new OpenAI({ baseURL: busy.url, apiKey: 'x', maxRetries: 0 });
      const { it } = await runningStream(c); // the first answer is running
      const e = await expectApiError(ask({}, c), 503, 'server_busy');
      expect(e.headers?.get('retry-after')).toBe('2');
      let rest = '';
      for (let r = await it.next(); !r.done; r = await it.next()) rest += r.value.choices[0]?.delta.content ?? '';
      expect(rest.length).toBeGreaterThan(0); // the running one was not disturbed
    } finally {
      await busy.close();
      await tight.close();
    }
  });

  it('refuses n choices when the queue cannot take them all, stopping those it took', async () => {
    const tight = new ConversationManager({
      model,
      maxQueue: 0,
      maxBatch: 2,
      defaults: { maxNewTokens: 40, stopStrings: [], stopIds: [] },
    });
    const small = await startApiServer({ manager: tight, port: 0, model: { id: 'minigpt-demo', created: 1, architecture: 'minigpt-v2' } });
    // (the answers last: 40 steps of 50 ms)
    const slow = slowSteps(model, 50);
    try {
      const c = new OpenAI({ baseURL: small.url, apiKey: 'x', maxRetries: 0 });
      const started = Date.now();
      await expectApiError(ask({ n: 3, ...GREEDY }, c), 503, 'server_busy');
      // the two it took were stopped: two more are taken long before those would have ended
      const again = await ask({ n: 2, ...GREEDY, max_tokens: 2 }, c);
      expect(again.choices).toHaveLength(2);
      expect(Date.now() - started).toBeLessThan(1500);
    } finally {
      slow.restore();
      await small.close();
      await tight.close();
    }
  });

  it('cancels the answer of a client that goes away, freeing its place at once', async () => {
    const tight = new ConversationManager({ model, maxQueue: 0, defaults: { maxNewTokens: 200, stopStrings: [], stopIds: [] } });
    // how each answer ended, as the manager reported it
    const ends: string[] = [];
    const spy = {
      async *handle(req: ConversationRequest): AsyncIterable<AnswerEvent> {
        for await (const ev of tight.handle(req)) {
          if (ev.type === 'error' || ev.type === 'final') ends.push(ev.type === 'error' ? ev.code : 'final');
          yield ev;
        }
      },
    };
    const one = await startApiServer({ manager: spy, port: 0, model: { id: 'minigpt-demo', created: 1, architecture: 'minigpt-v2' } });
    try {
      const c = new OpenAI({ baseURL: one.url, apiKey: 'x', maxRetries: 0 });
      const { stream } = await runningStream(c);
      await expectApiError(ask({}, c), 503, 'server_busy'); // it is running
      stream.controller.abort();
      // the server sees the connection close and cancels the answer: the next request runs
      let r: OpenAI.Chat.ChatCompletion | undefined;
      for (let i = 0; i < 100 && !r; i++) {
        r = await ask({ ...GREEDY, max_tokens: 4 }, c).catch((e: unknown) => {
          if ((e as { status?: number }).status !== 503) throw e;
          return undefined;
        });
        if (!r) await new Promise((res) => setTimeout(res, 20));
      }
      expect(r?.choices[0].message.content).toBeTruthy();
      expect(r!.usage!.completion_tokens).toBeLessThanOrEqual(4);
      // the first answer was stopped, not run to its end; then the new one ran
      expect(ends.filter((e) => e !== 'busy')).toEqual(['cancelled', 'final']);
    } finally {
      await one.close();
      await tight.close();
    }
  });

  /** An API server with the keys `key-one` and `key-two` and `extra`: its log, and a client for a key. */
  async function keyedServer(extra: Partial<ApiServerOptions>) {
    const logs: string[] = [];
    const server = await startApiServer({
      manager,
      port: 0,
      keys: ['key-one', 'key-two'],
      model: { id: 'minigpt-demo', created: 1, architecture: 'minigpt-v2' },
      log: (l) => logs.push(l),
      ...extra,
    });
    const as = (apiKey: string, maxRetries = 0) => new OpenAI({ baseURL: server.url, apiKey, maxRetries });
    return { server, logs, as };
  }

  it('limits each key to API_RATE_LIMIT requests per window: 429 with the wait, the other keys unaffected', async () => {
    const {
      server: limited,
      logs,
      as,
    } = await keyedServer({
      rateLimit: { limiter: new UserRateLimiter(2, 60_000), max: 2, windowMs: 60_000 },
    });
    try {
      // (a request refused for its parameters is not counted)
      await expectApiError(ask({ temperature: 3 }, as('key-one')), 400, 'invalid_request', 'temperature');
      for (let i = 0; i < 2; i++) expect((await ask({ ...GREEDY, max_tokens: 2 }, as('key-one'))).choices[0].message.content).toBeTruthy();
      const e = await expectApiError(ask({ ...GREEDY, max_tokens: 2 }, as('key-one')), 429, 'rate_limit_exceeded');
      expect(e).toBeInstanceOf(OpenAI.RateLimitError);
      expect(e.type).toBe('requests');
      expect(e.message).toMatch(/^429 Rate limit reached for this API key: 2 requests per 60 s\. Please try again in \d+ s\.$/);
      const ms = Number(e.headers?.get('retry-after-ms'));
      expect(ms).toBeGreaterThan(50_000);
      expect(ms).toBeLessThanOrEqual(60_000);
      expect(e.headers?.get('retry-after')).toBe(String(Math.ceil(ms / 1000)));
      expect((await ask({ ...GREEDY, max_tokens: 2 }, as('key-two'))).choices[0].message.content).toBeTruthy();
      expect(logs.filter((l) => l.includes('over its rate limit'))).toEqual(['api: key1: over its rate limit (2 per 60 s)']);
    } finally {
      await limited.close();
    }
  });

  it('takes at most API_MAX_CONCURRENT requests of a key at once: 429, which the SDK retries by itself after the wait', async () => {
    const { server: capped, logs, as } = await keyedServer({ maxConcurrent: 1 });
    const refusals = () => logs.filter((l) => l === 'api: key1: refused, 1 request(s) of it in progress').length;
    // (the first answer lasts: its decoding steps slowed)
    const slow = slowSteps(model, 50);
    try {
      const { stream } = await runningStream(as('key-one'));
      const e = await expectApiError(ask({ ...GREEDY, max_tokens: 2 }, as('key-one')), 429, 'too_many_concurrent_requests');
      expect(e.headers?.get('retry-after-ms')).toBe('1000');
      expect(e.headers?.get('retry-after')).toBe('1');
      // another key is not held back (answered in its turn)
      const other = ask({ ...GREEDY, max_tokens: 2 }, as('key-two'));
      // refused while the stream runs; the SDK tries again after the second it was told, when the stream has ended
      const retried = as('key-one', 2)
        .chat.completions.create({
          model: 'minigpt-demo',
          messages: [{ role: 'user', content: withImage('what is this?') }],
          ...GREEDY,
          max_tokens: 2,
        })
        .withResponse();
      await vi.waitFor(() => expect(refusals()).toBe(2), { timeout: 5000 });
      stream.controller.abort();
      const { data, response } = await retried;
      expect(data.choices[0].message.content).toBeTruthy();
      expect(response.status).toBe(200);
      expect(refusals()).toBe(2);
      expect((await other).choices[0].message.content).toBeTruthy();
    } finally {
      slow.restore();
      await capped.close();
    }
  });

  it('needs a key from MINIGPT_API_KEYS when keys are set', async () => {
    const guarded = await startApiServer({
      manager,
      port: 0,
      keys: ['key-one', 'key-two'],
      model: { id: 'minigpt-demo', created: 1, architecture: 'minigpt-v2' },
    });
    try {
      const as = (apiKey: string) => new OpenAI({ baseURL: guarded.url, apiKey, maxRetries: 0 });
      const e = await expectApiError(as('wrong').models.list(), 401, 'invalid_api_key');
      expect(e).toBeInstanceOf(OpenAI.AuthenticationError);
      await expectApiError(ask({}, as('key-one-x')), 401, 'invalid_api_key');
      expect((await as('key-two').models.list()).data[0].id).toBe('minigpt-demo');
      const r = await ask({ ...GREEDY, max_tokens: 4 }, as('key-one'));
      expect(r.choices[0].message.content!.length).toBeGreaterThan(0);
      // no Authorization header at all
      const raw = await fetch(`${guarded.url}/models`);
      expect(raw.status).toBe(401);
      expect(((await raw.json()) as { error: { code: string } }).error.code).toBe('invalid_api_key');
    } finally {
      await guarded.close();
    }
  });

  it('without keys: loopback only, loopback Host names only, JSON bodies only', async () => {
    await expect(
      startApiServer({ manager, host: '0.0.0.0', port: 0, model: { id: 'm', created: 1, architecture: 'minigpt-v2' } }),
    ).rejects.toThrow(/MINIGPT_API_KEYS/);
    const { request } = await import('node:http');
    const status = (headers: Record<string, string>, method = 'GET', path = '/v1/models', body?: string) =>
      new Promise<number>((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port: server.port, path, method, headers }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        req.end(body);
      });
    expect(await status({ host: `127.0.0.1:${server.port}` })).toBe(200);
    expect(await status({ host: `evil.example:${server.port}` })).toBe(421); // DNS rebinding
    expect(await status({ host: `localhost:${server.port}`, 'content-type': 'text/plain' }, 'POST', '/v1/chat/completions', '{}')).toBe(
      415,
    );
  });
});
