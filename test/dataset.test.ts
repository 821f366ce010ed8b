// From rows to a model's inputs (src/data/dataset.ts): which task the inputs describe, the
// evaluation split, class names, truncation, language-model windows, deterministic and resumable
// batches, micro-batches that see exactly the samples of one larger batch, and every kind of bad
// row named by file:line with a fix.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, test } from 'vitest';
import { inferTask, openDataset, splitRows, type InputSpec } from '../src/data/dataset.ts';
import { memoryRows } from '../src/data/memory.ts';
import { openRows } from '../src/data/rows.ts';
import { CharTokenizer } from '../src/data/tokenizer.ts';
import { LorafaError } from '../src/ir/errors.ts';
import { property } from './helpers.ts';

const tmp = mkdtempSync(join(tmpdir(), 'lorafa-dataset-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const file = (name: string, text: string) => {
  const p = join(tmp, name);
  writeFileSync(p, text);
  return p;
};

const i32 = (name: string, shape: number[]): InputSpec => ({ name, shape, dtype: 'i32' });
const f32 = (name: string, shape: number[]): InputSpec => ({ name, shape, dtype: 'f32' });
const TEXT_CLS = [i32('input_ids', [2, 6]), i32('labels', [2])];
const LM = [i32('input_ids', [2, 4]), i32('labels', [8])];
const FEAT = [f32('x', [4, 3]), i32('labels', [4])];
const tok = CharTokenizer.fromText('abcdefghijklmnopqrstuvwxyz \n');

async function failure(p: Promise<unknown>): Promise<LorafaError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof LorafaError) return e;
    throw e;
  }
  throw new Error('expected a LorafaError');
}

describe('inferTask', () => {
  test('the four tasks from the inputs, optimizer scalars ignored', () => {
    expect(inferTask(TEXT_CLS).kind).toBe('classify-text');
    expect(inferTask([...LM, f32('optim.lr', [])]).kind).toBe('lm');
    expect(inferTask(FEAT).kind).toBe('classify-features');
    expect(inferTask([f32('x', [4, 3]), f32('target', [4, 2])]).kind).toBe('regression');
  });
  test('an input it cannot fill is named, with the fix', () => {
    const e = (() => {
      try {
        inferTask([...TEXT_CLS, i32('decoder_input_ids', [2, 3])]);
      } catch (x) {
        return x as LorafaError;
      }
    })()!;
    expect(e.problem).toMatch(/does not know what to put in decoder_input_ids i32\[2,3\]/);
    expect(e.fix).toMatch(/--data synthetic/);
  });
});

describe('splitRows', () => {
  test('a fraction f holds out evenly spaced rows: exactly round-down counts, never the same row twice, 0.1 = every 10th', () => {
    property('splitRows', fc.record({ n: fc.integer({ min: 1, max: 500 }), f: fc.double({ min: 0.01, max: 0.99, noNaN: true }) }), ({ n, f }) => {
      const s = splitRows(n, f);
      expect(s.eval.length).toBe(Math.floor(n * f));
      expect([...s.train, ...s.eval].sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => i));
    });
    expect(splitRows(30, 0.1).eval).toEqual([9, 19, 29]);
  });
  test('a fraction outside (0, 1) names the flag', () => {
    expect(() => splitRows(10, 1)).toThrow(/--eval-split: must be a fraction strictly between 0 and 1, got 1/);
  });
});

describe('CharTokenizer.encodePrefix', () => {
  test('is encode(s) cut to n ids, for any text (astral characters, lowercase, unknowns)', () => {
    const lower = CharTokenizer.fromText('abcdefghijklmnopqrstuvwxyzİ😀', { lowercase: true });
    property(
      'encodePrefix',
      fc.record({ s: fc.string({ unit: fc.constantFrom('a', 'B', 'z', 'İ', '😀', '\n', 'é', 'Q'), maxLength: 40 }), n: fc.integer({ min: 0, max: 45 }) }),
      ({ s, n }) => {
        for (const t of [tok, lower]) expect([...t.encodePrefix(s, n)]).toEqual([...t.encode(s).subarray(0, n)]);
      },
    );
  });
});

