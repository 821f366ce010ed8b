// The synthetic learnable task: stand-in data until real data sets arrive, derived from the
// model's inputs alone and labelled "synthetic" wherever it appears (progress lines, plan.json,
// checkpoint metadata).
//
// 1. Classifiers (an i32 `labels` input of shape [batch]): features are uniform in [-1, 1) and
//    token ids uniform below `vocab`; the label is the argmax of a fixed random teacher,
//    Σ x·W + Σ E[first token of each id input], W and E normal(0, 1) drawn from the seed.
// 2. Token models (`labels` has batch·seq elements): every id input is a counting sequence
//    x_i = (s + i) mod vocab from a random start s per row, and the label at each position is
//    the next token, (x_i + 1) mod vocab, of the id input whose shape matches the labels.
// 3. The batch for step t depends only on (seed, t): each input draws from its own stream keyed
//    by (seed, "synthetic/<t>/<input>"), so a resumed run sees exactly the data an uninterrupted
//    run sees.
import { LorafaError } from '../ir/errors.ts';
import { numel } from '../ir/types.ts';
import type { Dataset, Feeds, InputSpec } from './dataset.ts';
import { streamFor } from '../runtime/init.ts';

export const DATA_SOURCES = ['synthetic'] as const;
export type DataSourceName = (typeof DATA_SOURCES)[number];

export type { InputSpec };

export interface DataSource {
  readonly name: DataSourceName;
  /** One line: what the task is. */
  readonly description: string;
  /** What throughput counts: tokens for sequence models, samples for classifiers. */
  readonly unit: 'tokens' | 'samples';
  /** Tokens or samples per step. */
  readonly perStep: number;
  /** The batch of 1-based step t: a value per element of every data input. */
  batch(t: number): Record<string, Float64Array>;
}

function normals(n: number, u: () => number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
  return out;
}

/**
 * The synthetic task for a step's data inputs (optimizer scalars `optim.*` excluded). `sizes` is
 * the model config: `classes` bounds classifier labels and `vocab` bounds token ids.
 */
