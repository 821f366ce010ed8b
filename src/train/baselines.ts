// Classical baselines for the built-in classification tasks, computed on exactly the rows and the
// input the fine-tune sees, so a fine-tuned accuracy can be read against something that needs no GPU:
//
//   spam           multinomial naive Bayes (Laplace smoothing, log space) over (a) lowercased word
//                  tokens and (b) lowercased character 3–4-grams of the spam preset's text, the
//                  first 128 characters (SPAM_CHARS) of subject + body: the very text the decoder
//                  reads
//   fashion-mnist  multinomial logistic regression on the 784 pixels ÷ 255, seeded mini-batch SGD
//
// Each is fitted on the training view only and scored on the evaluation view (the test split, or
// the validation rows under --eval-on validation), the same two views presetData gives the loop.
import { LorafaError } from '../ir/errors.ts';
import { presetData, type DataPreset } from '../data/presets.ts';
import { readView, type RowView } from '../data/dataset.ts';
import { rng } from '../runtime/init.ts';

export interface BaselineResult {
  /** e.g. "naive Bayes, words". */
  readonly name: string;
  readonly accuracy: number;
  readonly trainRows: number;
  readonly evalRows: number;
  readonly ms: number;
}

// ---------------------------------------------------------------------------------------------
// Features

/** Lowercased runs of letters and digits. */
export function wordTokens(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
}

/** Every run of min..max consecutive code points of the lowercased text. */
export function charNgrams(text: string, min = 3, max = 4): string[] {
  const cs = Array.from(text.toLowerCase());
  const out: string[] = [];
  for (let n = min; n <= max; n++) for (let i = 0; i + n <= cs.length; i++) out.push(cs.slice(i, i + n).join(''));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Multinomial naive Bayes

export interface NaiveBayes {
  readonly classes: number;
  /** log P(class). */
  readonly logPrior: Float64Array;
  /** log P(feature | class) per training-vocabulary feature; unseen features are ignored at predict time. */
  readonly logLikelihood: ReadonlyMap<string, Float64Array>;
}

/**
 * Counts each feature per class over the training documents; P(f | c) = (count + alpha) /
 * (total_c + alpha·V), V the training vocabulary. Log space, so long documents never underflow.
 */
export function fitNaiveBayes(docs: readonly (readonly string[])[], labels: readonly number[], classes: number, alpha = 1): NaiveBayes {
  if (docs.length !== labels.length) throw new LorafaError('fitNaiveBayes', `${docs.length} documents but ${labels.length} labels`, 'pass one label per document');
  if (!(alpha > 0)) throw new LorafaError('fitNaiveBayes', `alpha must be positive, got ${alpha}`, 'use Laplace smoothing, alpha = 1');
  const counts = new Map<string, Float64Array>();
  const totals = new Float64Array(classes);
  const docsPer = new Float64Array(classes);
  docs.forEach((d, i) => {
    const c = labels[i];
    if (!(Number.isInteger(c) && c >= 0 && c < classes)) throw new LorafaError(`fitNaiveBayes: document ${i}`, `label ${c} is not in 0..${classes - 1}`, 'pass integer class labels');
    docsPer[c]++;
    for (const f of d) {
      let v = counts.get(f);
      if (!v) counts.set(f, (v = new Float64Array(classes)));
      v[c]++;
      totals[c]++;
    }
  });
  const V = counts.size;
  const logPrior = docsPer.map((n) => Math.log(n / docs.length));
  const logLikelihood = new Map<string, Float64Array>();
  for (const [f, v] of counts) logLikelihood.set(f, v.map((n, c) => Math.log((n + alpha) / (totals[c] + alpha * V))));
  return { classes, logPrior, logLikelihood };
}

/** log P(c) + Σ log P(f | c) per class, over the features the training vocabulary knows. */
export function naiveBayesScores(m: NaiveBayes, doc: readonly string[]): Float64Array {
  const s = Float64Array.from(m.logPrior);
  for (const f of doc) {
    const l = m.logLikelihood.get(f);
    if (l) for (let c = 0; c < m.classes; c++) s[c] += l[c];
  }
  return s;
}

function argmax(a: ArrayLike<number>): number {
  let k = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[k]) k = i;
  return k;
}

