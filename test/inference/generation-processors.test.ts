import { describe, expect, it } from 'vitest';
import {
  IncrementalTextStream,
  applyCountPenalties,
  applyLogitBias,
  StopStringMatcher,
  applyRepetitionPenalty,
  applyTemperature,
  argmax,
  createRng,
  logSoftmax,
  sampleFrom,
  softmax,
  topKFilter,
  topPFilter,
} from '../../src/inference/generation/index.js';

const NEG = Number.NEGATIVE_INFINITY;
const kept = (s: ArrayLike<number>) => Array.from(s).flatMap((v, i) => (v === NEG ? [] : [i]));

describe('argmax / softmax', () => {
  it('argmax returns the first maximum like torch.argmax', () => {
    expect(argmax([1, 3, 3, 2])).toBe(1);
    expect(argmax([NEG, NEG])).toBe(0);
    expect(argmax([1, Number.NaN, 5])).toBe(1);
    expect(argmax(new Float32Array([-2, -1, -1.5]))).toBe(1);
  });

  it('softmax is normalised, shift invariant and gives exp(-inf) = 0', () => {
    const p = softmax([1, 2, 3, NEG]);
    const e = [Math.exp(1), Math.exp(2), Math.exp(3)];
    const z = e[0] + e[1] + e[2];
    expect(p[0]).toBeCloseTo(e[0] / z, 14);
    expect(p[2]).toBeCloseTo(e[2] / z, 14);
    expect(p[3]).toBe(0);
    const q = softmax([1001, 1002, 1003, NEG]);
    for (let i = 0; i < 4; i++) expect(q[i]).toBeCloseTo(p[i], 12);
    const l = logSoftmax([1, 2, 3]);
    expect(l[2]).toBeCloseTo(Math.log(e[2] / z), 12);
  });
});

describe('applyRepetitionPenalty (HF RepetitionPenaltyLogitsProcessor)', () => {
  it('divides positive, multiplies negative, leaves 0, once per distinct id', () => {
    const s = new Float64Array([2, -2, 0, 1]);
    applyRepetitionPenalty(s, [0, 1, 2, 0, 0], 2);
    expect(Array.from(s)).toEqual([1, -4, 0, 1]);
  });
  it('is a no-op for penalty 1 or no ids and rejects invalid penalties', () => {
    const s = [2, -2];
    expect(applyRepetitionPenalty(s, [0, 1], 1)).toEqual([2, -2]);
    expect(applyRepetitionPenalty(s, [], 3)).toEqual([2, -2]);
    expect(() => applyRepetitionPenalty(s, [0], 0)).toThrow(RangeError);
  });
});

describe("OpenAI's logit bias and count penalties", () => {
  it('adds the bias per id, skipping ids outside the vocabulary', () => {
    expect(
      Array.from(
        applyLogitBias(new Float64Array([1, 2, 3]), [
          [0, 0.5],
          [2, -1],
          [7, 9],
          [-1, 4],
        ]),
      ),
    ).toEqual([1.5, 2, 2]);
  });
  it('takes count x frequency + presence from each generated id', () => {
    const s = applyCountPenalties(new Float64Array([1, 1, 1, 1]), [0, 0, 2, 9, 0], 0.5, 0.25);
    expect(Array.from(s)).toEqual([1 - 3 * 0.5 - 0.25, 1, 1 - 0.5 - 0.25, 1]);
    expect(Array.from(applyCountPenalties([1, 1], [0, 1, 1], -0.5, 0))).toEqual([1.5, 2]);
    expect(Array.from(applyCountPenalties([1, 1], [0], 0, 0))).toEqual([1, 1]);
  });
});

describe('topKFilter / temperature', () => {
  it('keeps the k best and every tie of the k-th value', () => {
    expect(kept(topKFilter([1, 5, 3, 3, 0], 2))).toEqual([1, 2, 3]);
    expect(kept(topKFilter([1, 5, 3, 2, 0], 2))).toEqual([1, 2]);
    expect(kept(topKFilter([1, 5, 3, 2, 0], 1, 3))).toEqual([1, 2, 3]); // min_tokens_to_keep
    expect(kept(topKFilter([1, 5, 3], 0))).toEqual([0, 1, 2]); // disabled
    const big = Array.from({ length: 200 }, (_, i) => (i * 37) % 200);
    expect(kept(topKFilter([...big], 100)).length).toBe(100);
  });
  it('temperature divides the scores', () => {
    expect(Array.from(applyTemperature(new Float64Array([1, -2]), 0.5))).toEqual([2, -4]);
    expect(() => applyTemperature([1], 0)).toThrow(RangeError);
  });
});

