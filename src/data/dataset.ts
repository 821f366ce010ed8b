// From rows to a model's inputs: the one data path every entry point trains on (user files and the
// built-in presets alike).
//
// 1. The task follows from the training step's data inputs (the model's own names):
//      input_ids i32 [B, S] + labels i32 [B]      text classification  (--text-field, --label-field)
//      input_ids i32 [B, S] + labels i32 [B·S]    language modelling   (--text-field)
//      an f32 input [B, n]  + labels i32 [B]      classification on numeric features (--feature-fields)
//      an f32 input [B, n]  + target f32 [B, k]   regression (--feature-fields, --label-field)
// 2. Opening scans every training and evaluation row once, before any step runs: a missing field,
//    a label outside the model's classes, a feature that is not a number, a wrong feature count or
//    an empty file is an error naming file:line (or row) and the fix, never a crash at step 5000.
//    The scan also collects string labels into a class list (sorted; recorded in the outputs),
//    counts texts longer than the model's sequence (truncated: the count is reported) and, for
//    language modelling, tokenises the corpus into a token store (rows joined by '\n').
// 3. Batches are deterministic in (seed, step): classification and regression draw rows from
//    epoch-wise permutations (classificationStream), language modelling draws windows of seq+1
//    tokens (languageModelStream); rows are read from the file when their batch is built.
//    batch(t, rows) builds the effective batch of optimizer step t (batch × grad-accum rows), so
//    K micro-batches of b rows see exactly the samples of one batch of K·b.
// 4. Texts are truncated to the first S tokens and left-padded with the tokenizer's pad id (0).
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { LorafaError } from '../ir/errors.ts';
import { numel, type DType } from '../ir/types.ts';
import { classificationStream, evalBatches as evalIndexBatches, languageModelStream, type ClassificationStream } from './batches.ts';
import type { Cell, Row, RowSource } from './rows.ts';
import { TokenWriter, type TokenStore } from './tokens.ts';

export interface InputSpec {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: DType;
}

export type Feeds = Record<string, Int32Array | Float32Array>;

/** Rows of a source, optionally a subset in a given order (a split). */
export interface RowView {
  readonly source: RowSource;
  /** Source row indices; default every row. */
  readonly rows?: readonly number[];
  /** How descriptions name its rows (a plural noun), e.g. "test messages"; default "training rows" / "evaluation rows". */
  readonly label?: string;
}

/** What text goes through: the shipped character tokenizer, or (later) a Hugging Face one. */
export interface TextTokenizer {
  readonly vocabSize: number;
  /** The ids of a text, with the tokenizer's own special tokens (a Hugging Face BOS, [CLS]…[SEP]). */
  encode(text: string): Int32Array;
  /** At most the first n ids, without tokenising the rest of a long text (optional). */
  encodePrefix?(text: string, n: number): Int32Array;
  /** At most `max` ids, special tokens kept, the text cut on the tokenizer's truncation side (optional). */
  encodeTruncated?(text: string, max: number): { ids: Int32Array; truncated: boolean };
  /** The padding id (lorafa's character tokenizer: 0). */
  readonly padId?: number;
  /** The tokenizer's padding side (Hugging Face's padding_side); default: see padText. */
  readonly paddingSide?: 'left' | 'right';
  /** Ids between two documents of a language-modelling corpus (default: the ids of "\n"). */
  separator?(): Int32Array;
}

/** A text as at most `max` ids, and whether it was longer. */
function truncate(tok: TextTokenizer, text: string, max: number): { ids: Int32Array; truncated: boolean } {
  if (tok.encodeTruncated) return tok.encodeTruncated(text, max);
  const ids = tok.encodePrefix ? tok.encodePrefix(text, max + 1) : tok.encode(text);
  return { ids: ids.subarray(0, max), truncated: ids.length > max };
}

export interface MappingOptions {
  /** The text column (default "text"). */
  readonly textField?: string;
  /** The label column (default "label"); regression: one or more numeric columns. */
  readonly labelField?: string | readonly string[];
  /** Numeric feature columns (default: every column but the label and the text, in order). */
  readonly featureFields?: readonly string[];
}