export function predictNaiveBayes(m: NaiveBayes, doc: readonly string[]): number {
  return argmax(naiveBayesScores(m, doc));
}

// ---------------------------------------------------------------------------------------------
// Multinomial logistic regression

export interface Logistic {
  readonly inputs: number;
  readonly classes: number;
  /** [inputs, classes], row-major. */
  readonly w: Float64Array;
  readonly b: Float64Array;
}

/** Class scores x·W + b of row r of x ([rows, inputs]). */
function logits(m: Logistic, x: Float32Array, r: number, out: Float64Array): void {
  const { inputs: d, classes: k, w } = m;
  out.set(m.b);
  const o = r * d;
  for (let j = 0; j < d; j++) {
    const v = x[o + j];
    if (v === 0) continue; // most pixels are 0: skipping them is most of the speed
    const wo = j * k;
    for (let c = 0; c < k; c++) out[c] += v * w[wo + c];
  }
}

/**
 * Mean softmax cross-entropy over the given rows, and its gradient with respect to W and b
 * (added into gw, gb after zeroing them): dL/dz = softmax(z) − onehot(y), averaged over rows.
 */
export function logisticLossAndGradient(m: Logistic, x: Float32Array, y: ArrayLike<number>, rows: ArrayLike<number>, gw: Float64Array, gb: Float64Array): number {
  const { inputs: d, classes: k } = m;
  gw.fill(0);
  gb.fill(0);
  const z = new Float64Array(k);
  let loss = 0;
  const inv = 1 / rows.length;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    logits(m, x, r, z);
    let mx = -Infinity;
    for (let c = 0; c < k; c++) mx = Math.max(mx, z[c]);
    let sum = 0;
    for (let c = 0; c < k; c++) sum += (z[c] = Math.exp(z[c] - mx));
    loss += -Math.log(z[y[r]] / sum) * inv;
    for (let c = 0; c < k; c++) z[c] = (z[c] / sum - (c === y[r] ? 1 : 0)) * inv;
    for (let c = 0; c < k; c++) gb[c] += z[c];
    const o = r * d;
    for (let j = 0; j < d; j++) {
      const v = x[o + j];
      if (v === 0) continue;
      const wo = j * k;
      for (let c = 0; c < k; c++) gw[wo + c] += v * z[c];
    }
  }
  return loss;
}

export interface LogisticOptions {
  readonly epochs?: number;
  readonly batch?: number;
  readonly lr?: number;
  readonly seed?: number;
}

