// Scoring as eval_ref.py / eval_utils.py / vqaEval.py do it.
import { describe, expect, it } from 'vitest';
import {
  captionBackground,
  captionRecall,
  computeIoU,
  containsPhrase,
  identifyCorrect,
  normalizeVqaAnswer,
  parseReferAnswer,
  processDigitArticle,
  processPunctuation,
  scoreRefer,
  vqaAccuracy,
} from '../../src/eval/metrics.js';
import { upstreamAnswer } from '../../src/eval/run.js';

describe('computeIoU (eval_utils.py, +1 pixel areas)', () => {
  it.each([
    [[0, 0, 9, 9], [0, 0, 9, 9], 1],
    [[0, 0, 9, 9], [10, 0, 19, 9], 0],
    [[0, 0, 9, 9], [5, 0, 14, 9], 50 / 150],
    [[0, 0, 9, 9], [100, 100, 109, 109], 0],
    [[0, 0, 0, 0], [0, 0, 0, 0], 1],
  ])('%j vs %j', (a, b, iou) => {
    expect(computeIoU(a, b)).toBeCloseTo(iou, 12);
  });
});

describe('refer answers (eval_ref.py)', () => {
  it.each([
    ['{<10><20><30><40>}', true, [10, 20, 30, 40]],
    [' {< 10 >< 20 ><30><40>} ', true, [10, 20, 30, 40]],
    ['<unk>{<10><20><30><40>}</s>', true, [10, 20, 30, 40]],
    ['{<10><20><30><40>} the red one', true, [10, 20, 30, 40]],
    ['the box {<10><20><30><40>}', false, null],
    ['<p>cat</p> {<10><20><30><40>}', false, null],
    // more than four integers: upstream's computeIoU unpacking raises and the answer is skipped
    ['{<10><20><30><40>}<delim>{<1><2><3><4>}', true, null],
    ['{<10><20><30><40>} 2', true, null],
    ['{<1000><20><30><40>}', false, null],
    ['{<10><20><30>}', false, null],
    ['', false, null],
  ])('%j', (answer, formatOk, grid) => {
    const r = parseReferAnswer(answer);
    expect(r.formatOk).toBe(formatOk);
    expect(r.grid).toEqual(grid);
  });

  it('rescales the 0..100 grid to the image and compares with [x, y, w, h] ground truth at IoU > 0.5', () => {
    // gt [10,20,30,40] in a 200x100 image = corners [10,20,40,60] = grid {<5><20><20><60>}
    const exact = scoreRefer('{<5><20><20><60>}', [10, 20, 30, 40], 200, 100);
    expect(exact.pred).toEqual([10, 20, 40, 60]);
    expect(exact.gt).toEqual([10, 20, 40, 60]);
    expect(exact.iou).toBe(1);
    expect(exact.correct).toBe(true);
    const shifted = scoreRefer('{<15><20><30><60>}', [10, 20, 30, 40], 200, 100);
    expect(shifted.pred).toEqual([30, 20, 60, 60]);
    expect(shifted.iou).toBeCloseTo((11 * 41) / (31 * 41 * 2 - 11 * 41), 12);
    expect(shifted.correct).toBe(false);
    const res = scoreRefer('{<50><200><200><600>}', [10, 20, 30, 40], 200, 100, 1000);
    expect(res.iou).toBe(1);
    expect(scoreRefer('nothing', [10, 20, 30, 40], 200, 100)).toMatchObject({ formatOk: false, pred: null, iou: 0, correct: false });
  });

  it('cleans the decoded text as MiniGPTBase.generate', () => {
    expect(upstreamAnswer(' {<1><2><3><4>}</s>junk')).toBe('{<1><2><3><4>}');
    expect(upstreamAnswer('<s>[INST] q [/INST] yes')).toBe('yes');
  });
});

describe('VQA normalisation (vqaEval.py)', () => {
  it.each([
    // numbers as words -> digits, articles dropped, case folded
    ['Two', '2'],
    ['none', '0'],
    ['ten', '10'],
    ['eleven', 'eleven'],
    ['a dog', 'dog'],
    ['The Red one', 'red 1'],
    ['an apple', 'apple'],
    // punctuation: removed next to a space, else replaced by a space; periods not before a digit removed
    ['yes.', 'yes'],
    ['3.5', '3.5'],
    ['hello, world', 'hello world'],
    ['black/white', 'black white'],
    ['(red)', 'red'],
    ['what?!', 'what'],
    ['1,000', '1000'],
    ['red-orange', 'red orange'],
    // contractions
    ['dont', "don't"],
    ['isnt', "isn't"],
    ["it's", "it's"],
    // whitespace
    ['  two\tcats\n', '2 cats'],
  ])('%j -> %j', (input, expected) => {
    expect(normalizeVqaAnswer(input)).toBe(expected);
  });

  it('ports the helpers separately', () => {
    expect(processPunctuation('a;b')).toBe('a b');
    expect(processPunctuation('a ; b')).toBe('a  b');
    expect(processPunctuation('1,5 a;b')).toBe('15 ab');
    expect(processDigitArticle('The THREE Bears')).toBe('3 bears');
    // at most 32 periods are removed (re.sub's count is re.UNICODE = 32 upstream)
    expect(processPunctuation('.'.repeat(40))).toBe('.'.repeat(8));
  });

  it('scores min(#matching answers / 3, 1)', () => {
    expect(vqaAccuracy('Two.', Array(10).fill('2'))).toBe(1);
    expect(vqaAccuracy('two', ['2', '2', ...Array(8).fill('3')])).toBeCloseTo(2 / 3, 12);
    expect(vqaAccuracy('2', ['two'])).toBeCloseTo(1 / 3, 12);
    expect(vqaAccuracy('the red', Array(10).fill('red'))).toBe(1);
    expect(vqaAccuracy('<unk>YES ', Array(10).fill('yes'))).toBe(1);
    expect(vqaAccuracy('red car', Array(10).fill('red'))).toBe(0);
    expect(vqaAccuracy('grey', [...Array(7).fill('gray'), ...Array(3).fill('grey')])).toBe(1);
  });
});

describe('identify / caption', () => {
  it('an identify answer is right when it names the object in whole words', () => {
    expect(identifyCorrect('a red circle.', ['red circle'])).toBe(true);
    expect(identifyCorrect('Red Circle', ['red circle'])).toBe(true);
    expect(identifyCorrect('the red circle on the left', ['red circle'])).toBe(true);
    expect(identifyCorrect('grey square', ['gray square'])).toBe(true);
    expect(identifyCorrect('red circles', ['red circle'])).toBe(false);
    expect(identifyCorrect('circle', ['red circle'])).toBe(false);
    expect(identifyCorrect('blue square', ['red circle', 'blue square'])).toBe(true);
    expect(containsPhrase('a bred circle', 'red circle')).toBe(false);
  });

  it('caption background: named with its tone and kind, or its kind at least', () => {
    expect(captionBackground('a red circle on a light plain background', 'light plain')).toEqual({ named: true, kind: true });
    expect(captionBackground('a red circle on a light textured background', 'light plain')).toEqual({ named: false, kind: false });
    expect(captionBackground('a red circle on a dark plain background', 'light plain')).toEqual({ named: false, kind: true });
    expect(captionBackground('a plain red circle', 'light plain')).toEqual({ named: false, kind: false });
  });

  it('caption recall counts the object names mentioned', () => {
    const r = captionRecall('a red circle and a grey square on a light plain background', ['red circle', 'gray square', 'green star']);
    expect(r).toEqual({ recall: 2 / 3, found: ['red circle', 'gray square'], missed: ['green star'] });
  });
});
