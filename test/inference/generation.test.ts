import { describe, expect, it } from 'vitest';
import {
  beamSearch,
  generate,
  softmax,
  type DecodeState,
  type GenerationEvent,
  type GenerationOptions,
  type StepModel,
  type TokenDecoder,
} from '../../src/inference/generation/index.js';

// ---------------------------------------------------------------------------------------------------------------
// Toy world: 12 tokens, a byte-fallback decoder (TextDecoder => U+FFFD for incomplete UTF-8), a step model whose
// logits are a function of the generated prefix, and exact bookkeeping of every state it creates.
// ---------------------------------------------------------------------------------------------------------------
const A = 0,
  B = 1,
  EOS = 2,
  SP = 3,
  HASH = 4,
  C3 = 5,
  A9 = 6,
  F0 = 7,
  x9F = 8,
  x98 = 9,
  x80 = 10,
  C = 11;
const V = 12;
const TOKEN_BYTES: number[][] = [
  [0x61], // a
  [0x62], // b
  [], // </s> (special: decodes to nothing)
  [0x20], // ' '
  [0x23], // '#'
  [0xc3], // <0xC3>  first byte of 'é'
  [0xa9], // <0xA9>  second byte of 'é'
  [0xf0], // <0xF0>  '😀' = F0 9F 98 80
  [0x9f],
  [0x98],
  [0x80],
  [0x63], // c
];
const decoder: TokenDecoder = {
  decode(ids) {
    const bytes = ids.flatMap((id) => TOKEN_BYTES[id]);
    return new TextDecoder('utf-8').decode(new Uint8Array(bytes));
  },
};

class ToyState implements DecodeState {
  disposeCount = 0;
  constructor(readonly ids: readonly number[]) {}
  get length(): number {
    return this.ids.length;
  }
  dispose(): void {
    this.disposeCount++;
  }
}

interface ToyHooks {
  /** runs inside step() before it returns (call number starts at 1) */
  onStep?: (call: number, signal?: AbortSignal) => void;
  /** reject with an AbortError when the signal is aborted (else: ignore the signal and return normally) */
  honourAbort?: boolean;
}

class ToyModel implements StepModel<ToyState> {
  readonly vocabSize = V;
  readonly created: ToyState[] = [];
  calls = 0;
  batchSizes: number[] = [];
  constructor(
    private readonly logitsFor: (prefix: readonly number[]) => number[],
    private readonly hooks: ToyHooks = {},
  ) {}

  start(): { state: ToyState; logits: Float32Array } {
    const state = this.track(new ToyState([]));
    return { state, logits: Float32Array.from(this.logitsFor([])) };
  }

  async step(states: readonly ToyState[], tokens: readonly number[], signal?: AbortSignal) {
    this.calls++;
    this.batchSizes.push(states.length);
    for (const s of states) if (s.disposeCount > 0) throw new Error('step() on a disposed state');
    await new Promise((r) => setTimeout(r, 0));
    this.hooks.onStep?.(this.calls, signal);
    if (this.hooks.honourAbort && signal?.aborted) throw new DOMException('aborted', 'AbortError');
    const next = states.map((s, i) => this.track(new ToyState([...s.ids, tokens[i]])));
    return { states: next, logits: next.map((s) => Float32Array.from(this.logitsFor(s.ids))) };
  }

  private track(s: ToyState): ToyState {
    this.created.push(s);
    return s;
  }

  /** every state ever created was disposed exactly once */
  expectAllDisposedOnce(): void {
    expect(this.created.length).toBeGreaterThan(0);
    expect(this.created.map((s) => s.disposeCount)).toEqual(this.created.map(() => 1));
  }
}

/** logits = ln(p) for the given probabilities; the remaining mass is shared by every other token */
function fromProbs(p: Record<number, number>): number[] {
  const given = Object.values(p).reduce((s, x) => s + x, 0);
  const others = V - Object.keys(p).length;
  const rest = Math.max(1 - given, 1e-9) / Math.max(others, 1);
  return Array.from({ length: V }, (_, i) => Math.log(p[i] ?? rest));
}

/** a model that deterministically spells out `seq`, then EOS forever */
function scripted(seq: number[]): (prefix: readonly number[]) => number[] {
  return (prefix) => {
    const next = seq[prefix.length] ?? EOS;
    return Array.from({ length: V }, (_, i) => (i === next ? 5 : 0));
  };
}

