/**
 * Scoring as the original MiniGPT-v2 evaluation does it.
 *
 * refer (eval_scripts/eval_ref.py): the answer, with `<unk>` and every space removed, must START with
 * `{<d><d><d><d>}` (1-3 digits each, `re.match`), else it is not counted (no `--resample`). All integers of
 * the answer are taken (`re.findall(r'\d+')`); more than four makes upstream's `computeIoU` unpacking fail
 * and the answer is skipped (counted wrong). The four are scaled `v / res * width|height` (res = 100), the
 * ground truth [x,y,w,h] becomes [x, y, x+w, y+h], and `computeIoU` (eval_utils.py, with its +1 pixel
 * convention) must be > 0.5. Accuracy = hits / entries.
 *
 * vqa: answers are cleaned like eval_vqa.py (`lower()`, `<unk>` removed, stripped), then both the answer and
 * every ground-truth answer go through the official VQA normalisation (vqaEval.py `processPunctuation` and
 * `processDigitArticle`: punctuation, number words -> digits, articles dropped, contractions), and the score is
 * min(#matching ground-truth answers / 3, 1). (The official script only normalises when the ground-truth
 * answers disagree, and averages over the 10 leave-one-out subsets; we always normalise and use the plain
 * formula, as the VizWiz part of eval_vqa.py does.)
 *
 * identify: correct when the normalised answer contains one of the accepted names (normalised) as whole words.
 * caption: recall of the scene's object names ("red circle") in the normalised caption, averaged.
 */

/** eval_utils.py computeIoU: boxes [x1, y1, x2, y2], areas with the +1 pixel convention. */
export function computeIoU(b1: readonly number[], b2: readonly number[]): number {
  const [x1, y1, x2, y2] = b1;
  const [x3, y3, x4, y4] = b2;
  const ix1 = Math.max(x1, x3);
  const iy1 = Math.max(y1, y3);
  const ix2 = Math.min(x2, x4);
  const iy2 = Math.min(y2, y4);
  const inter = Math.max(0, ix2 - ix1 + 1) * Math.max(0, iy2 - iy1 + 1);
  const a1 = (x2 - x1 + 1) * (y2 - y1 + 1);
  const a2 = (x4 - x3 + 1) * (y4 - y3 + 1);
  return inter / (a1 + a2 - inter);
}

const REFER_PATTERN = /^\{<\d{1,3}><\d{1,3}><\d{1,3}><\d{1,3}>\}/;

export interface ReferAnswer {
  /** the answer as eval_ref.py cleans it (`<unk>` and spaces removed) */
  cleaned: string;
  /** it starts with a well-formed box (else upstream does not count it) */
  formatOk: boolean;
  /** the four grid integers, or null (bad format, or not exactly four integers) */
  grid: [number, number, number, number] | null;
}

export function parseReferAnswer(answer: string): ReferAnswer {
  const cleaned = answer.split('<unk>').join('').replace(/ /g, '').trim();
  const formatOk = REFER_PATTERN.test(cleaned);
  const ints = cleaned.match(/\d+/g) ?? [];
  const grid = formatOk && ints.length === 4 ? (ints.map((s) => Number.parseInt(s, 10)) as [number, number, number, number]) : null;
  return { cleaned, formatOk, grid };
}

export interface ReferScore {
  formatOk: boolean;
  /** predicted box in pixels [x1, y1, x2, y2] */
  pred: [number, number, number, number] | null;
  /** ground truth in pixels [x1, y1, x2, y2] */
  gt: [number, number, number, number];
  iou: number;
  correct: boolean;
}

/** One refer entry: `bbox` [x, y, w, h] px of an image of `width` x `height`. */
export function scoreRefer(answer: string, bbox: readonly number[], width: number, height: number, res = 100): ReferScore {
  const a = parseReferAnswer(answer);
  const gt: [number, number, number, number] = [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]];
  if (!a.grid) return { formatOk: a.formatOk, pred: null, gt, iou: 0, correct: false };
  const [gx1, gy1, gx2, gy2] = a.grid;
  const pred: [number, number, number, number] = [(gx1 / res) * width, (gy1 / res) * height, (gx2 / res) * width, (gy2 / res) * height];
  const iou = computeIoU(pred, gt);
  return { formatOk: true, pred, gt, iou, correct: iou > 0.5 };
}

