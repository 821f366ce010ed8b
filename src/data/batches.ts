// Deterministic batch streams. A training run is resumable by step: the batch of step t is a
// pure function of (seed, t), so restarting at step t from a checkpoint sees exactly the batches
// an uninterrupted run would have seen. Randomness comes from streamFor(seed, name), the same
// keyed generator parameter init uses.
import { LorafaError } from '../ir/errors.ts';
import { streamFor } from '../runtime/init.ts';

function positiveInt(where: string, what: string, n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new LorafaError(where, `${what} must be a positive integer, got ${n}`);
}

function checkStep(where: string, t: number): void {
  if (!Number.isInteger(t) || t < 1) throw new LorafaError(where, `step ${t} is not a positive integer (steps count from 1)`);
}

/** Fisher–Yates permutation of 0…count−1 for epoch `e` (0-based), from streamFor(seed, `epoch/${e}`). */
export function epochPermutation(count: number, seed: number, e: number): Int32Array {
  const u = streamFor(seed, `epoch/${e}`);
  const p = new Int32Array(count);
  for (let i = 0; i < count; i++) p[i] = i;
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(u() * (i + 1));
    const tmp = p[i];
    p[i] = p[j];
    p[j] = tmp;
  }
  return p;
}

export interface ClassificationStream {
  readonly count: number;
  readonly batch: number;
  /** The sample indices of step t (1-based). */
  indices(t: number): number[];
  /** The 0-based epoch that step t's first sample belongs to. */
  epochOf(t: number): number;
}

/**
 * Samples in epoch-wise shuffled order: the epochs' permutations are concatenated and step t takes
 * positions (t−1)·batch … t·batch−1 of that sequence (a batch may straddle two epochs). Every
 * sample is seen exactly once per epoch.
 */
export function classificationStream(count: number, batch: number, seed: number): ClassificationStream {
  const where = 'classificationStream';
  positiveInt(where, 'count', count);
  positiveInt(where, 'batch', batch);
  const cache = new Map<number, Int32Array>(); // the last two epochs: a straddling batch needs both
  const perm = (e: number) => {
    let p = cache.get(e);
    if (!p) {
      p = epochPermutation(count, seed, e);
      if (cache.size >= 2) cache.delete(cache.keys().next().value!);
      cache.set(e, p);
    }
    return p;
  };
  return {
    count,
    batch,
    indices(t) {
      checkStep(where, t);
      const out = new Array<number>(batch);
      for (let j = 0; j < batch; j++) {
        const pos = (t - 1) * batch + j;
        out[j] = perm(Math.floor(pos / count))[pos % count];
      }
      return out;
    },
    epochOf(t) {
      checkStep(where, t);
      return Math.floor(((t - 1) * batch) / count);
    },
  };
}

export interface EvalBatch {
  /** Always `batch` indices; a short last batch is padded with index 0. */
  readonly indices: number[];
  /** How many leading rows are real samples. */
  readonly valid: number;
}

/** 0…count−1 in order, in fixed-size batches (static shapes for the compiled graph). */
export function* evalBatches(count: number, batch: number): Generator<EvalBatch> {
  positiveInt('evalBatches', 'batch', batch);
  if (!Number.isInteger(count) || count < 0) throw new LorafaError('evalBatches', `count must be a non-negative integer, got ${count}`);
  for (let start = 0; start < count; start += batch) {
    const valid = Math.min(batch, count - start);
    yield { indices: Array.from({ length: batch }, (_, j) => (j < valid ? start + j : 0)), valid };
  }
}

export interface LMBatch {
  /** [batch*seq] token ids. */
  readonly input_ids: Int32Array;
  /** [batch*seq]: the next token of each input position. */
  readonly labels: Int32Array;
}

/** A token sequence read by range: an Int32Array, or a TokenStore spilled to disk (tokens.ts). */
export interface TokenSource {
  readonly length: number;
  /** Tokens start … end−1. */
  subarray(start: number, end: number): Int32Array;
}

/**
 * Random windows of seq+1 tokens: row b of step t starts at a uniform offset in
 * [0, tokens.length − seq − 1] drawn from streamFor(seed, `lm/${t}`).
 */
export function languageModelStream(tokens: TokenSource, batch: number, seq: number, seed: number): { batch(t: number): LMBatch } {
  const where = 'languageModelStream';
  positiveInt(where, 'batch', batch);
  positiveInt(where, 'seq', seq);
  if (tokens.length < seq + 1) {
    throw new LorafaError(where, `${tokens.length} tokens are too few for windows of seq + 1 = ${seq + 1}`, 'use a longer text or a shorter seq');
  }
  const starts = tokens.length - seq; // offsets 0 … tokens.length − seq − 1
  return {
    batch(t) {
      checkStep(where, t);
      const u = streamFor(seed, `lm/${t}`);
      const input_ids = new Int32Array(batch * seq);
      const labels = new Int32Array(batch * seq);
      for (let b = 0; b < batch; b++) {
        const s = Math.floor(u() * starts);
        const w = tokens.subarray(s, s + seq + 1);
        input_ids.set(w.subarray(0, seq), b * seq);
        labels.set(w.subarray(1, seq + 1), b * seq);
      }
      return { input_ids, labels };
    },
  };
}

/** The first `seq` ids, or `ids` left-padded with `pad` up to `seq`. */
export function fixedLength(ids: Int32Array, seq: number, pad = 0): Int32Array {
  if (!Number.isInteger(seq) || seq < 0) throw new LorafaError('fixedLength', `seq must be a non-negative integer, got ${seq}`);
  if (ids.length >= seq) return ids.slice(0, seq);
  const out = new Int32Array(seq).fill(pad);
  out.set(ids, seq - ids.length);
  return out;
}
