// Fused attention, float64 side: the shape rule and the references of `attention` and of the
// three ops its VJP emits (`attention_delta`, `attention_dq`, `attention_dkv`), and their test
// cases. The op records live in ops.ts; this file holds their arithmetic.
//
// Semantics (the composition b.attentionComposed computes the same to rounding wherever a query
// row has at least one real key it may attend to):
//   score s_ij = scale·q_i·k_j over the keys j the row may see: all of them, or j ≤ i when causal;
//   a padding key (mask 0) gets the constant score −1e9, exactly as where(mask, s, −1e9) does, so
//   a row whose every allowed key is padding averages their values uniformly, like the composition;
//   a key after the query (j > i, causal) is excluded entirely: it is no score at all, not −1e9
//   (the composition gives it −1e9 too, which matters only in a row of padding: there the
//   composition averages every key, the fused op only the keys j ≤ i);
//   output, packed along the last axis: O_i = Σ_j P_ij·v_j in [0, dv), then L_i = log Σ_j exp(s_ij)
//   as two columns whose sum is L: [dv] holds L rounded to the output's storage precision and
//   [dv + 1] the rest (0 in float64 and in f32). Backward needs L to within a few f32 ulps, and a
//   half-precision output (--dtype f16|bf16) keeps it that way: hi + lo carries 16–22 bits of
//   mantissa where a lone bf16 L would be off by up to 2⁻⁴ at |L| ≈ 16. Only [dv] is the function
//   L of the inputs; [dv + 1] is a representation detail, and its cotangent is ignored.
// Grouped-query attention: query head hq reads key/value head ⌊hq / (h/hkv)⌋ (Hugging Face's
// repeat_kv order), so k and v are never repeated in memory.
//
// Backward, from q, k, v, mask, the packed output and its cotangent ct only:
//   P_ij = exp(s_ij − L_i), D_i = Σ_c dO_ic·O_ic − ctL_i, dP_ij = dO_i·v_j,
//   dS_ij = P_ij·(dP_ij − D_i) (0 where s_ij was the constant −1e9),
//   dq_i = scale·Σ_j dS_ij·k_j, dk_j = scale·Σ_i dS_ij·q_i, dv_j = Σ_i P_ij·dO_i,
// where dk and dv sum over every query head of the key's group. A row of padding has
// L = −1e9 + log n, which f32 cannot tell from −1e9 (its ulp there is 64), so such a row
// (L < ALL_PADDING_L) takes its probabilities as 1/n, n its number of allowed keys, here and in
// the kernels alike.
import { ShapeProblem } from './errors.ts';
import type { Tensor } from './shape.ts';
import type { TensorType } from './types.ts';

export type AttentionAttrs = {
  /** Query i sees keys j ≤ i only (needs as many queries as keys). */
  readonly causal: boolean;
  /** The scores' factor, usually 1/√dk. */
  readonly scale: number;
  /** A key mask f32[b, sk] follows q, k, v: 1 for a real key, 0 for padding. */
  readonly masked: boolean;
};

/** The score a padding key gets: the composition's where(mask, s, −1e9). */
export const PADDING_SCORE = -1e9;
/** A row whose log-sum-exp is below this saw only padding keys (L = −1e9 + log n). */
export const ALL_PADDING_L = -5e8;
/** Columns after O in the packed output: L's high and low parts. */
export const L_COLUMNS = 2;

export interface AttentionDims {
  readonly b: number;
  readonly h: number;
  readonly hkv: number;
  /** Query heads per key/value head. */
  readonly group: number;
  readonly sq: number;
  readonly sk: number;
  readonly dk: number;
  readonly dv: number;
}

const fmt = (t: TensorType) => `[${t.shape.join(',')}]`;

/**
 * Checks q, k, v (and the mask) of an attention op or one of its backward ops, whose `extra`
 * further inputs follow (packed output, its cotangent, delta: checked here too when present).
 */
