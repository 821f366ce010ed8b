// The data flags of every entry point, turned into the Dataset the loop trains on:
//
//   --data FILE | PRESET | synthetic    a file (jsonl, csv, tsv, parquet, txt, idx, npy,
//                                       safetensors), a built-in data set (mnist, fashion-mnist,
//                                       brown, email, spam) or the synthetic task
//   --eval-data FILE | --eval-split F   evaluation rows: another file, or every 1/F-th row held out
//                                       (a preset brings its own fixed test split)
//   --text-field, --label-field, --feature-fields, --format, --labels, --tokenizer
//
// Text goes through the character tokenizer of the shipped decoder unless --tokenizer names
// another, or the --base folder has a tokenizer.json.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { openDataset, splitRows, type Dataset, type RowView, type TextTokenizer } from '../data/dataset.ts';
import { isDataPreset, presetData } from '../data/presets.ts';
import { DATA_FORMATS, openRows, type DataFormat } from '../data/rows.ts';
import { syntheticDataset } from '../data/synthetic.ts';
import { CharTokenizer } from '../data/tokenizer.ts';
import { isHfTokenizerJson, loadHfTokenizer } from '../data/hf-tokenizer.ts';
import { LorafaError } from '../ir/errors.ts';
import type { TrainingProgram } from './program.ts';
import { DEFAULT_TOKENIZER } from './presets.ts';

export interface DataFlags {
  /** A data file, a preset name, or "synthetic". */
  readonly data?: string;
  readonly evalData?: string;
  readonly evalSplit?: number;
  readonly format?: string;
  /** A labels file for array formats (IDX, .npy) of --data, and of --eval-data. */
  readonly labels?: string;
  readonly evalLabels?: string;
  readonly textField?: string;
  readonly labelField?: string;
  /** Comma-separated. */
  readonly featureFields?: string;
  /** A tokenizer.json (lorafa's character tokenizer). */
  readonly tokenizer?: string;
}

export interface DataContext {
  readonly seed: number;
  /** The --base given (a file or folder), where a tokenizer.json may live. */
  readonly base?: string;
  /** Presets: evaluate on the fixed test split, or on every 10th training row (hyperparameter search). */
  readonly evalOn?: 'test' | 'validation';
  /** Class names a checkpoint recorded. */
  readonly expectClasses?: readonly string[];
}

/**
 * Reads a tokenizer.json: a Hugging Face one (BPE, WordPiece, Unigram; with tokenizer_config.json
 * beside it for padding, truncation and special tokens) or lorafa's character tokenizer (what
 * `npm run pretrain` writes, {"kind": "char", …}).
 */
export function loadTokenizer(file: string, fix?: string): TextTokenizer {
  if (!existsSync(file)) throw new LorafaError(file, 'no tokenizer file here', fix ?? 'pass --tokenizer the tokenizer.json of the model (npm run pretrain writes one beside model.safetensors)');
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new LorafaError(file, `not valid JSON: ${(e as Error).message}`, fix ?? 'restore the tokenizer file');
  }
  return isHfTokenizerJson(json) ? loadHfTokenizer(file) : CharTokenizer.fromJSON(json, file);
}

/** --tokenizer, else the --base folder's tokenizer.json, else the shipped decoder's. */
export function resolveTokenizer(flags: DataFlags, base: string | undefined): { tokenizer: TextTokenizer; file: string } {
  if (flags.tokenizer) return { tokenizer: loadTokenizer(resolve(flags.tokenizer)), file: resolve(flags.tokenizer) };
  if (base) {
    const b = resolve(base);
    const dir = existsSync(b) && statSync(b).isDirectory() ? b : dirname(b);
    const file = join(dir, 'tokenizer.json');
    if (existsSync(file)) return { tokenizer: loadTokenizer(file), file };
  }
  return {
    tokenizer: loadTokenizer(DEFAULT_TOKENIZER, 'restore the shipped base models (`git checkout models/pretrained`, or reinstall lorafa), or pass --tokenizer FILE'),
    file: DEFAULT_TOKENIZER,
  };
}