async function run(it: AsyncIterable<GenerationEvent>) {
  const pieces: string[] = [];
  let done: Extract<GenerationEvent, { type: 'done' }> | undefined;
  for await (const ev of it) {
    expect(done).toBeUndefined(); // 'done' is the last event
    if (ev.type === 'text') pieces.push(ev.text);
    else done = ev;
  }
  if (!done) throw new Error('no done event');
  expect(pieces.join('')).toBe(done.text);
  return { pieces, done };
}

const greedy = (o: Partial<GenerationOptions> = {}): GenerationOptions => ({ maxNewTokens: 20, stopIds: [EOS], ...o });

/** pseudo-random but fixed bigram logits (depend on the last token only) */
function bigram(seed: number): (prefix: readonly number[]) => number[] {
  const table: number[][] = [];
  let x = seed;
  for (let r = 0; r <= V; r++) {
    table.push(
      Array.from({ length: V }, () => {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        return ((x >>> 8) % 1000) / 250 - 2;
      }),
    );
  }
  return (prefix) => table[prefix.length ? prefix[prefix.length - 1] : V];
}

// ---------------------------------------------------------------------------------------------------------------

describe('greedy decoding', () => {
  it('follows the argmax of every step and stops on the stop id (not part of text or ids)', async () => {
    // bigram: start -> a, a -> b, b -> c, c -> </s>
    const next: Record<number, number> = { [-1]: A, [A]: B, [B]: C, [C]: EOS };
    const model = new ToyModel((p) => fromProbs({ [next[p.length ? p[p.length - 1] : -1]]: 0.6 }));
    const { pieces, done } = await run(generate(model, model.start(), decoder, greedy()));
    expect(done).toEqual({ type: 'done', text: 'abc', tokenIds: [A, B, C], finishReason: 'stop', steps: 4 });
    expect(pieces).toEqual(['a', 'b', 'c']);
    expect(model.calls).toBe(3); // no step after the stop token
    model.expectAllDisposedOnce();
  });

  it('equals an independent argmax reference on a random bigram model, ties -> lowest id', async () => {
    const f = bigram(12345);
    const ref: number[] = [];
    for (let i = 0; i < 10; i++) {
      const l = f(ref);
      ref.push(l.indexOf(Math.max(...l)));
    }
    const model = new ToyModel(f);
    const { done } = await run(generate(model, model.start(), decoder, { maxNewTokens: 10 }));
    expect(done.tokenIds).toEqual(ref);
    expect(done.finishReason).toBe('length');
    expect(done.text).toBe(decoder.decode(ref));

    const tie = new ToyModel(() => [0, 3, 1, 3, 3, 0, 0, 0, 0, 0, 0, 0]);
    const t = await run(generate(tie, tie.start(), decoder, { maxNewTokens: 2 }));
    expect(t.done.tokenIds).toEqual([B, B]);
  });

  it('maxNewTokens = 0 generates nothing and still disposes the start state', async () => {
    const model = new ToyModel(scripted([A]));
    const { pieces, done } = await run(generate(model, model.start(), decoder, { maxNewTokens: 0 }));
    expect(pieces).toEqual([]);
    expect(done).toMatchObject({ text: '', tokenIds: [], finishReason: 'length', steps: 0 });
    model.expectAllDisposedOnce();
  });

  it('minNewTokens masks the stop ids for the first tokens (upstream min_length=1)', async () => {
    // </s> is the argmax at the first position, 'b' second best
    const model = new ToyModel((p) => (p.length === 0 ? fromProbs({ [EOS]: 0.5, [B]: 0.3 }) : fromProbs({ [EOS]: 0.9 })));
    const noMin = await run(generate(model, model.start(), decoder, greedy()));
    expect(noMin.done).toMatchObject({ text: '', tokenIds: [], finishReason: 'stop', steps: 1 });
    const withMin = await run(generate(model, model.start(), decoder, greedy({ minNewTokens: 1 })));
    expect(withMin.done).toMatchObject({ text: 'b', tokenIds: [B], finishReason: 'stop', steps: 2 });
    model.expectAllDisposedOnce();
  });
});

