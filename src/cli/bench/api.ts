// `minigpt bench --api DIR`: a package behind the OpenAI-compatible API, measured as a client meets it, over
// HTTP on loopback (streamed, time to the first chunk with text): a new image with a question, then the same
// conversation sent back with a follow-up question. The follow-up goes to two servers on the same model in the
// same process, one keeping KV caches (runtime.kv_cache_mb) and one not (the baseline: a full prefill of
// image + history), alternating which goes first; every figure is a median over the measured rounds.
import sharp from 'sharp';
import { MiniGPT } from '../../inference/model.js';
import { ConversationManager } from '../../conversation/manager.js';
import { startApiServer } from '../../../adapters/api/server.js';
import { type ConversationBench, fmt, GREEDY, roundAll, stat } from './common.js';

export interface ApiBenchResult {
  package: string;
  dtype: string;
  layers: number;
  rounds: number;
  answer_tokens: number;
  /** a new image: request sent -> first text chunk */
  first_ttft_ms: number;
  first_prompt_tokens: number;
  /** the follow-up, from the first request's kept KV cache */
  followup_ttft_ms: number;
  /** the same follow-up on the server that keeps no cache (image embeddings cached on both) */
  followup_ttft_nocache_ms: number;
  /** followup_ttft_ms / followup_ttft_nocache_ms */
  followup_ratio: number;
  followup_prompt_tokens: number;
  followup_cached_tokens: number;
  /** both servers gave the same greedy answers */
  identical: boolean;
}

const FIRST = '[grounding] describe this image in detail';
const FOLLOW_UP = 'what colour is the star?';

interface Streamed {
  ttftMs: number;
  text: string;
  usage: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details: { cached_tokens: number } };
}