// ------------------------------------------------------------------------------------------------
// VQA normalisation (vqaEval.py)
// ------------------------------------------------------------------------------------------------

const CONTRACTIONS: Record<string, string> = {
  aint: "ain't",
  arent: "aren't",
  cant: "can't",
  couldve: "could've",
  couldnt: "couldn't",
  "couldn'tve": "couldn't've",
  "couldnt've": "couldn't've",
  didnt: "didn't",
  doesnt: "doesn't",
  dont: "don't",
  hadnt: "hadn't",
  "hadnt've": "hadn't've",
  "hadn'tve": "hadn't've",
  hasnt: "hasn't",
  havent: "haven't",
  hed: "he'd",
  "hed've": "he'd've",
  "he'dve": "he'd've",
  hes: "he's",
  howd: "how'd",
  howll: "how'll",
  hows: "how's",
  "Id've": "I'd've",
  "I'dve": "I'd've",
  Im: "I'm",
  Ive: "I've",
  isnt: "isn't",
  itd: "it'd",
  "itd've": "it'd've",
  "it'dve": "it'd've",
  itll: "it'll",
  "let's": "let's",
  maam: "ma'am",
  mightnt: "mightn't",
  "mightnt've": "mightn't've",
  "mightn'tve": "mightn't've",
  mightve: "might've",
  mustnt: "mustn't",
  mustve: "must've",
  neednt: "needn't",
  notve: "not've",
  oclock: "o'clock",
  oughtnt: "oughtn't",
  "ow's'at": "'ow's'at",
  "'ows'at": "'ow's'at",
  "'ow'sat": "'ow's'at",
  shant: "shan't",
  "shed've": "she'd've",
  "she'dve": "she'd've",
  "she's": "she's",
  shouldve: "should've",
  shouldnt: "shouldn't",
  "shouldnt've": "shouldn't've",
  "shouldn'tve": "shouldn't've",
  "somebody'd": 'somebodyd',
  "somebodyd've": "somebody'd've",
  "somebody'dve": "somebody'd've",
  somebodyll: "somebody'll",
  somebodys: "somebody's",
  someoned: "someone'd",
  "someoned've": "someone'd've",
  "someone'dve": "someone'd've",
  someonell: "someone'll",
  someones: "someone's",
  somethingd: "something'd",
  "somethingd've": "something'd've",
  "something'dve": "something'd've",
  somethingll: "something'll",
  thats: "that's",
  thered: "there'd",
  "thered've": "there'd've",
  "there'dve": "there'd've",
  therere: "there're",
  theres: "there's",
  theyd: "they'd",
  "theyd've": "they'd've",
  "they'dve": "they'd've",
  theyll: "they'll",
  theyre: "they're",
  theyve: "they've",
  twas: "'twas",
  wasnt: "wasn't",
  "wed've": "we'd've",
  "we'dve": "we'd've",
  weve: "we've",
  werent: "weren't",
  whatll: "what'll",
  whatre: "what're",
  whats: "what's",
  whatve: "what've",
  whens: "when's",
  whered: "where'd",
  wheres: "where's",
  whereve: "where've",
  whod: "who'd",
  "whod've": "who'd've",
  "who'dve": "who'd've",
  wholl: "who'll",
  whos: "who's",
  whove: "who've",
  whyll: "why'll",
  whyre: "why're",
  whys: "why's",
  wont: "won't",
  wouldve: "would've",
  wouldnt: "wouldn't",
  "wouldnt've": "wouldn't've",
  "wouldn'tve": "wouldn't've",
  yall: "y'all",
  "yall'll": "y'all'll",
  "y'allll": "y'all'll",
  "yall'd've": "y'all'd've",
  "y'alld've": "y'all'd've",
  "y'all'dve": "y'all'd've",
  youd: "you'd",
  "youd've": "you'd've",
  "you'dve": "you'd've",
  youll: "you'll",
  youre: "you're",
  youve: "you've",
};