export function syntheticTask(allInputs: readonly InputSpec[], sizes: Readonly<Record<string, unknown>>, seed: number): DataSource {
  const inputs = allInputs.filter((i) => !i.name.startsWith('optim.'));
  const where = 'synthetic data';
  const labels = inputs.find((i) => i.name === 'labels');
  const x = inputs.find((i) => i.name === 'x' && i.dtype === 'f32');
  const regressionTarget = inputs.find((i) => i.name === 'target' && i.dtype === 'f32');
  if (!labels && x && regressionTarget && numel(x.shape) === numel(regressionTarget.shape)) {
    // Regression (W1's MSE): a fixed smooth elementwise teacher, the same at every step.
    return {
      name: 'synthetic',
      description: 'synthetic regression: x uniform in [-1, 1), target = sin(2·x) elementwise',
      unit: 'tokens',
      perStep: x.shape[0],
      batch(t) {
        const xs = new Float64Array(numel(x.shape)).map(((u) => () => 2 * u() - 1)(streamFor(seed, `synthetic/${t}/x`)));
        return { x: xs, target: xs.map((v) => Math.sin(2 * v)) };
      },
    };
  }
  if (!labels || labels.dtype !== 'i32') {
    throw new LorafaError(
      where,
      `the synthetic task needs an i32 input named "labels"; this model's inputs are ${inputs.map((i) => `${i.name} ${i.dtype}[${i.shape.join(',')}]`).join(', ')}`,
      'give the model an integer `labels` input (class labels or next-token targets)',
    );
  }
  const num = (k: string) => (typeof sizes[k] === 'number' ? (sizes[k] as number) : undefined);
  const vocab = num('vocab');
  const ids = inputs.filter((i) => i.dtype === 'i32' && i !== labels);
  const floats = inputs.filter((i) => i.dtype !== 'i32');
  if (ids.length && vocab === undefined) {
    throw new LorafaError(where, `inputs ${ids.map((i) => i.name).join(', ')} hold token ids but the config has no "vocab"`, 'add `vocab` to the model config');
  }
  const stream = (t: number, name: string) => streamFor(seed, `synthetic/${t}/${name}`);
  const uniform = (n: number, u: () => number) => new Float64Array(n).map(() => 2 * u() - 1);
  const batchRows = labels.shape[0];
  const nLabels = numel(labels.shape);
  const isClassifier = labels.shape.length === 1 && !ids.some((i) => i.shape.length >= 2 && numel(i.shape) === nLabels);

  if (isClassifier) {
    const classes = num('classes');
    if (classes === undefined) throw new LorafaError(where, 'the labels are per sample but the config has no "classes"', 'add `classes` to the model config');
    // The teacher: fixed for a seed, the same at every step.
    const u = streamFor(seed, 'synthetic/teacher');
    const W = floats.map((f) => normals((numel(f.shape) / batchRows) * classes, u));
    const E = ids.map(() => normals(vocab! * classes, u));
    const parts = [...floats.map((f) => f.name), ...ids.map((i) => `first token of ${i.name}`)].join(' + ');
    return {
      name: 'synthetic',
      description: `synthetic classification: labels = argmax of a fixed random linear teacher over ${parts} (${classes} classes)`,
      unit: 'samples',
      perStep: batchRows,
      batch(t) {
        const out: Record<string, Float64Array> = {};
        const scores = new Float64Array(batchRows * classes);
        floats.forEach((f, k) => {
          const x = uniform(numel(f.shape), stream(t, f.name));
          out[f.name] = x;
          const width = x.length / batchRows;
          for (let r = 0; r < batchRows; r++)
            for (let j = 0; j < width; j++) for (let c = 0; c < classes; c++) scores[r * classes + c] += x[r * width + j] * W[k][j * classes + c];
        });
        ids.forEach((i, k) => {
          const u = stream(t, i.name);
          const x = new Float64Array(numel(i.shape)).map(() => Math.floor(u() * vocab!));
          out[i.name] = x;
          const width = x.length / batchRows;
          for (let r = 0; r < batchRows; r++) for (let c = 0; c < classes; c++) scores[r * classes + c] += E[k][x[r * width] * classes + c];
        });
        const y = new Float64Array(batchRows);
        for (let r = 0; r < batchRows; r++) {
          let best = 0;
          for (let c = 1; c < classes; c++) if (scores[r * classes + c] > scores[r * classes + best]) best = c;
          y[r] = best;
        }
        out.labels = y;
        return out;
      },
    };
  }

  const target = [...ids].reverse().find((i) => i.shape.length >= 2 && numel(i.shape) === nLabels);
  if (!target) {
    throw new LorafaError(where, `labels [${labels.shape.join(',')}] match neither a batch of classes nor any token input's shape`, 'make labels [batch] (classes) or [batch·seq] (next tokens)');
  }
  const V = vocab!;
  return {
    name: 'synthetic',
    description: `synthetic next-token task: ${ids.map((i) => i.name).join(', ')} count up mod ${V} from a random start; labels = (${target.name} + 1) mod ${V}`,
    unit: 'tokens',
    perStep: nLabels,
    batch(t) {
      const out: Record<string, Float64Array> = {};
      for (const f of floats) out[f.name] = uniform(numel(f.shape), stream(t, f.name));
      for (const i of ids) {
        const u = stream(t, i.name);
        const rows = i.shape[0];
        const width = numel(i.shape) / rows;
        const x = new Float64Array(numel(i.shape));
        for (let r = 0; r < rows; r++) {
          const start = Math.floor(u() * V);
          for (let j = 0; j < width; j++) x[r * width + j] = (start + j) % V;
        }
        out[i.name] = x;
      }
      out.labels = out[target.name].map((x) => (x + 1) % V);
      return out;
    },
  };
}

/**
 * The synthetic task as a Dataset (`--data synthetic`): batches of any row count (a grad-accum
 * step asks for batch × K rows; each input's first dimension is scaled), no evaluation set.
 */
export function syntheticDataset(inputs: readonly InputSpec[], sizes: Readonly<Record<string, unknown>>, seed: number): Dataset {
  const data = inputs.filter((i) => !i.name.startsWith('optim.'));
  const base = syntheticTask(data, sizes, seed);
  const B = data[0]?.shape[0] ?? 1;
  const tasks = new Map<number, DataSource>([[B, base]]);
  const taskFor = (rows: number) => {
    let t = tasks.get(rows);
    if (!t) {
      const scaled = data.map((i) => ({ ...i, shape: [(i.shape[0] / B) * rows, ...i.shape.slice(1)] }));
      tasks.set(rows, (t = syntheticTask(scaled, sizes, seed)));
    }
    return t;
  };
  return {
    kind: base.unit === 'tokens' && data.some((i) => i.name === 'input_ids') ? 'lm' : data.some((i) => i.name === 'labels') ? 'classify' : 'regression',
    description: `${base.description} [synthetic]`,
    unit: base.unit,
    unitsPerRow: base.perStep / B,
    trainCount: Infinity,
    evalCount: 0,
    notes: [],
    fingerprint: `synthetic:${base.description}`,
    async batch(t, rows) {
      const b = taskFor(rows).batch(t);
      const out: Feeds = {};
      for (const i of data) out[i.name] = i.dtype === 'i32' ? Int32Array.from(b[i.name]) : Float32Array.from(b[i.name]);
      return out;
    },
    async *evalBatches() {},
    close() {},
  };
}
