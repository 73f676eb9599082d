// Prompt assembly as upstream get_context_emb: split on the image token, BOS only on the first segment,
// image embeddings spliced between the segments' token embeddings.
import type { TextTokenizer } from './tokenizer.js';
import type { TokenEmbedder } from './embedder.js';
import { concatArrays } from '../util/typed-arrays.js';

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
export async function spliceContext(
  segmentIds: number[][],
  images: readonly Float32Array[],
  embedder: TokenEmbedder,
): Promise<ContextEmbeds> {
  const { hidden } = embedder;
  const parts: Float32Array[] = [];
  for (let i = 0; i < segmentIds.length; i++) {
    parts.push(await embedder.embed(segmentIds[i]));
    if (i < images.length) {
      if (images[i].length % hidden !== 0) throw new PromptError(`image ${i} embeddings are not ${hidden}-wide rows`);
      parts.push(images[i]);
    }
  }
  const embeds = concatArrays(Float32Array, parts);
  return { embeds, length: embeds.length / hidden, segmentIds };
}

/**
 * The embedding rows `from`.. of the context that spliceContext() would build (the rows before `from` are
 * not computed): token rows from the embedding graph, image rows copied. Bit-identical to the same rows of
 * the whole context, since a token's embedding does not depend on its neighbours.
 */
export async function embedRows(
  segmentIds: number[][],
  images: readonly Float32Array[],
  embedder: TokenEmbedder,
  from = 0,
): Promise<Float32Array> {
  const { hidden } = embedder;
  const parts: Float32Array[] = [];
  let at = 0;
  for (let i = 0; i < segmentIds.length; i++) {
    const seg = segmentIds[i];
    if (at + seg.length > from) parts.push(await embedder.embed(seg.slice(Math.max(0, from - at))));
    at += seg.length;
    if (i < images.length) {
      if (images[i].length % hidden !== 0) throw new PromptError(`image ${i} embeddings are not ${hidden}-wide rows`);
      const rows = images[i].length / hidden;
      if (at + rows > from) parts.push(images[i].subarray(Math.max(0, from - at) * hidden));
      at += rows;
    }
  }
  return concatArrays(Float32Array, parts);
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