export interface OpenDatasetOptions extends MappingOptions {
  readonly train: RowView;
  readonly eval?: RowView;
  /** The training step's data inputs (optimizer scalars `optim.*` are ignored). */
  readonly inputs: readonly InputSpec[];
  /** The classifier's number of classes (its logits' width). */
  readonly classes?: number;
  /** The model's vocabulary (embedding rows): a tokenizer with more symbols is refused. */
  readonly vocab?: number;
  readonly tokenizer?: TextTokenizer;
  readonly seed: number;
  /** Class names a checkpoint recorded: the data must give the same list. */
  readonly expectClasses?: readonly string[];
  /** One line: where the data comes from, for the description (default: the files). */
  readonly name?: string;
}

export type DataKind = 'classify' | 'lm' | 'regression';

export interface EvalBatch {
  readonly feeds: Feeds;
  /** Classification: the true labels of the rows. */
  readonly labels?: Int32Array;
  /** Classification / regression: leading rows that are real; LM: tokens scored. */
  readonly valid: number;
}

export interface Dataset {
  readonly kind: DataKind;
  /** One line: what the data is, with counts. */
  readonly description: string;
  /** What throughput counts. */
  readonly unit: 'samples' | 'tokens';
  /** Units per batch row (S for language modelling, 1 otherwise). */
  readonly unitsPerRow: number;
  readonly trainCount: number;
  /** Evaluation samples (or tokens scored); 0 without evaluation data. */
  readonly evalCount: number;
  /** Class names, index = class id, when the labels are strings. */
  readonly classes?: readonly string[];
  /** Things worth saying once (truncated texts, …). */
  readonly notes: readonly string[];
  /** What a checkpoint records so that --resume refuses other data. */
  readonly fingerprint: string;
  /** The feeds of optimizer step t (1-based), `rows` rows (the batch × grad-accum). */
  batch(t: number, rows: number): Promise<Feeds>;
  /** The evaluation set in batches of `batch` rows (the last padded), or nothing. */
  evalBatches(batch: number): AsyncGenerator<EvalBatch>;
  close(): void;
}

type Shape =
  | { readonly kind: 'classify-text'; readonly ids: InputSpec; readonly labels: InputSpec; readonly seq: number; readonly mask?: InputSpec }
  | { readonly kind: 'classify-features'; readonly x: InputSpec; readonly labels: InputSpec; readonly width: number }
  | { readonly kind: 'lm'; readonly ids: InputSpec; readonly labels: InputSpec; readonly seq: number; readonly mask?: InputSpec }
  | { readonly kind: 'regression'; readonly x: InputSpec; readonly target: InputSpec; readonly width: number; readonly targetWidth: number };

const fmtInput = (i: InputSpec) => `${i.name} ${i.dtype}[${i.shape.join(',')}]`;