describe('repetition penalty (HF, over generated ids only)', () => {
  it('divides positive logits: a -> 2.0/1.2 = 1.667 < b 1.9', async () => {
    const table = (p: readonly number[]): number[] => {
      const l = new Array(V).fill(0);
      const last = p.length ? p[p.length - 1] : -1;
      if (last === -1) Object.assign(l, { [A]: 2.0, [B]: 1.5 });
      else if (last === A) Object.assign(l, { [A]: 2.0, [B]: 1.9, [C]: 1.0 });
      else if (last === B)
        Object.assign(l, { [B]: 2.4, [C]: 2.1 }); // b penalised: 2.4/1.2 = 2.0 < 2.1
      else l[EOS] = 9;
      return l;
    };
    const model = new ToyModel(table);
    const start = model.start();
    const startCopy = Float32Array.from(start.logits);
    const plain = await run(generate(model, start, decoder, { maxNewTokens: 3 }));
    expect(plain.done.text).toBe('aaa');
    expect(Array.from(start.logits)).toEqual(Array.from(startCopy)); // caller's logits untouched
    const m2 = new ToyModel(table);
    const pen = await run(generate(m2, m2.start(), decoder, { maxNewTokens: 3, repetitionPenalty: 1.2 }));
    expect(pen.done.text).toBe('abc');
  });

  it('multiplies negative logits: a -> -1.0*1.2 = -1.2 < b -1.1', async () => {
    const table = (): number[] => Object.assign(new Array(V).fill(-5), { [A]: -1.0, [B]: -1.1 });
    const model = new ToyModel(table);
    expect((await run(generate(model, model.start(), decoder, { maxNewTokens: 2 }))).done.text).toBe('aa');
    expect((await run(generate(model, model.start(), decoder, { maxNewTokens: 2, repetitionPenalty: 1.2 }))).done.text).toBe('ab');
    // a third token: both a and b are penalised (-1.2, -1.32), the rest stays at -5 -> 'a' again
    expect((await run(generate(model, model.start(), decoder, { maxNewTokens: 3, repetitionPenalty: 1.2 }))).done.text).toBe('aba');
    model.expectAllDisposedOnce();
  });
});

describe("OpenAI's frequency / presence penalties and logit bias", () => {
  // constant logits: a 2, b 1.75, c 1.125, the rest 0 (binary fractions: the sums below are exact)
  const table = (): number[] => Object.assign(new Array(V).fill(0), { [A]: 2, [B]: 1.75, [C]: 1.125 });
  const text = async (o: Partial<GenerationOptions>) => {
    const model = new ToyModel(table);
    const r = await run(generate(model, model.start(), decoder, { maxNewTokens: 5, ...o }));
    model.expectAllDisposedOnce();
    return r.done.text;
  };

  it('frequency: each earlier occurrence costs the penalty again', async () => {
    expect(await text({})).toBe('aaaaa');
    // a 2 | a 1.5 < b 1.75 | a 1.5 > b 1.25 | a 1 < b 1.25 | a 1, b 0.75 < c 1.125
    expect(await text({ frequencyPenalty: 0.5 })).toBe('ababc');
  });

  it('presence: once, however often the token came', async () => {
    // a 2 | a 1.375 < b 1.75 | a 1.375 > b 1.125, c 1.125 | the same scores from then on
    expect(await text({ presencePenalty: 0.625 })).toBe('abaaa');
    // negative values favour what was said: b 1.75 + 0.5 stays above a 2 once b came (forced first)
    expect(await text({ presencePenalty: -0.5, logitBias: [[B, 0.5]] })).toBe('bbbbb');
  });

  it('logit bias: added to the logits, then the penalties count as usual; ids outside the vocabulary skipped', async () => {
    expect(await text({ logitBias: [[A, -100]] })).toBe('bbbbb');
    expect(await text({ logitBias: [[C, 0.75]] })).toBe('aaaaa'); // c 1.875 < a 2
    expect(
      await text({
        logitBias: [
          [C, 1],
          [V + 3, 50],
        ],
      }),
    ).toBe('ccccc'); // c 2.125
    // c 2.125 | c 1.625 < a 2 | a 1.5 < b 1.75 | a 1.5, b 1.25 < c 1.625 | c 1.125 < a 1.5
    expect(await text({ logitBias: [[C, 1]], frequencyPenalty: 0.5 })).toBe('cabca');
  });

  it('a banned token is never sampled', async () => {
    const seen = new Set<number>();
    for (let seed = 0; seed < 300; seed++) {
      const model = new ToyModel(table);
      const { done } = await run(
        generate(model, model.start(), decoder, { maxNewTokens: 1, doSample: true, temperature: 1, topK: 0, seed, logitBias: [[A, -100]] }),
      );
      seen.add(done.tokenIds[0]);
    }
    expect(seen.has(A)).toBe(false);
    expect(seen.has(B) && seen.has(C)).toBe(true);
  });

  it('beam search applies them to each beam before its log-softmax', async () => {
    const one = new ToyModel(table);
    const r1 = await beamSearch(one, one.start(), { maxNewTokens: 5, numBeams: 1, frequencyPenalty: 0.5 }, { decoder });
    expect(r1.text).toBe('ababc'); // one beam is greedy decoding
    one.expectAllDisposedOnce();
    const two = new ToyModel(table);
    const r2 = await beamSearch(two, two.start(), { maxNewTokens: 5, numBeams: 2, logitBias: [[C, 10]] }, { decoder });
    expect(r2.text).toBe('ccccc');
    two.expectAllDisposedOnce();
  });

  it('refuses values that are not numbers or ids', async () => {
    const model = new ToyModel(table);
    for (const bad of [
      { frequencyPenalty: Number.NaN },
      { presencePenalty: Number.POSITIVE_INFINITY },
      { logitBias: [[-1, 1]] as [number, number][] },
      { logitBias: [[A, Number.NaN]] as [number, number][] },
    ]) {
      await expect(run(generate(model, model.start(), decoder, { maxNewTokens: 2, ...bad }))).rejects.toThrow(RangeError);
    }
  });
});