function checkFormat(f: string | undefined): DataFormat | undefined {
  if (f === undefined) return undefined;
  if (!(DATA_FORMATS as readonly string[]).includes(f)) throw new LorafaError('--format', `unknown data format "${f}"`, `use one of: ${DATA_FORMATS.join(', ')}`);
  return f as DataFormat;
}

function dataFile(flag: string, file: string): string {
  const full = resolve(file);
  if (!existsSync(full)) throw new LorafaError(file, `no such data file (${flag})`, `check the path; ${flag} takes a file (jsonl, csv, tsv, parquet, txt, idx, npy, safetensors)${flag === '--data' ? ', a preset (mnist, fashion-mnist, brown, email, spam) or synthetic' : ''}`);
  if (statSync(full).isDirectory()) throw new LorafaError(file, `is a directory (${flag})`, `pass ${flag} one data file`);
  return file;
}

export async function openTrainingData(p: TrainingProgram, flags: DataFlags, ctx: DataContext): Promise<Dataset> {
  const data = flags.data;
  if (!data) {
    throw new LorafaError(
      '--data',
      'no training data given',
      'pass --data FILE (jsonl, csv, tsv, parquet, txt, idx, npy, safetensors), a built-in data set (mnist, fashion-mnist, brown, email, spam), or --data synthetic for the synthetic smoke-test task',
    );
  }
  const needsText = p.inputs.some((i) => i.name === 'input_ids');
  const tokenizer: TextTokenizer | undefined = needsText ? resolveTokenizer(flags, ctx.base).tokenizer : undefined;
  const common = {
    inputs: p.inputs,
    classes: p.classes,
    vocab: p.vocab,
    tokenizer,
    seed: ctx.seed,
    expectClasses: ctx.expectClasses,
    textField: flags.textField,
    labelField: flags.labelField,
    featureFields: flags.featureFields?.split(',').map((s) => s.trim()).filter(Boolean),
  };
  if (data === 'synthetic') {
    if (flags.evalData || flags.evalSplit !== undefined) throw new LorafaError('--eval-data', 'the synthetic task has no evaluation set', 'drop --eval-data / --eval-split, or train on a data file');
    return syntheticDataset(p.inputs, p.spec.sizes, ctx.seed);
  }
  if (isDataPreset(data) && !existsSync(resolve(data))) {
    if (flags.evalData || flags.evalSplit !== undefined) {
      throw new LorafaError('--eval-data', `the ${data} preset evaluates on its own fixed test split`, 'drop --eval-data / --eval-split (or pass the data as a file)');
    }
    const d = presetData(data, ctx.evalOn);
    return openDataset({ ...common, train: d.train, eval: d.eval, name: d.source });
  }
  const format = checkFormat(flags.format);
  const train = await openRows(dataFile('--data', data), { format, labels: flags.labels });
  let trainView: RowView = { source: train };
  let evalView: RowView | undefined;
  if (flags.evalData && flags.evalSplit !== undefined) throw new LorafaError('--eval-split', 'both --eval-data and --eval-split given', 'evaluate on one: a file, or a held-out fraction of --data');
  if (flags.evalData) {
    evalView = { source: await openRows(dataFile('--eval-data', flags.evalData), { format, labels: flags.evalLabels }), label: 'evaluation rows' };
  } else if (flags.evalSplit !== undefined) {
    const s = splitRows(train.count, flags.evalSplit);
    if (!s.train.length || !s.eval.length) throw new LorafaError('--eval-split', `${flags.evalSplit} of ${train.count} rows leaves ${s.train.length} to train on and ${s.eval.length} to evaluate`, 'use a larger file or another fraction');
    trainView = { source: train, rows: s.train, label: 'training rows' };
    evalView = { source: train, rows: s.eval, label: `evaluation rows (--eval-split ${flags.evalSplit}: evenly spaced, one in ${Math.round(1 / flags.evalSplit)})` };
  }
  return openDataset({ ...common, train: trainView, eval: evalView });
}
