// Prompt assembly as upstream get_context_emb: split on the image token, BOS only on the first segment,
// image embeddings spliced between the segments' token embeddings.
import type { TextTokenizer } from './tokenizer.js';
import type { TokenEmbedder } from './decoder.js';

export interface ContextEmbeds {
  /** [length, hidden] */
  embeds: Float32Array;
  length: number;
  /** token ids of each text segment (segment 0 includes BOS) */
  segmentIds: number[][];
}

export class PromptError extends Error {}

/** Tokenises the text segments of `prompt` around `imageToken`. */
export function promptSegmentIds(prompt: string, imageToken: string, images: number, tokenizer: TextTokenizer): number[][] {
  const segments = prompt.split(imageToken);
  if (segments.length !== images + 1) {
    throw new PromptError(`the prompt has ${segments.length - 1} image placeholder(s) (${imageToken}) but ${images} image(s) were given`);
  }
  return segments.map((seg, i) => tokenizer.encode(seg, { addBos: i === 0 }));
}

/** Embeds token segments and splices the images ([tokens, hidden] each) between them. */
export async function spliceContext(segmentIds: number[][], images: readonly Float32Array[], embedder: TokenEmbedder): Promise<ContextEmbeds> {
  const { hidden } = embedder;
  const parts: Float32Array[] = [];
  for (let i = 0; i < segmentIds.length; i++) {
    parts.push(await embedder.embed(segmentIds[i]));
    if (i < images.length) {
      if (images[i].length % hidden !== 0) throw new PromptError(`image ${i} embeddings are not ${hidden}-wide rows`);
      parts.push(images[i]);
    }
  }
  const total = parts.reduce((n, p) => n + p.length, 0);
  const embeds = new Float32Array(total);
  let at = 0;
  for (const p of parts) {
    embeds.set(p, at);
    at += p.length;
  }
  return { embeds, length: total / hidden, segmentIds };
}

export async function buildContext(
  prompt: string,
  imageToken: string,
  images: readonly Float32Array[],
  tokenizer: TextTokenizer,
  embedder: TokenEmbedder,
): Promise<ContextEmbeds> {
  return spliceContext(promptSegmentIds(prompt, imageToken, images.length, tokenizer), images, embedder);
}
