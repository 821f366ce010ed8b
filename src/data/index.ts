// Datasets for the examples and benchmarks: image classification (MNIST, Fashion-MNIST), text
// (Brown corpus, SpamAssassin), a char tokenizer and deterministic, resumable batch streams.
export * from './batches.ts';
export * from './images.ts';
export * from './text.ts';
export * from './tokenizer.ts';
export { idxPath, openIdxImages, openIdxLabels, type IdxImages, type IdxLabels } from './idx.ts';
export { npmPackageDir } from './paths.ts';
export * from './wordpiece.ts';
