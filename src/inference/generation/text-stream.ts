/**
 * Streaming text hold-back logic: incomplete UTF-8 (trailing U+FFFD) and partial stop strings.
 */

const REPLACEMENT_CHAR = '\uFFFD';

export interface StopPushResult {
  /** text that is now safe to emit ('' if none) */
  text: string;
  /** a stop string was found: `text` ends right before it and nothing more will be emitted */
  stopped: boolean;
}

/**
 * Incremental stop-string matcher over appended chunks of text.
 *
 * push() returns the text that can be emitted: everything up to the first occurrence of any stop string (then
 * `stopped` is true), minus the longest suffix that is a proper prefix of some stop string, which is held back
 * until more text shows whether it really starts a stop string (then it is dropped) or not (then it is emitted).
 * Because a held-back prefix is always re-examined together with the next chunk, stop strings spanning any number
 * of chunks are found. Empty stop strings are ignored.
 */
export class StopStringMatcher {
  readonly stops: readonly string[];
  private buffer = '';
  private isStopped = false;
  private stopString: string | undefined;

  constructor(stops: readonly string[] = []) {
    this.stops = [...new Set(stops.filter((s) => typeof s === 'string' && s.length > 0))];
  }

  get stopped(): boolean {
    return this.isStopped;
  }

  /** the stop string that ended the text, once stopped */
  get matched(): string | undefined {
    return this.stopString;
  }

  /** text currently held back (a possible beginning of a stop string) */
  get held(): string {
    return this.buffer;
  }

  push(chunk: string): StopPushResult {
    if (this.isStopped) return { text: '', stopped: true };
    const buf = this.buffer + chunk;
    const hit = findFirstStop(buf, this.stops);
    if (hit) {
      this.isStopped = true;
      this.stopString = hit.stop;
      this.buffer = '';
      return { text: buf.slice(0, hit.index), stopped: true };
    }
    const hold = partialStopSuffixLength(buf, this.stops);
    this.buffer = buf.slice(buf.length - hold);
    return { text: buf.slice(0, buf.length - hold), stopped: false };
  }

  /** End of text: the held-back partial prefix turned out not to be a stop string; returns it. */
  flush(): string {
    const out = this.isStopped ? '' : this.buffer;
    this.buffer = '';
    return out;
  }
}

/** Earliest occurrence of any of the stop strings in `text` (the longest stop wins a tie at the same index). */
export function findFirstStop(text: string, stops: readonly string[]): { index: number; stop: string } | null {
  let best: { index: number; stop: string } | null = null;
  for (const stop of stops) {
    if (!stop) continue;
    const i = text.indexOf(stop);
    if (i < 0) continue;
    if (!best || i < best.index || (i === best.index && stop.length > best.stop.length)) best = { index: i, stop };
  }
  return best;
}

/** Length of the longest suffix of `text` that is a proper, non-empty prefix of one of the stop strings. */
export function partialStopSuffixLength(text: string, stops: readonly string[]): number {
  let best = 0;
  for (const stop of stops) {
    const max = Math.min(stop.length - 1, text.length);
    for (let len = max; len > best; len--) {
      if (text.endsWith(stop.slice(0, len))) {
        best = len;
        break;
      }
    }
  }
  return best;
}

/** Number of trailing U+FFFD characters (an incomplete UTF-8 sequence as decoded by a byte-fallback decoder). */
function trailingReplacementCount(text: string): number {
  let n = 0;
  while (n < text.length && text[text.length - 1 - n] === REPLACEMENT_CHAR) n++;
  return n;
}

/**
 * Turns "decode the whole generated id list after every token" into streamed pieces.
 *
 * update(fullText) is called with the decoding of ALL generated ids so far and returns the new piece to emit:
 * - trailing U+FFFD characters are held back (they are what decoders produce for an incomplete multi-byte
 *   sequence, which the next byte token may complete); once followed by other text, or at finish(), they are
 *   considered final and emitted;
 * - a suffix that could be the start of a stop string is held back (StopStringMatcher); when a stop string
 *   appears, the text is cut right before it and `stopped` becomes true.
 *
 * Invariant: the concatenation of all returned pieces equals `text` (the final answer once finished).
 * Assumes the decoder is prefix-stable (decode(ids + more) starts with decode(ids) apart from trailing U+FFFD),
 * which holds for sentencepiece/byte-fallback decoding of a growing sequence. If it is not, the already emitted
 * text cannot be taken back; the new text is then continued from the emitted length (best effort).
 */
export class IncrementalTextStream {
  private readonly matcher: StopStringMatcher;
  /** the part of the decoded text that has been fed to the matcher */
  private fed = '';
  private emitted = '';
  private finished = false;

  constructor(stopStrings: readonly string[] = []) {
    this.matcher = new StopStringMatcher(stopStrings);
  }

  /** everything emitted so far (the final text after finish()) */
  get text(): string {
    return this.emitted;
  }

  get stopped(): boolean {
    return this.matcher.stopped;
  }

  /** the stop string that ended the text, if any */
  get matchedStop(): string | undefined {
    return this.matcher.matched;
  }

  update(fullText: string): StopPushResult {
    if (this.finished || this.matcher.stopped) return { text: '', stopped: this.matcher.stopped };
    const safe = fullText.slice(0, fullText.length - trailingReplacementCount(fullText));
    return this.feed(safe);
  }

  /**
   * Generation ended (normally): trailing U+FFFD and a held-back partial stop string are final now.
   * Pass the final decoded text (if it changed since the last update). Returns the last piece ('' if none).
   */
  finish(fullText?: string): string {
    if (this.finished) return '';
    let out = '';
    if (fullText !== undefined && !this.matcher.stopped) out += this.feed(fullText).text;
    if (!this.matcher.stopped) {
      const rest = this.matcher.flush();
      this.emitted += rest;
      out += rest;
    }
    this.finished = true;
    return out;
  }

  private feed(safe: string): StopPushResult {
    let chunk = '';
    if (safe.startsWith(this.fed)) {
      chunk = safe.slice(this.fed.length);
    } else if (safe.length > this.fed.length) {
      chunk = safe.slice(this.fed.length); // decoder not prefix-stable: best effort, see class doc
    }
    if (safe.length >= this.fed.length) this.fed = safe;
    if (!chunk) return { text: '', stopped: false };
    const r = this.matcher.push(chunk);
    this.emitted += r.text;
    return r;
  }
}
