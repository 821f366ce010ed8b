// The classical baselines (src/train/baselines.ts): naive Bayes against hand-computed
// log-probabilities, the logistic regression's gradient against finite differences, and the spam
// baseline's data: the preset's own split, cut as the model reads it, fitted on training rows only.
import { describe, expect, test } from 'vitest';
import {
  charNgrams,
  fitLogistic,
  fitNaiveBayes,
  logisticLossAndGradient,
  naiveBayesScores,
  predictLogistic,
  predictNaiveBayes,
  spamBaselinesOn,
  spamTexts,
  wordTokens,
  type Logistic,
} from '../src/train/baselines.ts';
import { firstChars, spamAssassin } from '../src/data/text.ts';
import { rng } from '../src/runtime/init.ts';

describe('features', () => {
  test('words are lowercased runs of letters and digits', () => {
    expect(wordTokens('Hello, WORLD! 42x été')).toEqual(['hello', 'world', '42x', 'été']);
  });
  test('character n-grams of each length, lowercased, by code point', () => {
    expect(charNgrams('AbCd', 3, 4)).toEqual(['abc', 'bcd', 'abcd']);
    expect(charNgrams('a😀bc', 3, 3)).toEqual(['a😀b', '😀bc']);
  });
  test('firstChars keeps code points, as the character tokenizer does', () => {
    expect(firstChars('😀😀😀abc', 4)).toBe('😀😀😀a');
    expect(firstChars('ab', 4)).toBe('ab');
  });
});

describe('multinomial naive Bayes', () => {
  // class 0: "a a b"; class 1: "b c". V = 3, totals 3 and 2, alpha 1:
  //   P(a|0) = 3/6, P(b|0) = 2/6, P(c|0) = 1/6;  P(a|1) = 1/5, P(b|1) = 2/5, P(c|1) = 2/5; priors 1/2.
  const m = fitNaiveBayes([['a', 'a', 'b'], ['b', 'c']], [0, 1], 2);
  test('log-probabilities match the hand computation', () => {
    expect(m.logPrior[0]).toBeCloseTo(Math.log(0.5), 12);
    expect(m.logLikelihood.get('a')![0]).toBeCloseTo(Math.log(3 / 6), 12);
    expect(m.logLikelihood.get('c')![0]).toBeCloseTo(Math.log(1 / 6), 12);
    expect(m.logLikelihood.get('a')![1]).toBeCloseTo(Math.log(1 / 5), 12);
    expect(m.logLikelihood.get('b')![1]).toBeCloseTo(Math.log(2 / 5), 12);
  });
  test('scores sum the log-likelihoods, ignoring unseen features; predictions follow', () => {
    const s = naiveBayesScores(m, ['a', 'b', 'zzz']);
    expect(s[0]).toBeCloseTo(Math.log(0.5) + Math.log(1 / 2) + Math.log(1 / 3), 12);
    expect(s[1]).toBeCloseTo(Math.log(0.5) + Math.log(1 / 5) + Math.log(2 / 5), 12);
    expect(predictNaiveBayes(m, ['a', 'b', 'zzz'])).toBe(0);
    expect(predictNaiveBayes(m, ['c', 'c'])).toBe(1);
  });
  test('priors come from document counts', () => {
    const m2 = fitNaiveBayes([['a'], ['a'], ['b']], [0, 0, 1], 2);
    expect(m2.logPrior[0]).toBeCloseTo(Math.log(2 / 3), 12);
  });
  test('a label outside the classes is an error naming the document', () => {
    expect(() => fitNaiveBayes([['a'], ['b']], [0, 2], 2)).toThrow(/document 1/);
  });
});

describe('multinomial logistic regression', () => {
  test('the gradient matches central finite differences', () => {
    const r = rng(7);
    const [n, d, k] = [5, 4, 3];
    const x = Float32Array.from({ length: n * d }, (_, i) => (i % 7 === 3 ? 0 : r() * 2 - 1));
    const y = [0, 2, 1, 1, 0];
    const rows = [0, 1, 2, 4]; // row 3 left out: it must not contribute
    const m: Logistic = { inputs: d, classes: k, w: Float64Array.from({ length: d * k }, () => r() - 0.5), b: Float64Array.from({ length: k }, () => r() - 0.5) };
    const gw = new Float64Array(d * k);
    const gb = new Float64Array(k);
    logisticLossAndGradient(m, x, y, rows, gw, gb);
    const scratchW = new Float64Array(d * k);
    const scratchB = new Float64Array(k);
    const loss = () => logisticLossAndGradient(m, x, y, rows, scratchW, scratchB);
    const eps = 1e-6;
    for (const [p, g] of [[m.w, gw], [m.b, gb]] as const) {
      for (let i = 0; i < p.length; i++) {
        const v = p[i];
        p[i] = v + eps;
        const up = loss();
        p[i] = v - eps;
        const down = loss();
        p[i] = v;
        expect(g[i]).toBeCloseTo((up - down) / (2 * eps), 6);
      }
    }
  });
  test('a separable three-class problem is fitted exactly, deterministically', () => {
    const r = rng(3);
    const n = 300;
    const y = Int32Array.from({ length: n }, (_, i) => i % 3);
    // class c: feature c is large, the others small noise
    const x = Float32Array.from({ length: n * 3 }, (_, i) => (Math.floor(i / 3) % 3 === i % 3 ? 1 + r() : 0.3 * r()));
    const m = fitLogistic(x, y, n, 3, { epochs: 20, batch: 10, lr: 0.5, seed: 1 });
    const p = predictLogistic(m, x);
    expect(Array.from(p)).toEqual(Array.from(y));
    expect(fitLogistic(x, y, n, 3, { epochs: 20, batch: 10, lr: 0.5, seed: 1 }).w).toEqual(m.w);
  });
});

describe('the spam baseline', () => {
  test("reads the preset's own split, its first 128 characters as the model reads them, and fits on training rows only", async () => {
    const corpus = spamAssassin();
    const t = await spamTexts();
    expect(t.train.texts.length).toBe(corpus.split.train.length);
    expect(t.eval.texts.length).toBe(corpus.split.test.length);
    const i = corpus.split.test[5];
    expect(t.eval.texts[5]).toBe(Array.from(corpus.messages[i].text).slice(0, 128).join(''));
    expect(t.eval.labels[5]).toBe(corpus.messages[i].label);

    const before = spamBaselinesOn(t.train, t.eval);
    expect(before[0].accuracy).toBeGreaterThan(0.9);
    expect(before[1].accuracy).toBeGreaterThan(0.9);
    // Flip every test label: a model fitted on training rows only predicts exactly as before, so
    // each accuracy becomes its complement. A model that had seen the test rows would move.
    const flipped = spamBaselinesOn(t.train, { texts: t.eval.texts, labels: t.eval.labels.map((l) => 1 - l) });
    flipped.forEach((b, k) => expect(b.accuracy).toBeCloseTo(1 - before[k].accuracy, 12));
  });
});
