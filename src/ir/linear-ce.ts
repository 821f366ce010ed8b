// Linear + cross-entropy as one op, float64 side: the shape rule, the reference, the VJP and the
// test cases of `linear_cross_entropy`. The op record lives in ops.ts; the kernel in
// src/codegen/linear-ce.ts; the pass that uses it in src/passes/linear-ce.ts.
//
// linear_cross_entropy(h [N, d], w, labels i32[N]) = cross_entropy(h·w, labels), w [d, V] (or
// [V, d] with transB, a head tied to an embedding table): the same packed rows (loss, L, weight)
// per token, an ignored label (−100, or any label outside [0, V)) giving (0, L, 0).
//
// Why: an LM head's logits are [tokens, vocab], the largest activation of a fine-tuning step
// (500 MiB in bf16 for Llama-2-7B at 8 × 1024). cross_entropy keeps them for its backward. Here
// the forward kernel streams vocab tiles through an online log-sum-exp and never writes a logit,
// so nothing [tokens, vocab] is saved, only h (which the norm before it keeps anyway) and the
// packed rows. The VJP recomputes the logits `chunk` rows at a time from h:
//   for each chunk c of rows:  z_c = h_c·w,  g_c = cross_entropy_grad(z_c, …),  dh_c = g_c·wᵀ
// and concatenates the dh_c, so at most one chunk's [chunk, V] logits and their gradient are live
// at once (the memory plan schedules the chunks one after another). dw (only when w trains, which
// the pass never fuses) is Σ_c h_cᵀ·g_c.
import type { Builder } from './builder.ts';
import { ShapeProblem } from './errors.ts';
import type { Tensor } from './shape.ts';
import type { TensorType, Value } from './types.ts';

export type LinearCeAttrs = {
  /** w is stored [V, d] (logits = h·wᵀ), as a head tied to the embedding table is. */
  readonly transB: boolean;
  /** Rows per backward chunk: the VJP's logits are recomputed [chunk, V] at a time. */
  readonly chunk: number;
};

/** The backward's [chunk, V] f32 logits stay within this many bytes (32 MiB): LINEAR_CE_CHUNK_BYTES. */
export const LINEAR_CE_CHUNK_BYTES = 32 * 1024 * 1024;

/** Rows per chunk for `rows` tokens over a vocabulary of `vocab`: equal chunks of at most LINEAR_CE_CHUNK_BYTES. */
export function linearCeChunk(rows: number, vocab: number, chunkBytes = LINEAR_CE_CHUNK_BYTES): number {
  const chunks = Math.max(1, Math.ceil((rows * vocab * 4) / chunkBytes));
  return Math.max(1, Math.ceil(rows / chunks));
}

const fmt = (t: TensorType) => `[${t.shape.join(',')}]`;

export function linearCeDims(ins: readonly TensorType[], a: LinearCeAttrs): { readonly n: number; readonly d: number; readonly v: number } {
  const [h, w, t] = ins;
  if (h.dtype === 'i32' || w.dtype === 'i32') throw new ShapeProblem('h and the weight must be float tensors');
  if (t.dtype !== 'i32') throw new ShapeProblem(`labels must be i32, got ${t.dtype}`, 'declare the labels input with dtype i32');
  if (h.shape.length !== 2 || w.shape.length !== 2 || t.shape.length !== 1) {
    throw new ShapeProblem(`linear_cross_entropy takes h [N, d], a weight of rank 2 and labels [N], got h ${fmt(h)}, weight ${fmt(w)}, labels ${fmt(t)}`);
  }
  const [n, d] = h.shape;
  const [wd, v] = a.transB ? [w.shape[1], w.shape[0]] : w.shape;
  if (wd !== d) throw new ShapeProblem(`h ${fmt(h)} has ${d} features but the weight ${fmt(w)}${a.transB ? ' (stored [V, d])' : ''} takes ${wd}`);
  if (t.shape[0] !== n) throw new ShapeProblem(`labels ${fmt(t)} must have one label per row of h ${fmt(h)}`);
  if (!Number.isInteger(a.chunk) || a.chunk < 1) throw new ShapeProblem(`chunk must be a positive integer, got ${a.chunk}`);
  return { n, d, v };
}

export function linearCeInfer(ins: readonly TensorType[], a: LinearCeAttrs): TensorType {
  return { dtype: 'f32', shape: [linearCeDims(ins, a).n, 3] };
}

/** The logits h·w in float64, then cross_entropy's rows; `crossEntropyRef` is that op's reference. */
export function linearCeRef(
  [h, w, t]: readonly Tensor[],
  a: LinearCeAttrs,
  crossEntropyRef: (logits: Tensor, labels: Tensor) => Float64Array,
): Float64Array {
  const { n, d, v } = linearCeDims([h, w, t].map((x) => ({ dtype: x === t ? 'i32' : 'f32', shape: x.shape }) as TensorType), a);
  const z = new Float64Array(n * v);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < v; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += h.data[i * d + k] * (a.transB ? w.data[j * d + k] : w.data[k * v + j]);
      z[i * v + j] = s;
    }
  }
  return crossEntropyRef({ shape: [n, v], data: z }, t);
}

/** The VJP: logits recomputed chunk by chunk (see the top of this file). */
export function linearCeVjp(b: Builder, [h, w, t]: readonly Value[], out: Value, ct: Value, a: LinearCeAttrs, wants: readonly boolean[]): (Value | null)[] {
  if (!wants[0] && !wants[1]) return [null, null, null];
  const n = h.type.shape[0];
  const dhs: Value[] = [];
  let dw: Value | null = null;
  for (let r0 = 0; r0 < n; r0 += a.chunk) {
    const r1 = Math.min(n, r0 + a.chunk);
    const rows = (x: Value) => (r0 === 0 && r1 === n ? x : b.sliceAxis(x, 0, r0, r1));
    const hc = rows(h);
    const z = b.matmul(hc, w, { transB: a.transB });
    const g = b.emit('cross_entropy_grad', [z, rows(t), rows(out), rows(ct)], {});
    // dh = g·wᵀ ([N,V]·[V,d]); with w stored [V, d] that is g·w.
    if (wants[0]) dhs.push(b.matmul(g, w, { transB: !a.transB }));
    if (wants[1]) {
      const part = a.transB ? b.matmul(g, hc, { transA: true }) : b.matmul(hc, g, { transA: true });
      dw = dw ? b.add(dw, part) : part;
    }
  }
  const dh = wants[0] ? (dhs.length === 1 ? dhs[0] : b.concat(dhs, 0)) : null;
  return [dh, dw, null];
}
