// `lorafa finetune MODEL.ts --data FILE` as a user runs it (the checkout's bin): the formats end to
// end (CSV, Parquet with the same rows, a plain-text corpus for a language model), and bad data:
// each case exits 1 with file:line (or row), the problem and a fix, no stack trace, and the files
// an earlier run wrote into the same --out stay byte for byte as they were.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parquetWriteFile } from 'hyparquet-writer';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ROOT } from './helpers.ts';

const tmp = mkdtempSync(join(tmpdir(), 'lorafa-byo-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const bin = join(ROOT, 'bin', 'lorafa.mjs');
const MLP = join(ROOT, 'models', 'mlp.ts');

function lorafa(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args, '--progress', 'none'], { cwd: tmp, encoding: 'utf8', timeout: 300_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const file = (name: string, text: string) => {
  const p = join(tmp, name);
  writeFileSync(p, text);
  return p;
};

function snapshot(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(relative(dir, p), readFileSync(p));
    }
  };
  walk(dir);
  return out;
}

// models/mlp.ts, config toy: 12 features → 3 classes.
const HEADER = Array.from({ length: 12 }, (_, i) => `x${i}`);
const rows: number[][] = [];
const labels: number[] = [];
let s = 5;
const u = () => ((s = (s * 1103515245 + 12345) % 2147483648), s / 2147483648);
for (let r = 0; r < 240; r++) {
  const x = Array.from({ length: 12 }, () => Number((2 * u() - 1).toFixed(5)));
  const sc = [x[0] - x[1], x[2] + x[3], x[4] - x[5] + x[6]];
  rows.push(x);
  labels.push(sc.indexOf(Math.max(...sc)));
}
const csvText = [HEADER.join(',') + ',label', ...rows.map((x, r) => `${x.join(',')},${labels[r]}`)].join('\n') + '\n';

const out = join(tmp, 'out');
let good: Map<string, Buffer>;
let first: ReturnType<typeof lorafa>;

beforeAll(() => {
  file('train.csv', csvText);
  first = lorafa(['finetune', MLP, '--data', 'train.csv', '--eval-split', '0.25', '--steps', '15', '--lr', '1e-2', '--out', out]);
  expect(first.status, first.stderr).toBe(0);
  good = snapshot(out);
});

describe('formats end to end', () => {
  test('CSV: plan, data line, before/after, the files', () => {
    expect(first.stdout).toMatch(/^data: train\.csv: 180 training rows \/ 60 evaluation rows \(--eval-split 0\.25: evenly spaced, one in 4\); 12 features \(x0, x1, x2, x3, … \(12 in all\)\) → x, label "label" → labels$/m);
    expect(first.stdout).toMatch(/^step 0 \(before training\): accuracy [\d.]+% \(60 samples\)/m);
    expect([...good.keys()].sort()).toEqual(['adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'checkpoints/step-000015.safetensors', 'loss.svg', 'memory.svg', 'report.json', 'report.md']);
  });

  test('a CSV larger than the heap trains: rows are indexed, then read per batch, never loaded whole', () => {
    // ~32 MB of rows under a 48 MB heap (the file as a string alone would take 64 MB of UTF-16).
    const big = join(tmp, 'big.csv');
    const [head, ...body] = csvText.trimEnd().split('\n');
    const chunk = body.join('\n') + '\n';
    writeFileSync(big, head + '\n');
    let size = 0;
    while (size < 32e6) {
      writeFileSync(big, chunk, { flag: 'a' });
      size += chunk.length;
    }
    const r = spawnSync(process.execPath, ['--max-old-space-size=48', bin, 'finetune', MLP, '--data', big, '--steps', '3', '--out', join(tmp, 'out-big'), '--progress', 'none'], { cwd: tmp, encoding: 'utf8', timeout: 300_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^data: \S*big\.csv: \d{6,} training rows, no evaluation data/m);
  });

  test('Parquet with the same rows trains exactly as the CSV', () => {
    const columnData = [
      ...HEADER.map((name, c) => ({ name, data: rows.map((x) => x[c]), type: 'DOUBLE' as const })),
      { name: 'label', data: labels.map((l) => BigInt(l)), type: 'INT64' as const },
    ];
    parquetWriteFile({ filename: join(tmp, 'train.parquet'), columnData, rowGroupSize: 64 });
    const p = join(tmp, 'out-parquet');
    const r = lorafa(['finetune', MLP, '--data', 'train.parquet', '--eval-split', '0.25', '--steps', '15', '--lr', '1e-2', '--out', p]);
    expect(r.status, r.stderr).toBe(0);
    const losses = (d: string) => JSON.parse(readFileSync(join(d, 'report.json'), 'utf8')).losses;
    expect(losses(p)).toEqual(losses(out));
  });

  test('a plain-text corpus fine-tunes the shipped decoder as a language model: perplexity, a CAUSAL_LM adapter', () => {
    const line = 'the quick brown fox jumps over the lazy dog, and the dog sleeps on. ';
    file('corpus.txt', Array.from({ length: 60 }, (_, i) => line.slice(i % 7) + line.slice(0, i % 7)).join('\n') + '\n');
    const d = join(tmp, 'out-lm');
    const r = lorafa(['finetune', join(ROOT, 'models', 'llama.ts'), '--config', 'brown', '--base', join(ROOT, 'models', 'pretrained', 'llama-brown'), '--data', 'corpus.txt', '--eval-split', '0.2', '--steps', '4', '--batch', '2', '--out', d]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^data: corpus\.txt: \d+ training tokens from 48 training rows \/ \d+ evaluation tokens from 12 evaluation rows/m);
    expect(r.stdout).toMatch(/perplexity [\d.]+ \(\d+ tokens\)/);
    const rep = JSON.parse(readFileSync(join(d, 'report.json'), 'utf8'));
    expect(rep.after.perplexity).toBeCloseTo(Math.exp(rep.after.loss), 10);
    expect(JSON.parse(readFileSync(join(d, 'adapter', 'adapter_config.json'), 'utf8')).task_type).toBe('CAUSAL_LM');
  });
});

describe('bad data: exit 1, the place, the problem, the fix; the earlier output untouched', () => {
  const lines = csvText.trimEnd().split('\n');
  const cases: [string, string, string[], RegExp, RegExp][] = [
    ['a JSONL line that is not JSON', 'bad.jsonl', ['{"x0": 1, "label": 0}', '{"x0": 2, "label": 1', '{"x0": 3, "label": 2}'], /^lorafa: \S*bad\.jsonl:2: not valid JSON: /m, /fix: write each row as one JSON object on its own line/],
    ['a CSV row with a field missing', 'short-row.csv', [lines[0], lines[1], lines[2].replace(/,[^,]*$/, '')], /^lorafa: \S*short-row\.csv:3: this row has 12 fields, but the header \(line 1\) names 13 columns$/m, /fix: give every row 13 comma-separated fields/],
    ['a row without the label field', 'no-label.jsonl', ['{"v": [1,2,3,4,5,6,7,8,9,10,11,12], "label": 0}', '{"v": [1,2,3,4,5,6,7,8,9,10,11,12]}'], /^lorafa: \S*no-label\.jsonl:2: row has no field "label" \(its fields: v\)$/m, /fix: add "label" to every row, or name another field with --label-field/],
    ['a label outside the model’s classes', 'label-5.csv', [lines[0], lines[1], lines[2].replace(/,\d$/, ',5')], /^lorafa: \S*label-5\.csv:3: label 5 is outside the model's classes 0…2$/m, /fix: labels are class indices 0…2/],
    ['a feature that is not a number', 'nan.csv', [lines[0], lines[1].replace(/^[^,]*/, 'n/a')], /^lorafa: \S*nan\.csv:2: feature "x0": "n\/a" is not a number$/m, /fix: features must be finite numbers/],
    ['a feature count that does not match the model', 'eleven.csv', [lines[0].replace(/^x0,/, ''), lines[1].replace(/^[^,]*,/, '')], /^lorafa: \S*eleven\.csv:2: row has 11 feature values \(x1, x2, x3, x4, x5, x6, … \(11 in all\)\), the model's input takes 12$/m, /fix: choose the columns with --feature-fields/],
    ['an empty file', 'empty.csv', [], /^lorafa: \S*empty\.csv: holds no rows: the file is empty$/m, /fix: \S/],
    ['a format it cannot tell', 'data.xlsx', ['a'], /^lorafa: \S*data\.xlsx: cannot tell the data format from the file name$/m, /fix: name it with one of the extensions .*--format/],
  ];
  test.each(cases)('%s', (_what, name, content, message, fix) => {
    file(name, content.join('\n') + (content.length ? '\n' : ''));
    const r = lorafa(['finetune', MLP, '--data', name, '--steps', '5', '--out', out]);
    expect(r.status, r.stdout + r.stderr).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(fix);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    const now = snapshot(out);
    expect([...now.keys()].sort()).toEqual([...good.keys()].sort());
    for (const [k, v] of good) expect(now.get(k)!.equals(v), `${k} unchanged`).toBe(true);
  });

  test('an evaluation label the training data does not have', () => {
    file('train-names.csv', `${HEADER.join(',')},label\n${rows.slice(0, 8).map((x, i) => `${x.join(',')},${['cat', 'dog'][i % 2]}`).join('\n')}\n`);
    file('eval-names.csv', `${HEADER.join(',')},label\n${rows[9].join(',')},cat\n${rows[10].join(',')},cow\n`);
    const r = lorafa(['finetune', MLP, '--data', 'train-names.csv', '--eval-data', 'eval-names.csv', '--steps', '5', '--out', out]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^lorafa: \S*eval-names\.csv:3: label "cow" is not one of the training data's classes \(cat, dog\)\n\s+fix: evaluation labels must appear in the training data$/m);
  });
});