describe('log-probabilities of the answer (logprobs)', () => {
  // scripted(): the next token's logit 5, every other one 0
  const lse = Math.log(Math.exp(5) + (V - 1));
  const entry = (id: number, top: number[]) => ({
    id,
    logprob: expect.closeTo(5 - lse, 12),
    top: top.map((t) => ({ id: t, logprob: expect.closeTo((t === id ? 5 : 0) - lse, 12) })),
  });
  const events = async (seq: number[], o: Partial<GenerationOptions>) => {
    const model = new ToyModel(scripted(seq));
    const out: GenerationEvent[] = [];
    for await (const ev of generate(model, model.start(), decoder, { maxNewTokens: 10, stopIds: [EOS], ...o })) out.push(ev);
    model.expectAllDisposedOnce();
    return out;
  };

  it('comes with the piece that completes each token, best alternatives first (ties: lower id), the stop id left out', async () => {
    const out = await events([A, C3, A9, B, EOS], { logprobs: 2 });
    expect(out.filter((e) => e.type === 'text')).toEqual([
      { type: 'text', text: 'a', logprobs: [entry(A, [A, B])] },
      // the two bytes of 'é' come with the piece that shows it
      { type: 'text', text: 'é', logprobs: [entry(C3, [C3, A]), entry(A9, [A9, A])] },
      { type: 'text', text: 'b', logprobs: [entry(B, [B, A])] },
    ]);
    expect(out.at(-1)).toMatchObject({ type: 'done', text: 'aéb', tokenIds: [A, C3, A9, B] });
  });

  it('is the raw model distribution, whatever the sampling settings; none without asking', async () => {
    const out = await events([A, B], {
      logprobs: 0,
      temperature: 0.5,
      doSample: true,
      seed: 3,
      topK: 1,
      maxNewTokens: 2,
      frequencyPenalty: 1,
    });
    expect(out.filter((e) => e.type === 'text')).toEqual([
      { type: 'text', text: 'a', logprobs: [entry(A, [])] },
      { type: 'text', text: 'b', logprobs: [entry(B, [])] },
    ]);
    expect((await events([A, B], {})).filter((e) => e.type === 'text')).toEqual([
      { type: 'text', text: 'a' },
      { type: 'text', text: 'b' },
    ]);
  });

  it('leaves out the tokens a stop string cut away; an answer ended by maxNewTokens keeps all', async () => {
    const cut = await events([A, HASH, HASH, B], { logprobs: 1, stopStrings: ['##'] });
    expect(cut.flatMap((e) => (e.type === 'text' ? (e.logprobs ?? []).map((l) => l.id) : []))).toEqual([A]);
    expect(cut.at(-1)).toMatchObject({ text: 'a', finishReason: 'stop' });
    // a held-back '#' that was no stop string after all: handed out at the end with its text
    const held = await events([A, HASH], { logprobs: 1, stopStrings: ['##'], maxNewTokens: 2 });
    expect(held.filter((e) => e.type === 'text')).toEqual([
      { type: 'text', text: 'a', logprobs: [entry(A, [A])] },
      { type: 'text', text: '#', logprobs: [entry(HASH, [HASH])] },
    ]);
  });

  it('refuses more than 20 alternatives', async () => {
    await expect(events([A], { logprobs: 21 })).rejects.toThrow(RangeError);
  });
});