const MANUAL_MAP: Record<string, string> = {
  none: '0',
  zero: '0',
  one: '1',
  two: '2',
  three: '3',
  four: '4',
  five: '5',
  six: '6',
  seven: '7',
  eight: '8',
  nine: '9',
  ten: '10',
};
const ARTICLES = new Set(['a', 'an', 'the']);
const PUNCT = [';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!'];
// Ported as written upstream: "(?!<=\d)" is a lookahead, not a lookbehind, so this removes every period that
// is not followed by a digit. Upstream passes re.UNICODE (= 32) as re.sub's `count`: at most 32 are removed.
const PERIOD_STRIP = /(?!<=\d)(\.)(?!\d)/g;
const COMMA_STRIP = /(\d)(,)(\d)/;

export function processPunctuation(inText: string): string {
  let out = inText;
  const commaNumber = COMMA_STRIP.test(inText);
  for (const p of PUNCT) {
    if (inText.includes(`${p} `) || inText.includes(` ${p}`) || commaNumber) out = out.split(p).join('');
    else out = out.split(p).join(' ');
  }
  let n = 0;
  return out.replace(PERIOD_STRIP, (m) => (n++ < 32 ? '' : m));
}

export function processDigitArticle(inText: string): string {
  const words: string[] = [];
  for (let w of inText.toLowerCase().split(/\s+/).filter(Boolean)) {
    w = Object.hasOwn(MANUAL_MAP, w) ? MANUAL_MAP[w] : w;
    if (!ARTICLES.has(w)) words.push(w);
  }
  return words.map((w) => (Object.hasOwn(CONTRACTIONS, w) ? CONTRACTIONS[w] : w)).join(' ');
}

/** vqaEval.py: newlines / tabs -> spaces, strip, punctuation, digits and articles. */
export function normalizeVqaAnswer(text: string): string {
  const t = text.replace(/\n/g, ' ').replace(/\t/g, ' ').trim();
  return processDigitArticle(processPunctuation(t));
}

/** eval_vqa.py's cleaning of a generated answer. */
export const cleanVqaAnswer = (answer: string) => answer.toLowerCase().split('<unk>').join('').trim();

/** min(#ground-truth answers equal to the answer / 3, 1), after normalisation of both sides. */
export function vqaAccuracy(answer: string, gtAnswers: readonly string[]): number {
  const a = normalizeVqaAnswer(cleanVqaAnswer(answer)).toLowerCase();
  const matches = gtAnswers.filter((g) => normalizeVqaAnswer(g).toLowerCase() === a).length;
  return Math.min(1, matches / 3);
}

// ------------------------------------------------------------------------------------------------
// identify / caption
// ------------------------------------------------------------------------------------------------

const words = (s: string) =>
  normalizeVqaAnswer(cleanVqaAnswer(s))
    .replace(/\bgrey\b/g, 'gray')
    .split(' ')
    .filter(Boolean);

/** `phrase` occurs in `text` as a run of whole words (both normalised). */
export function containsPhrase(text: string, phrase: string): boolean {
  const t = words(text);
  const p = words(phrase);
  if (p.length === 0) return false;
  outer: for (let i = 0; i + p.length <= t.length; i++) {
    for (let j = 0; j < p.length; j++) if (t[i + j] !== p[j]) continue outer;
    return true;
  }
  return false;
}

export function identifyCorrect(answer: string, accepted: readonly string[]): boolean {
  return accepted.some((a) => containsPhrase(answer, a));
}

/**
 * Whether a caption names the scene's background (demo-data's caption.json `background`, "light gradient"):
 * `named` with its tone and kind ("... on a light gradient background"), `kind` with the kind at least.
 */
export function captionBackground(caption: string, background: string): { named: boolean; kind: boolean } {
  const kind = background.trim().split(/\s+/).pop() ?? '';
  return { named: containsPhrase(caption, `${background} background`), kind: kind !== '' && containsPhrase(caption, `${kind} background`) };
}

export function captionRecall(caption: string, objects: readonly string[]): { recall: number; found: string[]; missed: string[] } {
  const found = objects.filter((o) => containsPhrase(caption, o));
  const missed = objects.filter((o) => !found.includes(o));
  return { recall: objects.length ? found.length / objects.length : 1, found, missed };
}