/** Which task the model's inputs describe; an error naming them when none fits. */
export function inferTask(all: readonly InputSpec[], where = 'the model'): Shape {
  const inputs = all.filter((i) => !i.name.startsWith('optim.'));
  const unsupported = (why: string): never => {
    throw new LorafaError(
      where,
      `cannot feed this model from a data file: ${why}; its inputs are ${inputs.map(fmtInput).join(', ')}`,
      'name the inputs as lorafa\'s data path expects (input_ids i32 [batch, seq] and labels i32 [batch] or [batch·seq]; or an f32 [batch, n] input and labels i32 [batch] / target f32 [batch, k]), or train with --data synthetic',
    );
  };
  const labels = inputs.find((i) => i.name === 'labels');
  const target = inputs.find((i) => i.name === 'target' && i.dtype === 'f32');
  const ids = inputs.find((i) => i.name === 'input_ids');
  const mask = ids ? inputs.find((i) => i.name === 'attention_mask' && i.dtype === 'f32' && i.shape.join() === ids.shape.join()) : undefined;
  const floats = inputs.filter((i) => i.dtype === 'f32' && i !== target && i !== mask);
  const known = new Set([labels, target, ids, mask, ...floats.slice(0, 1)].filter(Boolean));
  const extra = inputs.filter((i) => !known.has(i));
  if (extra.length) unsupported(`lorafa does not know what to put in ${extra.map(fmtInput).join(', ')}`);
  if (ids) {
    if (ids.dtype !== 'i32' || ids.shape.length !== 2) unsupported('input_ids must be i32 [batch, seq]');
    if (floats.length) unsupported('a text model with a float input as well');
    if (!labels || labels.dtype !== 'i32') return unsupported('a text model needs an i32 "labels" input');
    const [B, S] = ids.shape;
    if (numel(labels.shape) === B && labels.shape.length === 1) return { kind: 'classify-text', ids, labels, seq: S, mask };
    if (numel(labels.shape) === B * S) return { kind: 'lm', ids, labels, seq: S, mask };
    return unsupported(`labels [${labels.shape.join(',')}] is neither [batch] (a class per text) nor [batch·seq] (the next token at every position)`);
  }
  const x = floats[0];
  if (!x) return unsupported('no input_ids and no f32 feature input');
  if (x.shape.length < 1) unsupported(`${x.name} is a scalar`);
  const B = x.shape[0];
  const width = numel(x.shape) / B;
  if (labels) {
    if (labels.dtype !== 'i32' || numel(labels.shape) !== B) unsupported('labels must be i32 [batch] beside a feature input');
    return { kind: 'classify-features', x, labels, width };
  }
  if (target) {
    if (target.shape[0] !== B) unsupported(`target's first dimension ${target.shape[0]} is not the batch ${B}`);
    return { kind: 'regression', x, target, width, targetWidth: numel(target.shape) / B };
  }
  return unsupported('no "labels" or "target" input to learn');
}

/** Evenly spaced held-out rows: row k of n is held out when ⌊(k+1)·f⌋ > ⌊k·f⌋ (f = 0.1: rows 9, 19, …). */
export function splitRows(count: number, fraction: number): { train: number[]; eval: number[] } {
  if (!(fraction > 0 && fraction < 1)) throw new LorafaError('--eval-split', `must be a fraction strictly between 0 and 1, got ${fraction}`, 'e.g. --eval-split 0.1');
  const train: number[] = [];
  const held: number[] = [];
  for (let k = 0; k < count; k++) (Math.floor((k + 1) * fraction) > Math.floor(k * fraction) ? held : train).push(k);
  return { train, eval: held };
}

/** A cheap content fingerprint of a file: size and sha256 of its first and last MiB. */
export function fileFingerprint(file: string): string {
  let st;
  try {
    st = statSync(file);
  } catch {
    return `${file}:missing`;
  }
  const h = createHash('sha256');
  const fd = openSync(file, 'r');
  try {
    const n = Math.min(st.size, 1 << 20);
    const buf = Buffer.alloc(n);
    readSync(fd, buf, 0, n, 0);
    h.update(buf);
    if (st.size > n) {
      readSync(fd, buf, 0, n, st.size - n);
      h.update(buf);
    }
  } finally {
    closeSync(fd);
  }
  return `${st.size}:${h.digest('hex').slice(0, 16)}`;
}

const viewRows = (v: RowView) => v.rows ?? Array.from({ length: v.source.count }, (_, i) => i);
const viewCount = (v: RowView) => (v.rows ? v.rows.length : v.source.count);

/** The rows of a view, in its order. */
export function readView(v: RowView): Promise<Row[]> {
  return v.source.read(viewRows(v));
}

function describeCell(c: Cell | undefined): string {
  if (c === undefined) return 'missing';
  if (c === null) return 'null';
  if (typeof c === 'string') return JSON.stringify(c.length > 40 ? c.slice(0, 40) + '…' : c);
  if (typeof c === 'number' || typeof c === 'boolean') return String(c);
  return `a list of ${c.length}`;
}

/** A cell as numbers (a scalar or a vector), or a reason it is not one. */
function numbers(c: Cell | undefined): number[] | string {
  if (typeof c === 'number') return Number.isFinite(c) ? [c] : `${c} is not finite`;
  if (typeof c === 'string') {
    const t = c.trim();
    const n = Number(t);
    if (t === '' || !Number.isFinite(n)) return `${describeCell(c)} is not a number`;
    return [n];
  }
  if (typeof c === 'boolean') return [c ? 1 : 0];
  if (c instanceof Float32Array || c instanceof Float64Array) {
    for (let i = 0; i < c.length; i++) if (!Number.isFinite(c[i])) return `element ${i} is ${c[i]}`;
    return Array.from(c);
  }
  if (Array.isArray(c)) {
    const out: number[] = [];
    for (let i = 0; i < c.length; i++) {
      const v = c[i];
      if (typeof v !== 'number' || !Number.isFinite(v)) return `element ${i} is ${describeCell(v as Cell)}, not a finite number`;
      out.push(v);
    }
    return out;
  }
  return `${describeCell(c)} is not a number`;
}

