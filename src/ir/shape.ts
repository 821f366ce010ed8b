// Shape arithmetic shared by the shape rules, the reference interpreter and the passes.
import { ShapeProblem } from './errors.ts';
import { numel } from './types.ts';

/** A float64 tensor of the reference interpreter (integer tensors hold whole numbers). */
export interface Tensor {
  readonly shape: readonly number[];
  readonly data: Float64Array;
}

export function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** NumPy broadcasting of two shapes, right-aligned. */
export function broadcastShapes(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new ShapeProblem(
        `shapes [${a.join(',')}] and [${b.join(',')}] do not broadcast (dim ${i - n}: ${da} vs ${db})`,
        'make the dims equal, or 1 on one side, e.g. with reshape',
      );
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** True when `from` broadcasts to exactly `to`. */
export function broadcastsTo(from: readonly number[], to: readonly number[]): boolean {
  if (from.length > to.length) return false;
  const off = to.length - from.length;
  return from.every((d, i) => d === 1 || d === to[off + i]);
}

/** For each flat index of `out`, the flat index of the element of `inShape` it reads. */
export function broadcastIndex(inShape: readonly number[], out: readonly number[]): Int32Array {
  const n = numel(out);
  const map = new Int32Array(n);
  const off = out.length - inShape.length;
  const inStr = strides(inShape);
  const idx = new Array<number>(out.length).fill(0);
  for (let flat = 0; flat < n; flat++) {
    let src = 0;
    for (let d = 0; d < inShape.length; d++) if (inShape[d] !== 1) src += idx[off + d] * inStr[d];
    map[flat] = src;
    for (let d = out.length - 1; d >= 0; d--) {
      if (++idx[d] < out[d]) break;
      idx[d] = 0;
    }
  }
  return map;
}

/** Normalises possibly negative axes against a rank; sorted, unique. */
export function normAxes(axes: readonly number[], rank: number): number[] {
  const seen = new Set<number>();
  for (const a of axes) {
    const n = a < 0 ? a + rank : a;
    if (!Number.isInteger(n) || n < 0 || n >= rank) {
      throw new ShapeProblem(`axis ${a} is out of range for rank ${rank}`, `use an axis in [${-rank}, ${rank - 1}]`);
    }
    seen.add(n);
  }
  return [...seen].sort((x, y) => x - y);
}

export function reducedShape(shape: readonly number[], axes: readonly number[], keepdims: boolean): number[] {
  const set = new Set(axes);
  const out: number[] = [];
  shape.forEach((d, i) => {
    if (!set.has(i)) out.push(d);
    else if (keepdims) out.push(1);
  });
  return out;
}

/** Iterates every multi-index of `shape` in row-major order. */
export function forEachIndex(shape: readonly number[], fn: (idx: readonly number[], flat: number) => void): void {
  const n = numel(shape);
  const idx = new Array<number>(shape.length).fill(0);
  for (let flat = 0; flat < n; flat++) {
    fn(idx, flat);
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

export function invertPerm(perm: readonly number[]): number[] {
  const inv = new Array<number>(perm.length);
  perm.forEach((p, i) => (inv[p] = i));
  return inv;
}