describe('sampling', () => {
  const firstLogits = [1.5, 0.2, -9, 0.9, 1.1, -0.4, -9, -9, -9, -9, -9, 0.6];
  const firstTokenDist = async (o: Partial<GenerationOptions>, n: number) => {
    const counts = new Array(V).fill(0);
    for (let seed = 0; seed < n; seed++) {
      const model = new ToyModel(() => firstLogits);
      const { done } = await run(generate(model, model.start(), decoder, { maxNewTokens: 1, doSample: true, topK: 0, seed, ...o }));
      counts[done.tokenIds[0]]++;
    }
    return counts.map((c) => c / n);
  };

  it('is reproducible with a seed and varies across seeds', async () => {
    const f = bigram(99);
    const once = async (seed: number) => {
      const model = new ToyModel(f);
      const r = await run(generate(model, model.start(), decoder, { maxNewTokens: 16, temperature: 1.3, seed }));
      model.expectAllDisposedOnce();
      return r.done.tokenIds;
    };
    const a = await once(1234);
    expect(await once(1234)).toEqual(a);
    const others = await Promise.all([1, 2, 3, 4, 5].map(once));
    expect(others.some((o) => o.join() !== a.join())).toBe(true);
  });

  it('empirical distribution of the first token matches softmax(logits / T)', async () => {
    const n = 3000;
    const freq = await firstTokenDist({ temperature: 0.8 }, n);
    const p = softmax(firstLogits.map((x) => x / 0.8));
    for (let i = 0; i < V; i++) {
      const sd = Math.sqrt((p[i] * (1 - p[i])) / n);
      expect(Math.abs(freq[i] - p[i])).toBeLessThanOrEqual(5 * sd + 1e-3);
    }
  });

  it('top-p samples only the nucleus, renormalised; top-k only the k best', async () => {
    const p = softmax(firstLogits);
    // ranks: a(1.5) '#'(1.1) ' '(0.9) c(0.6) b(0.2) ...; nucleus for 0.7: smallest prefix reaching 0.7
    const order = [A, HASH, SP, C, B, 5];
    let mass = 0;
    const nucleus: number[] = [];
    for (const t of order) {
      if (mass >= 0.7) break;
      nucleus.push(t);
      mass += p[t];
    }
    expect(nucleus).toEqual([A, HASH, SP]);
    const n = 3000;
    const freq = await firstTokenDist({ topP: 0.7 }, n);
    for (let i = 0; i < V; i++) {
      const q = nucleus.includes(i) ? p[i] / mass : 0;
      if (q === 0) expect(freq[i]).toBe(0);
      else expect(Math.abs(freq[i] - q)).toBeLessThanOrEqual(5 * Math.sqrt((q * (1 - q)) / n));
    }
    const k2 = await firstTokenDist({ topK: 2 }, 1000);
    expect(k2.flatMap((f, i) => (f > 0 ? [i] : []))).toEqual([A, HASH]);
  });

  it('temperature 0 or doSample false is greedy', async () => {
    const model = new ToyModel(() => firstLogits);
    for (const o of [{ temperature: 0, doSample: true }, { doSample: false, temperature: 2 }, {}]) {
      const { done } = await run(generate(model, model.start(), decoder, { maxNewTokens: 3, seed: 5, ...o }));
      expect(done.tokenIds).toEqual([A, A, A]);
    }
  });
});

describe('streaming text', () => {
  it('never emits a partial UTF-8 character; pieces concatenate to the final text', async () => {
    const seq = [A, C3, A9, SP, F0, x9F, x98, x80, B];
    const model = new ToyModel(scripted(seq));
    const { pieces, done } = await run(generate(model, model.start(), decoder, greedy()));
    expect(done.text).toBe('aé 😀b');
    expect(done.tokenIds).toEqual(seq);
    expect(pieces).toEqual(['a', 'é', ' ', '😀', 'b']);
    for (const piece of pieces) expect(piece).not.toContain('\uFFFD');
  });

  it('emits U+FFFD that is really in the text (invalid byte, or incomplete at the end)', async () => {
    const model = new ToyModel(scripted([A, A9, B, C3]));
    const { pieces, done } = await run(generate(model, model.start(), decoder, { maxNewTokens: 4 }));
    expect(done.text).toBe('a\uFFFDb\uFFFD');
    expect(done.finishReason).toBe('length');
    expect(pieces).toEqual(['a', '\uFFFDb', '\uFFFD']);
  });
});