const isIntegerLabel = (c: Cell | undefined) =>
  (typeof c === 'number' && Number.isInteger(c)) || (typeof c === 'string' && /^\s*-?\d+\s*$/.test(c));

function labelKey(c: Cell | undefined): string | undefined {
  if (typeof c === 'string') return c;
  if (typeof c === 'number' || typeof c === 'boolean') return String(c);
  return undefined;
}

interface Fields {
  readonly text?: string;
  readonly label?: string;
  readonly targets?: readonly string[];
  readonly features?: readonly string[];
}

function checkColumns(view: RowView, f: Fields, flags: { text: boolean; label: boolean; features: boolean }): void {
  const cols = view.source.columns;
  const want = (field: string | undefined, flag: string) => {
    if (field === undefined || cols.includes(field)) return;
    throw new LorafaError(
      view.source.file,
      `has no column "${field}"; its columns are ${cols.length ? cols.map((c) => `"${c}"`).join(', ') : '(none)'}`,
      `name the right one with ${flag} <column>`,
    );
  };
  if (flags.text) want(f.text, '--text-field');
  if (flags.label) for (const t of f.label !== undefined ? [f.label] : f.targets ?? []) want(t, '--label-field');
  if (flags.features) for (const c of f.features ?? []) want(c, '--feature-fields');
}