export function attentionDims(ins: readonly TensorType[], a: AttentionAttrs, extra: 0 | 2 | 3): AttentionDims {
  const want = 3 + (a.masked ? 1 : 0) + extra;
  if (ins.length !== want) {
    throw new ShapeProblem(`takes ${want} inputs (q, k, v${a.masked ? ', mask' : ''}${extra ? ', packed output, its cotangent' : ''}${extra === 3 ? ', delta' : ''}), got ${ins.length}`);
  }
  for (const t of ins) if (t.dtype !== 'f32') throw new ShapeProblem(`every input must be f32, got ${t.dtype}`);
  const [q, k, v] = ins;
  if (q.shape.length !== 4 || k.shape.length !== 4 || v.shape.length !== 4) {
    throw new ShapeProblem(`q, k and v must be [batch, heads, seq, head_dim], got ${fmt(q)}, ${fmt(k)}, ${fmt(v)}`);
  }
  const [b, h, sq, dk] = q.shape;
  const [bk, hkv, sk, dkk] = k.shape;
  if (bk !== b || v.shape[0] !== b) throw new ShapeProblem(`batch sizes differ: q ${fmt(q)}, k ${fmt(k)}, v ${fmt(v)}`);
  if (v.shape[1] !== hkv || v.shape[2] !== sk) throw new ShapeProblem(`k ${fmt(k)} and v ${fmt(v)} must have the same heads and length`);
  if (dkk !== dk) throw new ShapeProblem(`q ${fmt(q)} and k ${fmt(k)} must have the same head dim`);
  if (h % hkv !== 0) throw new ShapeProblem(`${h} query heads cannot share ${hkv} key/value heads evenly`, 'use a key/value head count that divides the query heads');
  if (a.causal && sq !== sk) throw new ShapeProblem(`causal attention needs as many queries as keys, got ${sq} and ${sk}`);
  if (!(Number.isFinite(a.scale) && a.scale > 0)) throw new ShapeProblem(`scale must be a positive number, got ${a.scale}`);
  const dv = v.shape[3];
  const dims = { b, h, hkv, group: h / hkv, sq, sk, dk, dv };
  if (a.masked) {
    const m = ins[3];
    if (m.shape.length !== 2 || m.shape[0] !== b || m.shape[1] !== sk) throw new ShapeProblem(`the key mask must be [${b},${sk}], got ${fmt(m)}`);
  }
  if (extra) {
    const at = 3 + (a.masked ? 1 : 0);
    const packed = [b, h, sq, dv + L_COLUMNS];
    for (const [t, what] of [[ins[at], 'the packed output'], [ins[at + 1], 'its cotangent']] as const) {
      if (t.shape.join() !== packed.join()) throw new ShapeProblem(`${what} must be [${packed.join(',')}], got ${fmt(t)}`);
    }
    if (extra === 3 && ins[at + 2].shape.join() !== [b, h, sq].join()) throw new ShapeProblem(`delta must be [${b},${h},${sq}], got ${fmt(ins[at + 2])}`);
  }
  return dims;
}

/** Shared float64 machinery: scores, allowed keys and padding over q, k, v, mask tensors. */
function scorer(ins: readonly Tensor[], a: AttentionAttrs, d: AttentionDims) {
  const [q, k, v] = ins;
  const mask = a.masked ? ins[3] : undefined;
  return {
    /** Flat row index of (batch, query head, i) in q / packed / delta. */
    row: (bi: number, hq: number, i: number) => (bi * d.h + hq) * d.sq + i,
    /** Flat row index of (batch, kv head, j) in k / v. */
    krow: (bi: number, hk: number, j: number) => (bi * d.hkv + hk) * d.sk + j,
    allowed: (i: number, j: number) => !a.causal || j <= i,
    padded: (bi: number, j: number) => mask !== undefined && mask.data[bi * d.sk + j] === 0,
    /** Number of keys query i may see. */
    count: (i: number) => (a.causal ? i + 1 : d.sk),
    score(r: number, kr: number, bi: number, j: number): number {
      if (mask !== undefined && mask.data[bi * d.sk + j] === 0) return PADDING_SCORE;
      let s = 0;
      for (let c = 0; c < d.dk; c++) s += q.data[r * d.dk + c] * k.data[kr * d.dk + c];
      return a.scale * s;
    },
    v,
  };
}