describe('stop strings and stop ids', () => {
  it('a stop string spanning several tokens ends generation; text is cut before it', async () => {
    const model = new ToyModel(scripted([A, HASH, HASH, HASH, B, C]));
    const { pieces, done } = await run(generate(model, model.start(), decoder, greedy({ stopStrings: ['###'] })));
    expect(done).toMatchObject({ text: 'a', finishReason: 'stop', steps: 4, tokenIds: [A, HASH, HASH, HASH] });
    expect(pieces).toEqual(['a']);
    expect(model.calls).toBe(3);
    model.expectAllDisposedOnce();
  });

  it('a held-back prefix that turns out not to be a stop string is emitted', async () => {
    const model = new ToyModel(scripted([A, HASH, HASH, B, C]));
    const { pieces, done } = await run(generate(model, model.start(), decoder, greedy({ stopStrings: ['###', 'bb'] })));
    expect(done).toMatchObject({ text: 'a##bc', finishReason: 'stop', tokenIds: [A, HASH, HASH, B, C] });
    expect(pieces).toEqual(['a', '##', 'bc']); // '#', '##' held; 'b' held (prefix of 'bb') until 'c'
  });

  it('a held-back prefix is flushed when maxNewTokens ends generation', async () => {
    const model = new ToyModel(scripted([A, HASH, HASH]));
    const { pieces, done } = await run(generate(model, model.start(), decoder, greedy({ maxNewTokens: 3, stopStrings: ['###'] })));
    expect(done).toMatchObject({ text: 'a##', finishReason: 'length' });
    expect(pieces).toEqual(['a', '##']);
  });

  it('a stop string inside one token and one across a multi-byte character', async () => {
    const model = new ToyModel(scripted([B, A, C3, A9, C]));
    const r = await run(generate(model, model.start(), decoder, greedy({ stopStrings: ['aé'] })));
    expect(r.done).toMatchObject({ text: 'b', finishReason: 'stop', steps: 4 });
    const m2 = new ToyModel(scripted([A, B, C]));
    const r2 = await run(generate(m2, m2.start(), decoder, greedy({ stopStrings: ['b'] })));
    expect(r2.done).toMatchObject({ text: 'a', finishReason: 'stop', steps: 2 });
    expect(r2.pieces).toEqual(['a']);
  });
});