/** One streamed request, timed on the client: send -> first chunk with text. */
async function streamed(url: string, body: object): Promise<Streamed> {
  const t0 = performance.now();
  const res = await fetch(`${url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok || !res.body) throw new Error(`API answered ${res.status}: ${await res.text()}`);
  let ttftMs = 0;
  let text = '';
  let usage: Streamed['usage'] | undefined;
  let buf = '';
  const decoder = new TextDecoder();
  for await (const bytes of res.body) {
    buf += decoder.decode(bytes, { stream: true });
    for (let at = buf.indexOf('\n\n'); at >= 0; at = buf.indexOf('\n\n')) {
      const frame = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!frame.startsWith('data: ') || frame === 'data: [DONE]') continue;
      const chunk = JSON.parse(frame.slice(6)) as {
        choices: { delta: { content?: string } }[];
        usage?: Streamed['usage'];
        error?: { message: string };
      };
      if (chunk.error) throw new Error(chunk.error.message);
      const piece = chunk.choices[0]?.delta.content ?? '';
      if (piece && !ttftMs) ttftMs = performance.now() - t0;
      text += piece;
      if (chunk.usage) usage = chunk.usage;
    }
  }
  if (!usage) throw new Error('the stream ended without usage');
  return { ttftMs, text, usage };
}

/** The bench image with its corner pixel changed: a new image (content hash) for each round. */
async function variant(image: Uint8Array, round: number): Promise<string> {
  const dot = await sharp({ create: { width: 1, height: 1, channels: 3, background: { r: round % 256, g: (round >> 8) % 256, b: 7 } } })
    .png()
    .toBuffer();
  const png = await sharp(image)
    .composite([{ input: dot, left: 0, top: 0 }])
    .png()
    .toBuffer();
  return `data:image/png;base64,${png.toString('base64')}`;
}

export const benchApi: ConversationBench<ApiBenchResult> = async (dir, image, threads, o, log) => {
  const model = await MiniGPT.load(dir, { provider: 'cpu', threads, log });
  const say = (s: string) => log(`[bench api ${model.meta.dtype} ${dir}] ${s}`);
  // no stop words: a random-weight package answers as long as a real one
  const defaults = { ...GREEDY, maxNewTokens: o.tokens };
  const managers = [o.kvCacheMb * 2 ** 20, 0].map(
    (kvCacheBytes) => new ConversationManager({ model, defaults, annotate: false, kvCacheBytes }),
  );
  const servers = await Promise.all(
    managers.map((manager) =>
      startApiServer({ manager, port: 0, model: { id: 'bench', created: 0, architecture: model.meta.architecture } }),
    ),
  );
  const rows: { first: Streamed; follow: Streamed[] }[] = [];
  let identical = true;
  try {
    for (let round = 0; round < o.rounds; round++) {
      say(`round ${round + 1}/${o.rounds}${round === 0 ? ' (warm-up)' : ''}`);
      const url = await variant(image, round);
      const question = {
        role: 'user',
        content: [
          { type: 'text', text: FIRST },
          { type: 'image_url', image_url: { url } },
        ],
      };
      // both servers see the first request (so both have the image's embeddings), in alternating order
      const order = round % 2 === 0 ? [0, 1] : [1, 0];
      const firsts: Streamed[] = [];
      for (const i of order) firsts[i] = await streamed(servers[i].url, { model: 'bench', messages: [question] });
      const follow: Streamed[] = [];
      for (const i of order) {
        const messages = [question, { role: 'assistant', content: firsts[i].text }, { role: 'user', content: FOLLOW_UP }];
        follow[i] = await streamed(servers[i].url, { model: 'bench', messages });
      }
      identical &&= firsts[0].text === firsts[1].text && follow[0].text === follow[1].text;
      say(
        `  first ${Math.round(firsts[0].ttftMs)} ms, follow-up ${Math.round(follow[0].ttftMs)} ms cached / ${Math.round(follow[1].ttftMs)} ms without cache`,
      );
      rows.push({ first: firsts[order[0]], follow });
    }
  } finally {
    await Promise.all(servers.map((s) => s.close()));
    await Promise.all(managers.map((m) => m.close()));
    await model.close();
  }
  const measured = rows.length > 1 ? rows.slice(1) : rows;
  const med = (f: (r: (typeof rows)[number]) => number) => stat(measured.map(f)).median;
  const last = measured[measured.length - 1];
  const cached = med((r) => r.follow[0].ttftMs);
  const uncached = med((r) => r.follow[1].ttftMs);
  return {
    package: dir,
    dtype: model.meta.dtype,
    layers: model.meta.llm.layers,
    rounds: measured.length,
    answer_tokens: o.tokens,
    first_ttft_ms: med((r) => r.first.ttftMs),
    first_prompt_tokens: last.first.usage.prompt_tokens,
    followup_ttft_ms: cached,
    followup_ttft_nocache_ms: uncached,
    followup_ratio: cached / uncached,
    followup_prompt_tokens: last.follow[0].usage.prompt_tokens,
    followup_cached_tokens: last.follow[0].usage.prompt_tokens_details.cached_tokens,
    identical,
  };
};

export function apiMarkdown(r: ApiBenchResult): string {
  return [
    `\`${r.package}\`: ${r.dtype}, ${r.layers} decoder layers; ${r.rounds} measured rounds after a warm-up, ${r.answer_tokens} greedy tokens an answer, streamed over loopback HTTP.`,
    '',
    '| new image: time to first token | follow-up, KV cache reused | follow-up, no cache (baseline) | ratio | follow-up prompt | greedy answers identical |',
    '| --- | --- | --- | --- | --- | --- |',
    `| ${fmt(r.first_ttft_ms, ' ms')} (${r.first_prompt_tokens} tokens) | ${fmt(r.followup_ttft_ms, ' ms')} | ${fmt(r.followup_ttft_nocache_ms, ' ms')} | **${fmt(r.followup_ratio, 'x')}** | ${r.followup_prompt_tokens} tokens, ${r.followup_cached_tokens} cached | ${r.identical ? 'yes' : 'NO'} |`,
    '',
    '```json',
    JSON.stringify(roundAll(r)),
    '```',
  ].join('\n');
}