describe('text classification', () => {
  const rows = [
    { text: 'abc', label: 'spam' },
    { text: 'a much longer text than six', label: 'ham' },
    { text: 'xyz', label: 'ham' },
    { text: 'hello there', label: 'eggs' },
  ];
  test('string labels become a sorted class list; texts are truncated to seq (and counted), left-padded with 0', async () => {
    const d = await openDataset({ train: { source: memoryRows(rows, { name: 'mem' }) }, inputs: TEXT_CLS, classes: 3, tokenizer: tok, seed: 0 });
    expect(d.kind).toBe('classify');
    expect(d.classes).toEqual(['eggs', 'ham', 'spam']);
    expect(d.notes.join('\n')).toMatch(/^2 of 4 training texts are longer than the model's 6 tokens: truncated to their first 6$/);
    // Every epoch a permutation: 2 steps of 2 rows see all 4 rows once.
    const seen: number[] = [];
    for (const t of [1, 2]) {
      const b = await d.batch(t, 2);
      expect(b.input_ids.length).toBe(12);
      seen.push(...b.labels);
    }
    expect(seen.sort()).toEqual([0, 1, 1, 2]);
    const first = await d.batch(1, 4);
    const abc = first.input_ids.findIndex((_, k) => k % 6 === 0 && first.labels[k / 6] === 2) / 6;
    expect([...first.input_ids.subarray(abc * 6, abc * 6 + 6)]).toEqual([0, 0, 0, ...tok.encode('abc')]);
  });

  test('batch t depends only on (seed, t), in any order of asking (a resumed run sees the same batches)', async () => {
    const many = Array.from({ length: 50 }, (_, i) => ({ text: `row ${'abcdefghij'[i % 10]}`, label: String(i % 3) }));
    const open = () => openDataset({ train: { source: memoryRows(many, { name: 'mem' }) }, inputs: TEXT_CLS, classes: 3, tokenizer: tok, seed: 7 });
    const a = await open();
    const b = await open();
    for (const t of [3, 1, 9]) expect(await b.batch(t, 8)).toEqual(await a.batch(t, 8));
    // Another seed, another order.
    const c = await openDataset({ train: { source: memoryRows(many, { name: 'mem' }) }, inputs: TEXT_CLS, classes: 3, tokenizer: tok, seed: 8 });
    expect(await c.batch(3, 8)).not.toEqual(await a.batch(3, 8));
    expect(a.classes).toBeUndefined(); // integer labels are class indices
  });

  test('every bad row is named by file:line, with the fix', async () => {
    const csv = file('bad-label.csv', 'text,label\nabc,0\nabd,1\nabe,7\n');
    const e1 = await failure(openDataset({ train: { source: await openRows(csv) }, inputs: TEXT_CLS, classes: 3, tokenizer: tok, seed: 0 }));
    expect(e1.where).toBe(`${csv}:4`);
    expect(e1.problem).toBe("label 7 is outside the model's classes 0…2");
    expect(e1.fix).toMatch(/^labels are class indices 0…2/);

    const jsonl = file('missing.jsonl', '{"text":"abc","label":1}\n{"txt":"abd","label":0}\n');
    const e2 = await failure(openDataset({ train: { source: await openRows(jsonl) }, inputs: TEXT_CLS, classes: 3, tokenizer: tok, seed: 0 }));
    expect(e2.where).toBe(`${jsonl}:2`);
    expect(e2.problem).toBe('row has no field "text" (its fields: txt, label)');
    expect(e2.fix).toBe('add "text" to every row, or name another field with --text-field');

    const many = file('too-many.csv', 'text,label\na,x\nb,y\nc,z\nd,w\n');
    const e3 = await failure(openDataset({ train: { source: await openRows(many) }, inputs: TEXT_CLS, classes: 3, tokenizer: tok, seed: 0 }));
    expect(e3.where).toBe(`${many}, column "label"`);
    expect(e3.problem).toBe('holds 4 classes (w, x, y, z), the model has 3');

    const nocol = file('no-column.csv', 'body,label\na,1\n');
    const e4 = await failure(openDataset({ train: { source: await openRows(nocol) }, inputs: TEXT_CLS, classes: 3, tokenizer: tok, seed: 0 }));
    expect(e4.problem).toBe('has no column "text"; its columns are "body", "label"');
    expect(e4.fix).toBe('name the right one with --text-field <column>');

    const train = file('names.csv', 'text,label\na,cat\nb,dog\n');
    const evalFile = file('names-eval.csv', 'text,label\na,cat\nb,cow\n');
    const e5 = await failure(
      openDataset({ train: { source: await openRows(train) }, eval: { source: await openRows(evalFile) }, inputs: TEXT_CLS, classes: 3, tokenizer: tok, seed: 0 }),
    );
    expect(e5.where).toBe(`${evalFile}:3`);
    expect(e5.problem).toBe('label "cow" is not one of the training data\'s classes (cat, dog)');

    const big = CharTokenizer.fromText('abcdefghijklmnopqrstuvwxyz0123456789');
    const e6 = await failure(openDataset({ train: { source: await openRows(train) }, inputs: TEXT_CLS, classes: 3, tokenizer: big, vocab: 20, seed: 0 }));
    expect(e6.problem).toBe("the tokenizer has 38 symbols, the model's embedding has 20 rows (config vocab)");
  });
});

describe('numeric features', () => {
  test('feature columns default to every column but the label; a vector column counts its length', async () => {
    const csv = file('feat.csv', 'a,b,c,label\n1,2,3,0\n4,5,6,1\n7,8,9,2\n1.5,2.5,3.5,0\n');
    const d = await openDataset({ train: { source: await openRows(csv) }, inputs: FEAT, classes: 3, seed: 0 });
    const b = await d.batch(1, 4);
    const rows = [...Array(4)].map((_, r) => [...b.x.subarray(r * 3, r * 3 + 3)]);
    expect(rows.map((r) => r.join(',')).sort()).toEqual(['1,2,3', '1.5,2.5,3.5', '4,5,6', '7,8,9']);
    const jsonl = file('feat.jsonl', '{"v":[1,2,3],"label":0}\n{"v":[4,5,6],"label":1}\n');
    const j = await openDataset({ train: { source: await openRows(jsonl) }, inputs: FEAT, classes: 3, seed: 0 });
    expect(j.description).toMatch(/3 features \(v\) → x/);
  });

  test('a non-number, a wrong count or an empty file is named', async () => {
    const nan = file('nan.csv', 'a,b,c,label\n1,2,3,0\n4,five,6,1\n');
    const e1 = await failure(openDataset({ train: { source: await openRows(nan) }, inputs: FEAT, classes: 3, seed: 0 }));
    expect(e1.where).toBe(`${nan}:3`);
    expect(e1.problem).toBe('feature "b": "five" is not a number');
    const short = file('short.csv', 'a,b,label\n1,2,0\n');
    const e2 = await failure(openDataset({ train: { source: await openRows(short) }, inputs: FEAT, classes: 3, seed: 0 }));
    expect(e2.where).toBe(`${short}:2`);
    expect(e2.problem).toBe("row has 2 feature values (a, b), the model's input takes 3");
    expect(e2.fix).toMatch(/--feature-fields/);
    const empty = file('empty.csv', '');
    const e3 = await failure(openRows(empty));
    expect(e3.where).toBe(empty);
    expect(e3.problem).toMatch(/^holds no rows/);
  });
});

describe('language modelling', () => {
  test('rows joined by newlines into one token stream; windows of seq+1; evaluation in consecutive windows', async () => {
    const txt = file('corpus.txt', 'abcdefghij\nklmnopqrst\n');
    const src = await openRows(txt);
    const d = await openDataset({ train: { source: src }, eval: { source: src }, inputs: LM, tokenizer: tok, seed: 3 });
    expect(d.kind).toBe('lm');
    expect(d.trainCount).toBe(21); // 10 + newline + 10
    const all = tok.encode('abcdefghij\nklmnopqrst');
    const b = await d.batch(1, 2);
    for (let r = 0; r < 2; r++) {
      const ids = [...b.input_ids.subarray(r * 4, r * 4 + 4)];
      const labels = [...b.labels.subarray(r * 4, r * 4 + 4)];
      const at = [...all].findIndex((_, s) => ids.every((v, k) => all[s + k] === v));
      expect(at).toBeGreaterThanOrEqual(0);
      expect(labels).toEqual([...all.subarray(at + 1, at + 5)]);
    }
    const evals = [];
    for await (const e of d.evalBatches(2)) evals.push(e);
    // (21 − 1) / 4 = 5 windows; batches of 2: two full batches, the partial third dropped.
    expect(evals.length).toBe(2);
    expect([...evals[1].feeds.input_ids]).toEqual([...all.subarray(8, 16)]);
    expect(d.evalCount).toBe(20);
  });
});