describe('beam search (HF BeamSearchScorer semantics)', () => {
  // start: a 0.6, b 0.4 | a: </s> 0.5, # 0.5 | b: c 0.5 | a#: </s> pEos | bc, a##: </s> ~1
  const tree =
    (pEos: number) =>
    (p: readonly number[]): number[] => {
      switch (decoder.decode(p)) {
        case '':
          return fromProbs({ [A]: 0.6, [B]: 0.4 });
        case 'a':
          return fromProbs({ [EOS]: 0.5, [HASH]: 0.5 });
        case 'b':
          return fromProbs({ [C]: 0.5 });
        case 'a#':
          return fromProbs({ [EOS]: pEos, [HASH]: 1 - pEos - 1e-6 });
        default:
          return fromProbs({ [EOS]: 0.999999 });
      }
    };

  it('numBeams = 1 equals greedy (no stop ids)', async () => {
    for (const seed of [1, 2, 3]) {
      const f = bigram(seed);
      const g = new ToyModel(f);
      const gr = await run(generate(g, g.start(), decoder, { maxNewTokens: 12 }));
      const b = new ToyModel(f);
      const br = await beamSearch(b, b.start(), { maxNewTokens: 12, numBeams: 1 }, { decoder });
      expect(br.tokenIds).toEqual(gr.done.tokenIds);
      expect(br.text).toBe(gr.done.text);
      b.expectAllDisposedOnce();
    }
  });

  it('finds a sequence with a higher total log-prob than greedy', async () => {
    // greedy: a (0.5) then the flat continuation (0.3): 0.15; beam: b (0.4) then c (0.9): 0.36
    const f = (p: readonly number[]) =>
      p.length === 0
        ? fromProbs({ [A]: 0.5, [B]: 0.4 })
        : p[0] === A
          ? fromProbs({ [C]: 0.3, [SP]: 0.29, [HASH]: 0.29 })
          : fromProbs({ [C]: 0.9 });
    const logp = (ids: number[]) => ids.reduce((s, t, i) => s + Math.log(softmax(f(ids.slice(0, i)))[t]), 0);
    const g = new ToyModel(f);
    const gr = await run(generate(g, g.start(), decoder, { maxNewTokens: 2 }));
    expect(gr.done.tokenIds).toEqual([A, C]);
    const b = new ToyModel(f);
    const br = await beamSearch(b, b.start(), { maxNewTokens: 2, numBeams: 2 }, { decoder });
    expect(br.tokenIds).toEqual([B, C]);
    expect(br.text).toBe('bc');
    expect(br.finishReason).toBe('length');
    expect(logp(br.tokenIds)).toBeGreaterThan(logp(gr.done.tokenIds));
    expect(br.score).toBeCloseTo((Math.log(0.4) + Math.log(0.9)) / 2, 5); // open beam: sum / len ** 1
    expect(b.batchSizes).toEqual([2]); // one batched step for both beams
    b.expectAllDisposedOnce(); // the start state was shared by both beams
  });

  it('length penalty: sum / len ** lp, stop token excluded from len, open beams compete at the end', async () => {
    const search = async (pEos: number, lengthPenalty: number) => {
      const m = new ToyModel(tree(pEos));
      const r = await beamSearch(m, m.start(), { maxNewTokens: 3, numBeams: 2, stopIds: [EOS], lengthPenalty }, { decoder });
      m.expectAllDisposedOnce();
      return r;
    };
    const [la, lHash, lEos] = [Math.log(0.6), Math.log(0.5), Math.log(0.9)];
    // finished hypotheses: [a] = la+ln.5 (len 1), [a #] = la+ln.5+ln.9 (len 2), [b c] = lb+ln.5 (len 2)
    // lp 0: -1.20 / -1.31 / -1.61 -> [a]; HF is_done: worst kept (-1.31) >= best candidate (-1.31) / 3**0 -> done
    const lp0 = await search(0.9, 0);
    expect(lp0).toMatchObject({ tokenIds: [A], text: 'a', finishReason: 'stop' });
    expect(lp0.score).toBeCloseTo(la + lHash, 6);
    // lp 1: -1.20 / -0.65 / -0.80 -> [a #]
    const lp1 = await search(0.9, 1);
    expect(lp1).toMatchObject({ tokenIds: [A, HASH], text: 'a#', finishReason: 'stop' });
    expect(lp1.score).toBeCloseTo((la + lHash + lEos) / 2, 6);
    expect(lp1.hypotheses.map((h) => decoder.decode(h.tokenIds))).toEqual(['a#', 'bc']);
    // with P(</s> | a#) = 0.5, not done after step 3 (worst -0.80 < -1.90 / 3); the open beam 'a##'
    // (la + 2 ln .5) / 3 = -0.63 beats every finished hypothesis and is returned with finishReason 'length'
    const open = await search(0.5, 1);
    expect(open).toMatchObject({ tokenIds: [A, HASH, HASH], text: 'a##', finishReason: 'length' });
    expect(open.score).toBeCloseTo((la + 2 * lHash) / 3, 5);
    // greedy: 'a', then the tie </s> vs '#' goes to the lowest id (</s>)
    const g = new ToyModel(tree(0.9));
    expect((await run(generate(g, g.start(), decoder, greedy()))).done.text).toBe('a');
  });

  it('through generate(): one text event with the final answer, all states disposed once', async () => {
    const opts = { maxNewTokens: 3, numBeams: 3, stopIds: [EOS], lengthPenalty: 1 };
    const ref = new ToyModel(tree(0.9));
    const expected = await beamSearch(ref, ref.start(), opts, { decoder });
    const m = new ToyModel(tree(0.9));
    const { pieces, done } = await run(generate(m, m.start(), decoder, opts));
    expect(pieces).toEqual([expected.text]);
    expect(done).toEqual({ type: 'done', text: expected.text, tokenIds: expected.tokenIds, finishReason: 'stop', steps: expected.steps });
    m.expectAllDisposedOnce();
    expect(m.batchSizes.length).toBeGreaterThan(0);
    expect(m.batchSizes.every((n) => n === 3)).toBe(true);
  });

  it('stops when every beam contains a stop string and cuts the text', async () => {
    const f = (p: readonly number[]) => (p.length === 0 ? fromProbs({ [A]: 0.99 }) : fromProbs({ [HASH]: 0.7, [B]: 0.2 }));
    const m = new ToyModel(f);
    const r = await beamSearch(m, m.start(), { maxNewTokens: 30, numBeams: 2, stopStrings: ['###'] }, { decoder });
    expect(r.text).toBe('a');
    expect(r.finishReason).toBe('stop');
    expect(r.steps).toBeLessThan(30);
    m.expectAllDisposedOnce();
  });

  it('beam sampling is seeded and reproducible', async () => {
    const f = bigram(7);
    const once = async (seed: number) => {
      const m = new ToyModel(f);
      const r = await beamSearch(m, m.start(), { maxNewTokens: 8, numBeams: 3, doSample: true, topP: 0.9, seed }, { decoder });
      m.expectAllDisposedOnce();
      return r.tokenIds;
    };
    const a = await once(3);
    expect(a).toHaveLength(8);
    expect(await once(3)).toEqual(a);
  });
});