describe('topPFilter (HF TopPLogitsWarper)', () => {
  const logits = () => new Float64Array([0.5, 0.3, 0.15, 0.05].map(Math.log));
  it('keeps the minimal nucleus whose mass reaches p', () => {
    expect(kept(topPFilter(logits(), 0.75))).toEqual([0, 1]); // 0.5 + 0.3 >= 0.75
    expect(kept(topPFilter(logits(), 0.85))).toEqual([0, 1, 2]); // 0.8 < 0.85
    expect(kept(topPFilter(logits(), 0.4))).toEqual([0]);
    expect(kept(topPFilter(logits(), 1))).toEqual([0, 1, 2, 3]);
  });
  it('keeps at least minTokensToKeep tokens (1 by default, even for p = 0)', () => {
    expect(kept(topPFilter(logits(), 0))).toEqual([0]);
    expect(kept(topPFilter(logits(), 0.4, 3))).toEqual([0, 1, 2]);
  });
  it('ranks tied scores by id: lower ids are kept first at the boundary', () => {
    expect(kept(topPFilter(new Float64Array([0, 0, 0, 0]), 0.5))).toEqual([0, 1]);
    expect(kept(topPFilter(new Float64Array([0, 0, 0, 0]), 0.6))).toEqual([0, 1, 2]);
    expect(kept(topPFilter(new Float64Array([1, 0, 0, 0]), 0.1))).toEqual([0]);
  });
  it('ignores already removed tokens and validates p', () => {
    expect(kept(topPFilter(new Float64Array([NEG, Math.log(0.6), Math.log(0.4)]), 0.5))).toEqual([1]);
    expect(() => topPFilter([0, 0], 1.5)).toThrow(RangeError);
  });
});

describe('createRng / sampleFrom', () => {
  it('is reproducible per seed and uniform on [0, 1)', () => {
    const a = createRng(42);
    const b = createRng(42);
    const c = createRng(43);
    const xs = Array.from({ length: 1000 }, () => a());
    expect(Array.from({ length: 1000 }, () => b())).toEqual(xs);
    expect(Array.from({ length: 10 }, () => c())).not.toEqual(xs.slice(0, 10));
    expect(Math.min(...xs)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...xs)).toBeLessThan(1);
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    expect(mean).toBeGreaterThan(0.45);
    expect(mean).toBeLessThan(0.55);
  });

  it('empirical distribution of sampleFrom matches the softmax', () => {
    const probs = softmax([1.2, 0.3, -0.5, 2.0, NEG, 0.9]);
    const rng = createRng(7);
    const n = 40000;
    const counts = new Array(probs.length).fill(0);
    for (let i = 0; i < n; i++) counts[sampleFrom(probs, rng)]++;
    for (let i = 0; i < probs.length; i++) {
      const sd = Math.sqrt((probs[i] * (1 - probs[i])) / n);
      expect(Math.abs(counts[i] / n - probs[i])).toBeLessThanOrEqual(5 * sd + 1e-12);
    }
    expect(counts[4]).toBe(0);
  });

  it('never returns a zero-probability entry and rejects empty distributions', () => {
    expect(sampleFrom([0, 1, 0], () => 0)).toBe(1);
    expect(sampleFrom([0, 1, 0], () => 0.999999)).toBe(1);
    expect(sampleFrom([0.5, 0, 0.5], () => 0.5)).toBe(2);
    expect(() => sampleFrom([0, 0], () => 0.3)).toThrow(RangeError);
    expect(() => sampleFrom(softmax([NEG, NEG]), () => 0.3)).toThrow(RangeError);
  });
});

describe('StopStringMatcher', () => {
  it('finds a stop string spread over chunks and holds back its prefix', () => {
    const m = new StopStringMatcher(['###']);
    expect(m.push('ab#')).toEqual({ text: 'ab', stopped: false });
    expect(m.held).toBe('#');
    expect(m.push('#')).toEqual({ text: '', stopped: false });
    expect(m.push('#tail')).toEqual({ text: '', stopped: true });
    expect(m.matched).toBe('###');
    expect(m.push('more')).toEqual({ text: '', stopped: true });
    expect(m.flush()).toBe('');
  });

  it('releases a prefix that turns out not to be a stop string', () => {
    const m = new StopStringMatcher(['###', '</s>']);
    expect(m.push('x##')).toEqual({ text: 'x', stopped: false });
    expect(m.push('y<')).toEqual({ text: '##y', stopped: false });
    expect(m.push('/')).toEqual({ text: '', stopped: false });
    expect(m.flush()).toBe('</');
  });

  it('cuts at the earliest of several stop strings', () => {
    const m = new StopStringMatcher(['bc', 'abc', 'zz']);
    expect(m.push('xab')).toEqual({ text: 'x', stopped: false });
    expect(m.push('cz')).toEqual({ text: '', stopped: true });
    expect(m.matched).toBe('abc');
  });
});

describe('IncrementalTextStream', () => {
  it('holds back trailing U+FFFD until the character is complete', () => {
    const s = new IncrementalTextStream();
    expect(s.update('a').text).toBe('a');
    expect(s.update('a\uFFFD').text).toBe('');
    expect(s.update('aé').text).toBe('é');
    expect(s.update('aé\uFFFD\uFFFD').text).toBe('');
    expect(s.update('aé\uFFFD\uFFFDb').text).toBe('\uFFFD\uFFFDb'); // really invalid: final once followed by text
    expect(s.update('aé\uFFFD\uFFFDb\uFFFD').text).toBe('');
    expect(s.finish('aé\uFFFD\uFFFDb\uFFFD')).toBe('\uFFFD'); // generation ended: emit it
    expect(s.text).toBe('aé\uFFFD\uFFFDb\uFFFD');
  });

  it('combines U+FFFD and stop-prefix hold-back', () => {
    const s = new IncrementalTextStream(['##']);
    const pieces = ['x#', 'x#\uFFFD', 'x#é', 'x#é#', 'x#é##y'].map((t) => s.update(t));
    expect(pieces.map((p) => p.text)).toEqual(['x', '', '#é', '', '']);
    expect(pieces[4].stopped).toBe(true);
    expect(s.text).toBe('x#é');
    expect(s.finish('x#é##y')).toBe('');
  });
});