export async function openDataset(o: OpenDatasetOptions): Promise<Dataset> {
  const shape = inferTask(o.inputs);
  const textField = o.textField ?? 'text';
  const labelFields = o.labelField === undefined ? undefined : typeof o.labelField === 'string' ? o.labelField.split(',').map((s) => s.trim()).filter(Boolean) : [...o.labelField];
  const views = [o.train, ...(o.eval ? [o.eval] : [])];
  for (const v of views) {
    if (viewCount(v) === 0) {
      throw new LorafaError(v.source.file, `holds no rows${v.label ? ` (${v.label})` : ''}`, 'give a file with at least one row of data');
    }
  }
  const trainName = o.name ?? o.train.source.file;
  const fingerprintOf = (v: RowView) => {
    const f = v.source.file;
    let fp: string;
    try {
      fp = statSync(f).isFile() ? fileFingerprint(f) : f;
    } catch {
      fp = f;
    }
    return `${f}|${fp}|${v.rows ? createHash('sha256').update(v.rows.join(',')).digest('hex').slice(0, 12) : 'all'}`;
  };
  const fingerprintBase = [o.name ?? '', ...views.map(fingerprintOf), shape.kind];

  if (shape.kind === 'lm') return openLanguageModel(o, shape, textField, views, trainName, fingerprintBase);

  // Classification and regression: rows are read per batch; the scan checks them all first.
  const label = shape.kind === 'regression' ? undefined : (labelFields ?? ['label']);
  if (label && label.length !== 1) throw new LorafaError('--label-field', `a classifier takes one label column, got ${label.length}: ${label.join(', ')}`, 'name one column');
  const labelField = label?.[0];
  const targets = shape.kind === 'regression' ? (labelFields ?? ['target']) : undefined;
  const features =
    shape.kind === 'classify-text'
      ? undefined
      : (o.featureFields ?? o.train.source.columns.filter((c) => c !== labelField && !(targets ?? []).includes(c) && c !== textField));
  const fields: Fields = { text: shape.kind === 'classify-text' ? textField : undefined, label: labelField, targets, features };
  if (features && features.length === 0) {
    throw new LorafaError(o.train.source.file, `has no feature columns besides the label "${labelField}"`, 'name the feature columns with --feature-fields a,b,c');
  }
  for (const v of views) checkColumns(v, fields, { text: shape.kind === 'classify-text', label: true, features: !!features });
  const tok = shape.kind === 'classify-text' ? o.tokenizer : undefined;
  if (shape.kind === 'classify-text' && !tok) throw new LorafaError(trainName, 'text needs a tokenizer', 'pass --tokenizer FILE (or a --base folder with tokenizer.json)');
  // Padding: the tokenizer's side and id; lorafa's character tokenizer pads with 0, on the right
  // when the model reads an attention_mask (it then ignores padding), else on the left (the last
  // position is then always the text's last character).
  const hasMask = shape.kind === 'classify-text' && !!shape.mask;
  const side = tok?.paddingSide ?? (hasMask ? 'right' : 'left');
  const padId = tok?.padId ?? 0;
  if (tok && hasMask && tok.padId === undefined && 'paddingSide' in tok) {
    throw new LorafaError(trainName, 'the tokenizer has no padding token, and batches of texts need one', 'set "pad_token" in tokenizer_config.json (the EOS token is the usual choice for GPT-2 and LLaMA classifiers)');
  }
  if (tok) checkVocab(tok, o, trainName);

  // The scan: validate every row, count truncations, and find the classes: integer labels are
  // class indices; if any training label is not an integer, every label is a class name.
  const truncated = [0, 0];
  const width = shape.kind === 'classify-text' ? 0 : shape.width;
  const nClasses = o.classes;
  let classNames: string[] | undefined;
  const classId = (c: Cell | undefined, at: () => string): number => {
    if (c === undefined || c === null || c === '') throw new LorafaError(at(), `label "${labelField}" is ${describeCell(c)}`, 'give every row a label, or name the label column with --label-field');
    if (classNames) {
      const id = classNames.indexOf(labelKey(c) ?? '\u0000');
      if (id < 0) throw new LorafaError(at(), `label ${describeCell(c)} is not one of the training data's classes (${listSome(classNames)})`, 'evaluation labels must appear in the training data');
      return id;
    }
    if (!isIntegerLabel(c)) throw new LorafaError(at(), `label ${describeCell(c)} is not a class index, and the training labels are class indices`, 'use the same kind of label (indices or names) in every file');
    const id = typeof c === 'number' ? c : Number(String(c).trim());
    if (nClasses !== undefined && !(id >= 0 && id < nClasses)) {
      throw new LorafaError(at(), `label ${id} is outside the model's classes 0…${nClasses - 1}`, `labels are class indices 0…${nClasses - 1}; use class names (strings), or give the model more classes`);
    }
    return id;
  };
  for (const [vi, v] of views.entries()) {
    const wanted = v.rows ? new Set(v.rows) : undefined;
    const names = new Set<string>();
    let allIntegers = true;
    await v.source.scan((rows, first) => {
      rows.forEach((row, k) => {
        const i = first + k;
        if (wanted && !wanted.has(i)) return;
        const at = () => v.source.where(i);
        if (shape.kind === 'classify-text') {
          const text = row[textField];
          if (typeof text !== 'string') throw missingField(at(), textField, row, '--text-field');
          if (truncate(tok!, text, shape.seq).truncated) truncated[vi]++;
        } else {
          featureVector(row, features!, width, at);
        }
        if (labelField !== undefined) {
          const c = row[labelField];
          if (c === undefined) throw missingField(at(), labelField, row, '--label-field');
          if (vi === 0) {
            const key = labelKey(c);
            if (key === undefined || c === null || c === '') classId(c, at);
            names.add(key!);
            if (!isIntegerLabel(c)) allIntegers = false;
          } else classId(c, at);
        }
        if (targets) targetVector(row, targets, shape.kind === 'regression' ? shape.targetWidth : 0, at);
      });
    });
    if (vi === 0 && labelField !== undefined) {
      if (!allIntegers) {
        classNames = [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        if (nClasses !== undefined && classNames.length > nClasses) {
          throw new LorafaError(
            `${o.train.source.file}, column "${labelField}"`,
            `holds ${classNames.length} classes (${listSome(classNames)}), the model has ${nClasses}`,
            `give the model ${classNames.length} classes (the classes field of its config), or merge labels in the data`,
          );
        }
      } else if (nClasses !== undefined) {
        // Range-check the training labels (the evaluation rows are checked as they are scanned).
        await v.source.scan((rows, first) => rows.forEach((row, k) => (!wanted || wanted.has(first + k)) && classId(row[labelField], () => v.source.where(first + k))));
      }
    }
  }
  if (o.expectClasses && JSON.stringify(o.expectClasses) !== JSON.stringify(classNames ?? [])) {
    throw new LorafaError(
      trainName,
      `its labels give the classes ${classNames ? classNames.join(', ') : '(class indices)'}, the checkpoint was trained with ${o.expectClasses.length ? o.expectClasses.join(', ') : 'class indices'}`,
      'resume with the data the run was started with',
    );
  }

  const feedsOf = (rows: readonly Row[], at: (k: number) => () => string): { feeds: Feeds; labels?: Int32Array } => {
    const n = rows.length;
    const feeds: Feeds = {};
    let labels: Int32Array | undefined;
    if (shape.kind === 'classify-text') {
      const ids = new Int32Array(n * shape.seq);
      const mask = shape.mask ? new Float32Array(n * shape.seq) : undefined;
      rows.forEach((r, k) => {
        const t = truncate(tok!, r[textField] as string, shape.seq).ids;
        const at = side === 'left' ? shape.seq - t.length : 0;
        ids.fill(padId, k * shape.seq, (k + 1) * shape.seq);
        ids.set(t, k * shape.seq + at);
        mask?.fill(1, k * shape.seq + at, k * shape.seq + at + t.length);
      });
      feeds[shape.ids.name] = ids;
      if (mask) feeds[shape.mask!.name] = mask;
    } else {
      const x = new Float32Array(n * width);
      rows.forEach((r, k) => x.set(featureVector(r, features!, width, at(k)), k * width));
      feeds[shape.x.name] = x;
    }
    if (labelField !== undefined && shape.kind !== 'regression') {
      labels = Int32Array.from(rows, (r, k) => classId(r[labelField], at(k)));
      feeds[shape.labels.name] = labels;
    }
    if (shape.kind === 'regression') {
      const y = new Float32Array(n * shape.targetWidth);
      rows.forEach((r, k) => y.set(targetVector(r, targets!, shape.targetWidth, at(k)), k * shape.targetWidth));
      feeds[shape.target.name] = y;
    }
    return { feeds, labels };
  };

  const trainRows = viewRows(o.train);
  const evalRows = o.eval ? viewRows(o.eval) : [];
  const streams = new Map<number, ClassificationStream>();
  const read = async (v: RowView, idx: readonly number[]) => {
    const src = idx.map((k) => (v.rows ? v.rows[k] : k));
    const rows = await v.source.read(src);
    return feedsOf(rows, (k) => () => v.source.where(src[k]));
  };
  const notes: string[] = [];
  if (truncated[0] || truncated[1]) {
    notes.push(
      `${truncated[0]} of ${trainRows.length} training texts${o.eval ? ` and ${truncated[1]} of ${evalRows.length} evaluation texts` : ''} are longer than the model's ${(shape as { seq: number }).seq} tokens: truncated to their first ${(shape as { seq: number }).seq}`,
    );
  }
  const what =
    shape.kind === 'classify-text'
      ? `text "${textField}" → ${shape.ids.name}, label "${labelField}" → ${shape.labels.name}`
      : shape.kind === 'classify-features'
        ? `${width} features (${listSome(features!, 4)}) → ${shape.x.name}, label "${labelField}" → ${shape.labels.name}`
        : `${width} features (${listSome(features!, 4)}) → ${shape.x.name}, ${listSome(targets!, 4)} → ${shape.target.name}`;
  const classText = classNames ? `, ${classNames.length} classes: ${listSome(classNames, 6)}` : '';
  const evalText = o.eval ? ` / ${evalRows.length} ${o.eval.label ?? 'evaluation rows'}${o.eval.source !== o.train.source ? ` (${o.eval.source.file})` : ''}` : ', no evaluation data';
  return {
    kind: shape.kind === 'regression' ? 'regression' : 'classify',
    description: `${trainName}: ${trainRows.length} ${o.train.label ?? 'training rows'}${evalText}; ${what}${classText}`,
    unit: 'samples',
    unitsPerRow: 1,
    trainCount: trainRows.length,
    evalCount: evalRows.length,
    classes: classNames,
    notes,
    fingerprint: createHash('sha256').update([...fingerprintBase, textField, labelField ?? '', (features ?? []).join(','), (targets ?? []).join(',')].join('\n')).digest('hex').slice(0, 32),
    async batch(t, rows) {
      let s = streams.get(rows);
      if (!s) streams.set(rows, (s = classificationStream(trainRows.length, rows, o.seed)));
      return (await read(o.train, s.indices(t))).feeds;
    },
    async *evalBatches(batch) {
      if (!o.eval) return;
      for (const e of evalIndexBatches(evalRows.length, batch)) {
        const r = await read(o.eval, e.indices);
        yield { feeds: r.feeds, labels: r.labels, valid: e.valid };
      }
    },
    close() {
      for (const v of views) v.source.close();
    },
  };
}

/** The tokenizer's ids must fit the model's embedding table. */
function checkVocab(tok: TextTokenizer, o: OpenDatasetOptions, where: string): void {
  if (o.vocab !== undefined && tok.vocabSize > o.vocab) {
    throw new LorafaError(where, `the tokenizer has ${tok.vocabSize} symbols, the model's embedding has ${o.vocab} rows (config vocab)`, `use a model config with vocab ≥ ${tok.vocabSize}, or a tokenizer with at most ${o.vocab} symbols`);
  }
}

function missingField(where: string, field: string, row: Row, flag: string): LorafaError {
  const has = Object.keys(row);
  const c = row[field];
  return new LorafaError(
    where,
    c === undefined ? `row has no field "${field}" (its fields: ${has.join(', ') || 'none'})` : `field "${field}" is ${describeCell(c)}, expected ${flag === '--text-field' ? 'a string' : 'a value'}`,
    c === undefined ? `add "${field}" to every row, or name another field with ${flag}` : `fix that row, or name another field with ${flag}`,
  );
}

function featureVector(row: Row, fields: readonly string[], width: number, at: () => string): Float64Array {
  const out = new Float64Array(width);
  let n = 0;
  for (const f of fields) {
    const c = row[f];
    if (c === undefined) throw missingField(at(), f, row, '--feature-fields');
    const v = numbers(c);
    if (typeof v === 'string') throw new LorafaError(at(), `feature "${f}": ${v}`, 'features must be finite numbers; fix the row, or choose the feature columns with --feature-fields');
    if (n + v.length <= width) out.set(v, n);
    n += v.length;
  }
  if (n !== width) {
    throw new LorafaError(
      at(),
      `row has ${n} feature values (${listSome([...fields], 6)}), the model's input takes ${width}`,
      'choose the columns with --feature-fields so that their values add up to the model input width, or change the model',
    );
  }
  return out;
}

function targetVector(row: Row, fields: readonly string[], width: number, at: () => string): Float64Array {
  const out = new Float64Array(width);
  let n = 0;
  for (const f of fields) {
    const c = row[f];
    if (c === undefined) throw missingField(at(), f, row, '--label-field');
    const v = numbers(c);
    if (typeof v === 'string') throw new LorafaError(at(), `target "${f}": ${v}`, 'regression targets must be finite numbers');
    if (n + v.length <= width) out.set(v, n);
    n += v.length;
  }
  if (n !== width) throw new LorafaError(at(), `row has ${n} target values, the model's target takes ${width}`, 'name the target columns with --label-field a,b,…');
  return out;
}

function listSome(items: readonly string[], n = 8): string {
  return items.slice(0, n).join(', ') + (items.length > n ? `, … (${items.length} in all)` : '');
}

async function openLanguageModel(
  o: OpenDatasetOptions,
  shape: Extract<Shape, { kind: 'lm' }>,
  textField: string,
  views: readonly RowView[],
  trainName: string,
  fingerprintBase: readonly string[],
): Promise<Dataset> {
  const tok = o.tokenizer;
  if (!tok) throw new LorafaError(trainName, 'text needs a tokenizer', 'pass --tokenizer FILE (or a --base folder with tokenizer.json)');
  checkVocab(tok, o, trainName);
  for (const v of views) checkColumns(v, { text: textField }, { text: true, label: false, features: false });
  const newline = tok.separator ? tok.separator() : tok.encode('\n');
  const stores: TokenStore[] = [];
  for (const v of views) {
    const w = new TokenWriter();
    const wanted = v.rows ? new Set(v.rows) : undefined;
    // Rows in view order: a subset is visited in the order it lists (the presets' splits are ascending).
    let firstRow = true;
    const add = (row: Row, i: number) => {
      const text = row[textField];
      if (typeof text !== 'string') throw missingField(v.source.where(i), textField, row, '--text-field');
      if (!firstRow) w.append(newline);
      firstRow = false;
      w.append(tok.encode(text));
    };
    if (v.rows && !isAscending(v.rows)) {
      for (let k = 0; k < v.rows.length; k += 1024) {
        const idx = v.rows.slice(k, k + 1024);
        (await v.source.read(idx)).forEach((row, j) => add(row, idx[j]));
      }
    } else {
      await v.source.scan((rows, first) => rows.forEach((row, k) => (!wanted || wanted.has(first + k)) && add(row, first + k)));
    }
    stores.push(w.finish());
  }
  const [train, evalTokens] = stores;
  const seq = shape.seq;
  if (train.length < seq + 1) {
    throw new LorafaError(trainName, `holds ${train.length} tokens, too few for one window of seq + 1 = ${seq + 1}`, 'give more text, or a model with a shorter seq');
  }
  const windows = evalTokens ? Math.floor((evalTokens.length - 1) / seq) : 0;
  const streams = new Map<number, ReturnType<typeof languageModelStream>>();
  const evalText = evalTokens ? ` / ${evalTokens.length} evaluation tokens from ${viewCount(o.eval!)} ${o.eval!.label ?? 'evaluation rows'} (${windows} windows of ${seq})` : ', no evaluation data';
  return {
    kind: 'lm',
    description: `${trainName}: ${train.length} training tokens from ${viewCount(o.train)} ${o.train.label ?? 'training rows'}${evalText}; text "${textField}" → ${shape.ids.name}, next tokens → ${shape.labels.name}; ${tok.vocabSize}-symbol vocabulary`,
    unit: 'tokens',
    unitsPerRow: seq,
    trainCount: train.length,
    evalCount: windows * seq,
    notes: train.onDisk ? [`the training corpus (${train.length} tokens) is kept on disk, not in memory`] : [],
    fingerprint: createHash('sha256').update([...fingerprintBase, textField, String(tok.vocabSize)].join('\n')).digest('hex').slice(0, 32),
    async batch(t, rows) {
      let s = streams.get(rows);
      if (!s) streams.set(rows, (s = languageModelStream(train, rows, seq, o.seed)));
      const b = s.batch(t);
      return { [shape.ids.name]: b.input_ids, [shape.labels.name]: b.labels, ...(shape.mask ? { [shape.mask.name]: new Float32Array(b.input_ids.length).fill(1) } : {}) };
    },
    async *evalBatches(batch) {
      if (!evalTokens) return;
      // Consecutive non-overlapping windows of the evaluation tokens; a partial last batch is dropped.
      for (let w = 0; w + batch <= windows; w += batch) {
        const ids = new Int32Array(batch * seq);
        const labels = new Int32Array(batch * seq);
        for (let r = 0; r < batch; r++) {
          const s = (w + r) * seq;
          const win = evalTokens.subarray(s, s + seq + 1);
          ids.set(win.subarray(0, seq), r * seq);
          labels.set(win.subarray(1, seq + 1), r * seq);
        }
        yield { feeds: { [shape.ids.name]: ids, [shape.labels.name]: labels, ...(shape.mask ? { [shape.mask.name]: new Float32Array(ids.length).fill(1) } : {}) }, valid: batch * seq };
      }
    },
    close() {
      for (const s of stores) s.close();
      for (const v of views) v.source.close();
    },
  };
}

function isAscending(xs: readonly number[]): boolean {
  for (let i = 1; i < xs.length; i++) if (xs[i] <= xs[i - 1]) return false;
  return true;
}