/** Visits every (batch, query head, kv head, query) row. */
function forEachRow(d: AttentionDims, fn: (bi: number, hq: number, hk: number, i: number) => void): void {
  for (let bi = 0; bi < d.b; bi++) {
    for (let hq = 0; hq < d.h; hq++) for (let i = 0; i < d.sq; i++) fn(bi, hq, Math.floor(hq / d.group), i);
  }
}

export function attentionRef(ins: readonly Tensor[], a: AttentionAttrs): Float64Array {
  const d = attentionDims(ins.map((t) => ({ dtype: 'f32', shape: t.shape })), a, 0);
  const sc = scorer(ins, a, d);
  const w = d.dv + L_COLUMNS;
  const out = new Float64Array(d.b * d.h * d.sq * w);
  const s = new Float64Array(d.sk);
  forEachRow(d, (bi, hq, hk, i) => {
    const r = sc.row(bi, hq, i);
    const n = sc.count(i);
    let m = -Infinity;
    for (let j = 0; j < n; j++) {
      s[j] = sc.score(r, sc.krow(bi, hk, j), bi, j);
      m = Math.max(m, s[j]);
    }
    let l = 0;
    for (let j = 0; j < n; j++) {
      const e = Math.exp(s[j] - m);
      l += e;
      const kr = sc.krow(bi, hk, j);
      for (let c = 0; c < d.dv; c++) out[r * w + c] += e * sc.v.data[kr * d.dv + c];
    }
    for (let c = 0; c < d.dv; c++) out[r * w + c] /= l;
    out[r * w + d.dv] = m + Math.log(l); // and the low part, [dv + 1], is 0
  });
  return out;
}

/** D_i = Σ_c ct_ic·O_ic − ct_i,dv over packed rows [..., dv + 2] (L's low part has no cotangent). */
export function attentionDeltaRef([packed, ct]: readonly Tensor[]): Float64Array {
  const w = packed.shape[packed.shape.length - 1];
  const dv = w - L_COLUMNS;
  const rows = packed.data.length / w;
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < dv; c++) s += ct.data[r * w + c] * packed.data[r * w + c];
    out[r] = s - ct.data[r * w + dv];
  }
  return out;
}

/**
 * dq [b,h,sq,dk] (which 'dq') or dk|dv packed [b,hkv,sk,dk+dv] (which 'dkv'), from q, k, v, mask,
 * the packed forward output, its cotangent and delta.
 */
export function attentionGradRef(ins: readonly Tensor[], a: AttentionAttrs, which: 'dq' | 'dkv'): Float64Array {
  const d = attentionDims(ins.map((t) => ({ dtype: 'f32', shape: t.shape })), a, 3);
  const sc = scorer(ins, a, d);
  const at = 3 + (a.masked ? 1 : 0);
  const [q, k] = ins;
  const [packed, ct, delta] = ins.slice(at);
  const w = d.dv + L_COLUMNS;
  const wkv = d.dk + d.dv;
  const out = new Float64Array(which === 'dq' ? d.b * d.h * d.sq * d.dk : d.b * d.hkv * d.sk * wkv);
  forEachRow(d, (bi, hq, hk, i) => {
    const r = sc.row(bi, hq, i);
    const L = packed.data[r * w + d.dv] + packed.data[r * w + d.dv + 1];
    const D = delta.data[r];
    const n = sc.count(i);
    for (let j = 0; j < n; j++) {
      const kr = sc.krow(bi, hk, j);
      const p = L < ALL_PADDING_L ? 1 / n : Math.exp(sc.score(r, kr, bi, j) - L);
      let dp = 0;
      for (let c = 0; c < d.dv; c++) dp += ct.data[r * w + c] * sc.v.data[kr * d.dv + c];
      const ds = sc.padded(bi, j) ? 0 : p * (dp - D);
      if (which === 'dq') {
        for (let c = 0; c < d.dk; c++) out[r * d.dk + c] += a.scale * ds * k.data[kr * d.dk + c];
      } else {
        for (let c = 0; c < d.dk; c++) out[kr * wkv + c] += a.scale * ds * q.data[r * d.dk + c];
        for (let c = 0; c < d.dv; c++) out[kr * wkv + d.dk + c] += p * ct.data[r * w + c];
      }
    }
  });
  return out;
}