/** Plain mini-batch SGD from zero weights; the order of rows in each epoch comes from the seed. */
export function fitLogistic(x: Float32Array, y: ArrayLike<number>, rows: number, classes: number, o: LogisticOptions = {}): Logistic {
  const inputs = x.length / rows;
  if (!Number.isInteger(inputs)) throw new LorafaError('fitLogistic', `${x.length} values are not ${rows} equal rows`, 'pass x as [rows, inputs], row-major');
  const { epochs = 5, batch = 100, lr = 0.1, seed = 0 } = o;
  const m: Logistic = { inputs, classes, w: new Float64Array(inputs * classes), b: new Float64Array(classes) };
  const gw = new Float64Array(m.w.length);
  const gb = new Float64Array(classes);
  const order = Int32Array.from({ length: rows }, (_, i) => i);
  const rand = rng(seed);
  for (let e = 0; e < epochs; e++) {
    for (let i = rows - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    for (let s = 0; s < rows; s += batch) {
      logisticLossAndGradient(m, x, y, order.subarray(s, Math.min(rows, s + batch)), gw, gb);
      for (let i = 0; i < gw.length; i++) m.w[i] -= lr * gw[i];
      for (let c = 0; c < classes; c++) m.b[c] -= lr * gb[c];
    }
  }
  return m;
}

/** The predicted class of each row of x. */
export function predictLogistic(m: Logistic, x: Float32Array): Int32Array {
  const n = x.length / m.inputs;
  const z = new Float64Array(m.classes);
  const out = new Int32Array(n);
  for (let r = 0; r < n; r++) {
    logits(m, x, r, z);
    out[r] = argmax(z);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The presets' baselines

function accuracyOf(pred: ArrayLike<number>, truth: ArrayLike<number>): number {
  let ok = 0;
  for (let i = 0; i < truth.length; i++) if (pred[i] === truth[i]) ok++;
  return ok / truth.length;
}

export interface LabelledTexts {
  readonly texts: readonly string[];
  readonly labels: readonly number[];
}

/** The spam preset's training and evaluation texts: the first SPAM_CHARS characters of each message, as the model reads them. */
export async function spamTexts(o: PresetBaselineOptions = {}): Promise<{ train: LabelledTexts; eval: LabelledTexts }> {
  const d = presetData('spam', o.evalOn ?? 'test');
  const read = async (v: RowView) => {
    const rows = await readView(v);
    return { texts: rows.map((r) => r.text as string), labels: rows.map((r) => r.label as number) };
  };
  return { train: await read(d.train), eval: await read(d.eval) };
}

/** The spam baselines on given texts: fitted on the training texts only. */
export function spamBaselinesOn(train: LabelledTexts, test: LabelledTexts): BaselineResult[] {
  const out: BaselineResult[] = [];
  for (const [name, features] of [
    ['naive Bayes, words', wordTokens],
    ['naive Bayes, character 3–4-grams', (t: string) => charNgrams(t, 3, 4)],
  ] as const) {
    const t0 = performance.now();
    const m = fitNaiveBayes(train.texts.map(features), train.labels, 2);
    const pred = test.texts.map((t) => predictNaiveBayes(m, features(t)));
    out.push({ name, accuracy: accuracyOf(pred, test.labels), trainRows: train.texts.length, evalRows: test.texts.length, ms: performance.now() - t0 });
  }
  return out;
}

export interface PresetBaselineOptions {
  readonly evalOn?: 'test' | 'validation';
  readonly seed?: number;
}

/** The presets that have a classical baseline. */
export const BASELINE_PRESETS: readonly DataPreset[] = ['spam', 'fashion-mnist'];

/**
 * The baselines of a built-in classification preset, on presetData's own train and evaluation
 * views. Naive Bayes on spam takes about a second; the logistic regression on Fashion-MNIST's
 * 60,000 images takes tens of seconds on two CPU cores.
 */
export async function presetBaselines(name: DataPreset, o: PresetBaselineOptions = {}): Promise<BaselineResult[]> {
  if (!BASELINE_PRESETS.includes(name)) throw new LorafaError(`baselines ${name}`, `no classical baseline for "${name}"`, `use one of: ${BASELINE_PRESETS.join(', ')}`);
  if (name === 'spam') {
    const t = await spamTexts(o);
    return spamBaselinesOn(t.train, t.eval);
  }
  const d = presetData(name, o.evalOn ?? 'test');
  const t0 = performance.now();
  const pixels = async (v: RowView) => {
    const rows = await readView(v);
    const d = (rows[0].x as Float32Array).length;
    const x = new Float32Array(rows.length * d);
    rows.forEach((r, i) => x.set(r.x as Float32Array, i * d));
    return { x, y: Int32Array.from(rows, (r) => r.label as number) };
  };
  const [tr, te] = [await pixels(d.train), await pixels(d.eval)];
  const m = fitLogistic(tr.x, tr.y, tr.y.length, 10, { seed: o.seed ?? 0 });
  return [{ name: 'logistic regression, pixels', accuracy: accuracyOf(predictLogistic(m, te.x), te.y), trainRows: tr.y.length, evalRows: te.y.length, ms: performance.now() - t0 }];
}