describe('cancellation and disposal', () => {
  for (const honourAbort of [false, true]) {
    it(`abort during a greedy step (model ${honourAbort ? 'rejects' : 'ignores the signal'})`, async () => {
      const ctrl = new AbortController();
      const model = new ToyModel(scripted([A, B, C, A, B, C, A]), {
        honourAbort,
        onStep: (call) => call === 3 && ctrl.abort(),
      });
      const { pieces, done } = await run(generate(model, model.start(), decoder, greedy(), ctrl.signal));
      expect(done.finishReason).toBe('aborted');
      expect(done.text).toBe('abc');
      expect(pieces).toEqual(['a', 'b', 'c']);
      expect(done.tokenIds).toEqual([A, B, C]);
      expect(model.calls).toBe(3);
      model.expectAllDisposedOnce();
    });

    it(`abort during a beam step (model ${honourAbort ? 'rejects' : 'ignores the signal'})`, async () => {
      const ctrl = new AbortController();
      const model = new ToyModel(bigram(5), { honourAbort, onStep: (call) => call === 2 && ctrl.abort() });
      const { pieces, done } = await run(generate(model, model.start(), decoder, { maxNewTokens: 10, numBeams: 4 }, ctrl.signal));
      expect(done.finishReason).toBe('aborted');
      expect(pieces).toEqual([]);
      expect(model.calls).toBe(2);
      model.expectAllDisposedOnce();
    });
  }

  it('abort between steps (by the consumer) and before the start', async () => {
    const ctrl = new AbortController();
    const model = new ToyModel(scripted([A, B, C]));
    const events: GenerationEvent[] = [];
    for await (const ev of generate(model, model.start(), decoder, greedy(), ctrl.signal)) {
      events.push(ev);
      if (ev.type === 'text' && ev.text === 'b') ctrl.abort();
    }
    expect(events.at(-1)).toMatchObject({ type: 'done', finishReason: 'aborted', text: 'ab', steps: 2 });
    expect(model.calls).toBe(1);
    model.expectAllDisposedOnce();

    const m2 = new ToyModel(scripted([A]));
    const pre = new AbortController();
    pre.abort();
    const r = await run(generate(m2, m2.start(), decoder, greedy(), pre.signal));
    expect(r.done).toMatchObject({ finishReason: 'aborted', text: '', steps: 0 });
    expect(m2.calls).toBe(0);
    m2.expectAllDisposedOnce();
    const m3 = new ToyModel(scripted([A]));
    const r3 = await beamSearch(m3, m3.start(), { maxNewTokens: 5, numBeams: 2 }, { signal: pre.signal });
    expect(r3.finishReason).toBe('aborted');
    m3.expectAllDisposedOnce();
  });

  it('breaking out of for-await disposes every state', async () => {
    const model = new ToyModel(scripted([A, B, C, A, B]));
    for await (const ev of generate(model, model.start(), decoder, greedy())) {
      if (ev.type === 'text' && ev.text === 'b') break;
    }
    expect(model.calls).toBe(1);
    model.expectAllDisposedOnce();

    const m2 = new ToyModel(scripted([A, B, C, A, B]));
    for await (const ev of generate(m2, m2.start(), decoder, { maxNewTokens: 5, numBeams: 2 })) {
      expect(ev.type).toBe('text');
      break;
    }
    m2.expectAllDisposedOnce();
  });

  it('invalid options and model errors throw, after disposing everything', async () => {
    const model = new ToyModel(scripted([A]));
    await expect(run(generate(model, model.start(), decoder, greedy({ topP: 2 })))).rejects.toThrow(RangeError);
    model.expectAllDisposedOnce();
    const failing = new ToyModel(scripted([A, B, C]), {
      onStep: (call) => {
        if (call === 2) throw new Error('onnx failed');
      },
    });
    await expect(run(generate(failing, failing.start(), decoder, greedy()))).rejects.toThrow('onnx failed');
    failing.expectAllDisposedOnce();
  });
});
