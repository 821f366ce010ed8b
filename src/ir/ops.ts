// One definition per op: shape rule, float64 reference, VJP rule, WGSL slot and a test-case
// generator. `OPS` is typed as a mapped type over `OpAttrs`, so an op without every rule is a
// compile error, and the test tables iterate over it, so every op is gradient-checked.
import type { Builder } from './builder.ts';
import { linearCeInfer, linearCeRef, linearCeVjp, type LinearCeAttrs } from './linear-ce.ts';
import { ShapeProblem } from './errors.ts';
import {
  broadcastIndex,
  broadcastShapes,
  broadcastsTo,
  forEachIndex,
  invertPerm,
  reducedShape,
  strides,
  type Tensor,
} from './shape.ts';
import { numel, sameShape, type DType, type TensorType, type Value } from './types.ts';
import {
  attentionDeltaRef,
  attentionDims,
  attentionGradRef,
  attentionRef,
  L_COLUMNS,
  type AttentionAttrs,
} from './attention.ts';

type NoAttrs = Record<string, never>;

export interface OpAttrs {
  neg: NoAttrs;
  exp: NoAttrs;
  log: NoAttrs;
  sqrt: NoAttrs;
  rsqrt: NoAttrs;
  tanh: NoAttrs;
  sigmoid: NoAttrs;
  relu: NoAttrs;
  gelu: NoAttrs;
  /** gelu_grad(x, ct) = ct · gelu'(x): GELU's backward as one elementwise op (like PyTorch's). */
  gelu_grad: NoAttrs;
  /** GELU with the exact normal CDF: x·Φ(x) = ½x(1 + erf(x/√2)) (PyTorch's default, BERT's "gelu"). */
  gelu_erf: NoAttrs;
  /** gelu_erf_grad(x, ct) = ct · (Φ(x) + x·φ(x)): its backward as one elementwise op. */
  gelu_erf_grad: NoAttrs;
  silu: NoAttrs;
  /** silu_grad(x, ct) = ct · silu'(x), silu' = σ(x)·(1 + x·(1 − σ(x))): SiLU's backward as one elementwise op. */
  silu_grad: NoAttrs;
  /**
   * swiglu(gate, up) = silu(gate) · up: the gated MLP's product as one op (Liger-style). Its VJP
   * recomputes silu(gate) from gate, so backward keeps gate and up, not also silu(gate).
   */
  swiglu: NoAttrs;
  /** x > 0 ? 1 : 0; the derivative of relu. */
  step: NoAttrs;
  /** Identity whose cotangent is zero: softmax's max shift, which cancels out analytically. */
  stop_gradient: NoAttrs;
  /** x^p for a constant p. */
  powc: { readonly p: number };
  add: NoAttrs;
  sub: NoAttrs;
  mul: NoAttrs;
  div: NoAttrs;
  /** a == b ? 1 : 0 */
  eq: NoAttrs;
  /** cond != 0 ? a : b, all three broadcast. */
  where: NoAttrs;
  /**
   * The number of elements of x that are not finite (±Inf, NaN), as an f32 scalar: loss scaling's
   * overflow check (src/passes/loss-scale.ts). The kernel tests the bits (exponent all ones),
   * never x − x or x·0, which a compiler that assumes finite math may fold to 0.
   */
  count_nonfinite: NoAttrs;
  /** A constant tensor. */
  fill: { readonly value: number; readonly shape: readonly number[]; readonly dtype: DType };
  sum: { readonly axes: readonly number[]; readonly keepdims: boolean };
  max: { readonly axes: readonly number[]; readonly keepdims: boolean };
  reshape: { readonly shape: readonly number[] };
  transpose: { readonly perm: readonly number[] };
  broadcast: { readonly shape: readonly number[] };
  slice: { readonly starts: readonly number[]; readonly ends: readonly number[] };
  pad: { readonly before: readonly number[]; readonly after: readonly number[] };
  concat: { readonly axis: number };
  /** table[V, ...D], idx i32[...I] → [...I, ...D] */
  gather: NoAttrs;
  /** idx i32[...I], src[...I, ...D] → [rows, ...D], summing rows hit more than once. */
  scatter_add: { readonly rows: number };
  /** idx i32[...I] → f32[...I, classes] */
  one_hot: { readonly classes: number };
  /** a[..., m, k] · b[..., k, n] (transA: a is [..., k, m]; transB: b is [..., n, k]); batch dims broadcast. */
  matmul: { readonly transA: boolean; readonly transB: boolean };

  // --- losses and norms as primitives (issue 14): each saves only what its VJP reads ---
  /**
   * logits f32[..., C], labels i32[...] → f32[..., 3]: per row (loss, L, weight), L the row's
   * log-sum-exp, loss = L − logits[label], weight 1. A row labelled −100 (IGNORE_INDEX, PyTorch's
   * ignore_index) is (0, L, 0). b.crossEntropy divides Σ loss by Σ weight (at least 1).
   */
  cross_entropy: NoAttrs;
  /**
   * Backward only: (logits, labels, stats = cross_entropy's output, ct f32[..., 3]) → dlogits
   * = (ct₀·w + ct₁)·softmax(logits) − ct₀·w·onehot(label), softmax recomputed as exp(logits − L).
   */
  cross_entropy_grad: NoAttrs;
  /**
   * linear_cross_entropy(h [N, d], w [d, V] (or [V, d] with transB), labels i32[N]) =
   * cross_entropy(h·w, labels), without ever writing the [N, V] logits; its VJP recomputes them
   * `chunk` rows at a time. Semantics: src/ir/linear-ce.ts; used by src/passes/linear-ce.ts.
   */
  linear_cross_entropy: LinearCeAttrs;
  /** x f32[..., D], weight [D] or [] → x · rsqrt(mean(x²) + eps) · weight, over the last axis. */
  rms_norm: { readonly eps: number };
  /** Backward only: (x, weight, ct) → dx; the row statistics are recomputed from x. */
  rms_norm_grad: { readonly eps: number };
  /** x f32[..., D], weight and bias [D] or [] → (x − mean)·rsqrt(var + eps)·weight + bias. */
  layer_norm: { readonly eps: number };
  /** Backward only: (x, weight, ct) → dx; mean and rstd are recomputed from x. */
  layer_norm_grad: { readonly eps: number };
  /**
   * Fused scaled-dot-product attention: q [b,h,sq,dk], k [b,hkv,sk,dk], v [b,hkv,sk,dv] (and a key
   * mask [b,sk] when `masked`) → [b,h,sq,dv+2]: the output in [..., 0:dv], each row's log-sum-exp
   * of its scores in [..., dv] + [..., dv+1] (high and low parts, so that half-precision storage
   * keeps it exact enough). Semantics and backward: src/ir/attention.ts.
   */
  attention: AttentionAttrs;
  /** attention_delta(packed, ct) → [b,h,sq]: D_i = Σ_c ct_ic·O_ic − ct_i,dv. Backward-only. */
  attention_delta: NoAttrs;
  /** attention_dq(q, k, v, [mask], packed, ct, delta) → dq [b,h,sq,dk]. Backward-only. */
  attention_dq: AttentionAttrs;
  /** attention_dkv(q, k, v, [mask], packed, ct, delta) → [b,hkv,sk,dk+dv]: dk then dv. Backward-only. */
  attention_dkv: AttentionAttrs;
}

export type OpName = keyof OpAttrs;

/** Inputs of a VJP rule. `wants[i]` is false when input i needs no cotangent: emit nothing for it. */
export interface VjpArgs<A> {
  readonly b: Builder;
  readonly inputs: readonly Value[];
  readonly out: Value;
  readonly ct: Value;
  readonly attrs: A;
  readonly wants: readonly boolean[];
}

/** The label that marks a row with no target (PyTorch's ignore_index default). */
export const IGNORE_INDEX = -100;

/**
 * Returns one cotangent per input (null where not wanted). A cotangent may have the broadcast
 * output shape: the autodiff driver sums it back to the input's shape, once, for every rule.
 */
export type Vjp<A> = (a: VjpArgs<A>) => readonly (Value | null)[];

/** How codegen (src/codegen) computes the op: an elementwise expression, or a structured kernel. */
export type WgslSlot<A> =
  | { readonly kind: 'map'; readonly expr: (args: readonly string[], attrs: A) => string }
  | { readonly kind: 'kernel'; readonly emitter: KernelEmitter }
  | { readonly kind: 'view' };

export type KernelEmitter =
  | 'fill'
  | 'reduce'
  | 'permute'
  | 'broadcast'
  | 'slice'
  | 'pad'
  | 'concat'
  | 'gather'
  | 'scatter_add'
  | 'one_hot'
  | 'matmul'
  | 'cross_entropy'
  | 'cross_entropy_grad'
  | 'linear_cross_entropy'
  | 'norm'
  | 'norm_grad'
  | 'attention'
  | 'attention_delta'
  | 'attention_dq'
  | 'attention_dkv';

/** A source of random choices; tests back it with fast-check so cases shrink. */
export interface CaseGen {
  int(min: number, max: number): number;
  bool(): boolean;
}

export type Domain =
  | { readonly kind: 'real' }
  | { readonly kind: 'positive' }
  /** |x| ≥ 0.1: keeps finite differences off a kink at 0. */
  | { readonly kind: 'awayFromZero' }
  /** `ignoreFrac`: with this probability a value is IGNORE_INDEX instead (cross-entropy labels). */
  | { readonly kind: 'int'; readonly lo: number; readonly hi: number; readonly ignoreFrac?: number }
  /**
   * A key mask: 0/1 values in rows of `row` (the last axis), each row with at least one 1 (and
   * often exactly one), so every query has a real key. Discrete: it gets no derivative.
   */
  | { readonly kind: 'mask'; readonly row: number };

export interface OpCase<A> {
  readonly inputs: readonly { readonly type: TensorType; readonly domain: Domain }[];
  readonly attrs: A;
}

export interface OpDef<A> {
  /** Number of inputs; 'variadic' for concat. */
  readonly arity: number | 'variadic';
  readonly infer: (ins: readonly TensorType[], attrs: A) => TensorType;
  readonly ref: (ins: readonly Tensor[], attrs: A, out: TensorType) => Float64Array;
  /**
   * 'nondiff': the output is integer-valued or piecewise constant, so no cotangent flows through.
   * 'backward-only': a kernel that exists only inside another op's VJP (cross_entropy_grad,
   * rms_norm_grad, layer_norm_grad, attention's delta, dq and dk/dv); it has no rule of its own, so
   * a cotangent reaching it (a second-order gradient) is an error, never a silent zero.
   */
  readonly vjp: Vjp<A> | 'nondiff' | 'backward-only';
  readonly wgsl: WgslSlot<A>;
  readonly testCase: (g: CaseGen) => OpCase<A>;
}

export type OpRegistry = { readonly [K in OpName]: OpDef<OpAttrs[K]> };

// ---------------------------------------------------------------------------------------------
// helpers

const f32 = (shape: readonly number[]): TensorType => ({ dtype: 'f32', shape });
const REAL: Domain = { kind: 'real' };
const POS: Domain = { kind: 'positive' };
const AWAY: Domain = { kind: 'awayFromZero' };

function randShape(g: CaseGen, minRank: number, maxRank: number, maxDim = 4): number[] {
  const rank = g.int(minRank, maxRank);
  return Array.from({ length: rank }, () => g.int(1, maxDim));
}

/** A shape that broadcasts to `s`: a suffix of it with some dims set to 1. */
function broadcastableTo(g: CaseGen, s: readonly number[]): number[] {
  const drop = g.int(0, s.length);
  return s.slice(drop).map((d) => (g.int(0, 3) === 0 ? 1 : d));
}

function requireFloat(t: TensorType, what: string): void {
  if (t.dtype === 'i32') throw new ShapeProblem(`${what} must be a float tensor, got i32`, 'integer tensors are only indices: use them in gather or one_hot');
}

function unary(
  f: (x: number) => number,
  vjp: Vjp<NoAttrs> | 'nondiff',
  expr: (x: string) => string,
  domain: Domain = REAL,
): OpDef<NoAttrs> {
  return {
    arity: 1,
    infer: ([x]) => {
      requireFloat(x, 'the input');
      return x;
    },
    ref: ([x]) => x.data.map(f),
    vjp,
    wgsl: { kind: 'map', expr: ([x]) => expr(x) },
    testCase: (g) => ({ inputs: [{ type: f32(randShape(g, 0, 3)), domain }], attrs: {} }),
  };
}

function binary(
  f: (a: number, b: number) => number,
  vjp: Vjp<NoAttrs> | 'nondiff',
  expr: (a: string, b: string) => string,
  domains: readonly [Domain, Domain] = [REAL, REAL],
): OpDef<NoAttrs> {
  return {
    arity: 2,
    infer: ([a, b]) => {
      requireFloat(a, 'the left operand');
      requireFloat(b, 'the right operand');
      return { dtype: a.dtype, shape: broadcastShapes(a.shape, b.shape) };
    },
    ref: ([a, b], _attrs, out) => {
      const ia = broadcastIndex(a.shape, out.shape);
      const ib = broadcastIndex(b.shape, out.shape);
      const r = new Float64Array(numel(out.shape));
      for (let i = 0; i < r.length; i++) r[i] = f(a.data[ia[i]], b.data[ib[i]]);
      return r;
    },
    vjp,
    wgsl: { kind: 'map', expr: ([a, b]) => expr(a, b) },
    testCase: (g) => {
      const s = randShape(g, 0, 3);
      const other = broadcastableTo(g, s);
      const [sa, sb] = g.bool() ? [s, other] : [other, s];
      return { inputs: [{ type: f32(sa), domain: domains[0] }, { type: f32(sb), domain: domains[1] }], attrs: {} };
    },
  };
}

function reduceInfer(name: string) {
  return ([x]: readonly TensorType[], a: { axes: readonly number[]; keepdims: boolean }): TensorType => {
    requireFloat(x, `the input of ${name}`);
    for (const ax of a.axes) {
      if (!Number.isInteger(ax) || ax < 0 || ax >= x.shape.length) {
        throw new ShapeProblem(`axis ${ax} is out of range for rank ${x.shape.length}`);
      }
    }
    return { dtype: x.dtype, shape: reducedShape(x.shape, a.axes, a.keepdims) };
  };
}

function reduceRef(init: number, step: (acc: number, x: number) => number) {
  return ([x]: readonly Tensor[], a: { axes: readonly number[] }, out: TensorType): Float64Array => {
    const keep = reducedShape(x.shape, a.axes, true);
    const r = new Float64Array(numel(out.shape)).fill(init);
    const ks = strides(keep);
    forEachIndex(x.shape, (idx, flat) => {
      let o = 0;
      for (let d = 0; d < idx.length; d++) if (keep[d] !== 1) o += idx[d] * ks[d];
      r[o] = step(r[o], x.data[flat]);
    });
    return r;
  };
}

/** Reduction axes with keepdims, so a reduced cotangent broadcasts back against the input. */
function keepShape(x: Value, axes: readonly number[]): number[] {
  return reducedShape(x.type.shape, axes, true);
}

function matmulDims(a: TensorType, b: TensorType, t: OpAttrs['matmul']) {
  const ra = a.shape.length;
  const rb = b.shape.length;
  const m = t.transA ? a.shape[ra - 1] : a.shape[ra - 2];
  const ka = t.transA ? a.shape[ra - 2] : a.shape[ra - 1];
  const kb = t.transB ? b.shape[rb - 1] : b.shape[rb - 2];
  const n = t.transB ? b.shape[rb - 2] : b.shape[rb - 1];
  return { m, ka, kb, n };
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const GELU_C = 0.044715;

function geluRef(x: number): number {
  return 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x)));
}

/** gelu'(x) = ½(1+t) + ½x(1−t²)·u', t = tanh(u), u = c(x + 0.044715x³), u' = c(1 + 3·0.044715x²). */
function geluDerivRef(x: number): number {
  const t = Math.tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
  const du = SQRT_2_OVER_PI * (1 + 3 * GELU_C * x * x);
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du;
}

/** u = c(x + 0.044715x³), t = tanh(u) and u' = c(1 + 3·0.044715x²), built from IR ops. */
function geluParts(b: Builder, x: Value): { t: Value; du: Value } {
  const x2 = b.mul(x, x);
  const u = b.mul(b.add(x, b.mul(b.mul(x2, x), b.scalar(GELU_C))), b.scalar(SQRT_2_OVER_PI));
  const du = b.mul(b.add(b.scalar(1), b.mul(x2, b.scalar(3 * GELU_C))), b.scalar(SQRT_2_OVER_PI));
  return { t: b.tanh(u), du };
}

/**
 * erf in float64, for the reference: its Maclaurin series for |x| < 2.5 (alternating terms, summed
 * until they no longer change the sum), and erfc's continued fraction (modified Lentz) beyond, where
 * the series would cancel. Both are accurate to a few ulps.
 */
export function erf(x: number): number {
  const a = Math.abs(x);
  if (a < 2.5) {
    let term = a;
    let sum = a;
    for (let n = 1; n < 200; n++) {
      term *= (-a * a) / n;
      const add = term / (2 * n + 1);
      if (sum + add === sum) break;
      sum += add;
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(a) = exp(−a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + 2/(a + …)))))
  const tiny = 1e-300;
  let f = a;
  let C = a;
  let D = 0;
  for (let n = 1; n < 500; n++) {
    const an = n / 2;
    D = a + an * D;
    D = 1 / (Math.abs(D) < tiny ? tiny : D);
    C = a + an / C;
    if (Math.abs(C) < tiny) C = tiny;
    const delta = C * D;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  const erfc = Math.exp(-a * a) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}

/** Φ(x), the standard normal CDF, and φ(x), its density. */
const normCdf = (x: number) => 0.5 * (1 + erf(x / Math.SQRT2));
const normPdf = (x: number) => Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);

/**
 * erf in WGSL (f32): erfc's Chebyshev fit from Numerical Recipes (fractional error < 1.2e-7 for
 * every x), erf = 1 − erfc, odd. Written inline: elementwise ops are expressions.
 */
function wgslErf(x: string): string {
  const t = `(1.0 / (1.0 + 0.5 * abs(${x})))`;
  const poly = [-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277]
    .map((c) => c.toFixed(8))
    .reduceRight((acc, c) => (acc ? `${c} + ${t} * (${acc})` : c), '');
  return `(sign(${x}) * (1.0 - ${t} * exp(-(${x}) * (${x}) + ${poly})))`;
}

/** silu'(x) = σ(x)·(1 + x·(1 − σ(x))). */
function siluDerivRef(x: number): number {
  const s = sigmoidRef(x);
  return s * (1 + x * (1 - s));
}

function sigmoidRef(x: number): number {
  return x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x));
}

// ---------------------------------------------------------------------------------------------
// Losses and norms as primitives (issue 14). A composition's intermediates are saved activations:
// cross-entropy as log_softmax + one_hot kept a [tokens, vocab] one-hot and its exponentials, and
// each norm its normalised rows. These ops keep only what their VJPs read. cross_entropy keeps the
// logits and its own [rows, 3] output (loss, log-sum-exp L, weight); the norms keep x and the
// weight: their backward kernels recompute the row statistics (one pass over the row) rather than
// save them. The *_grad ops are backward-only kernels; dweight/dbias are ct·x̂ and ct, which the
// autodiff driver sums over the rows (x̂ recomputed by the forward op with a unit weight).

/** Rows of a [..., D] tensor, and D. */
function rowsOf(shape: readonly number[]): { rows: number; width: number } {
  const width = shape[shape.length - 1];
  return { rows: numel(shape) / width, width };
}

function requireNormOperand(t: TensorType, width: number, what: string): void {
  requireFloat(t, what);
  if (!(t.shape.length === 0 || (t.shape.length === 1 && t.shape[0] === width))) {
    throw new ShapeProblem(`${what} must be [${width}] (or a scalar), got [${t.shape.join(',')}]`, 'give the norm one weight per feature of the last axis');
  }
}

function normInfer(name: string, operands: readonly string[]) {
  return (ins: readonly TensorType[], a: { eps: number }): TensorType => {
    const x = ins[0];
    requireFloat(x, `the input of ${name}`);
    if (x.shape.length < 1) throw new ShapeProblem(`${name} normalises the last axis: the input needs rank ≥ 1`);
    if (!(a.eps >= 0)) throw new ShapeProblem(`eps must be ≥ 0, got ${a.eps}`);
    const { width } = rowsOf(x.shape);
    operands.forEach((what, k) => {
      const t = ins[k + 1];
      if (what === 'ct') {
        requireFloat(t, 'the cotangent');
        if (!sameShape(t.shape, x.shape)) throw new ShapeProblem(`the cotangent [${t.shape.join(',')}] must match the input [${x.shape.join(',')}]`);
      } else requireNormOperand(t, width, what);
    });
    return x;
  };
}

/** Per row: mean (0 for RMSNorm) and rstd = 1/√(E[(x − mean)²] + eps), in float64. */
function rowStats(x: Tensor, eps: number, centered: boolean): { mean: Float64Array; rstd: Float64Array } {
  const { rows, width } = rowsOf(x.shape);
  const mean = new Float64Array(rows);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const row = x.data.subarray(r * width, (r + 1) * width);
    let mu = 0;
    if (centered) {
      for (const v of row) mu += v;
      mu /= width;
    }
    let ss = 0;
    for (const v of row) ss += (v - mu) * (v - mu);
    mean[r] = mu;
    rstd[r] = 1 / Math.sqrt(ss / width + eps);
  }
  return { mean, rstd };
}

/** Element j of a norm's weight or bias ([D] or a scalar). */
const perFeature = (t: Tensor, j: number) => (t.shape.length === 0 ? t.data[0] : t.data[j]);

function normRef(centered: boolean) {
  return (ins: readonly Tensor[], { eps }: { eps: number }): Float64Array => {
    const [x, w, bias] = ins;
    const { width } = rowsOf(x.shape);
    const { mean, rstd } = rowStats(x, eps, centered);
    return x.data.map((v, i) => {
      const r = Math.floor(i / width);
      const j = i % width;
      return (v - mean[r]) * rstd[r] * perFeature(w, j) + (bias ? perFeature(bias, j) : 0);
    });
  };
}

/**
 * dx of y = x̂·w (+ b), x̂ = (x − μ)·rstd, g = ct·w: RMSNorm dx = rstd·(g − x̂·mean(g·x̂)); LayerNorm
 * subtracts mean(g) as well.
 */
function normGradRef(centered: boolean) {
  return ([x, w, ct]: readonly Tensor[], { eps }: { eps: number }): Float64Array => {
    const { rows, width } = rowsOf(x.shape);
    const { mean, rstd } = rowStats(x, eps, centered);
    const dx = new Float64Array(x.data.length);
    for (let r = 0; r < rows; r++) {
      let mg = 0;
      let mgx = 0;
      for (let j = 0; j < width; j++) {
        const i = r * width + j;
        const g = ct.data[i] * perFeature(w, j);
        mg += g;
        mgx += g * (x.data[i] - mean[r]) * rstd[r];
      }
      mg = centered ? mg / width : 0;
      mgx /= width;
      for (let j = 0; j < width; j++) {
        const i = r * width + j;
        const g = ct.data[i] * perFeature(w, j);
        const xh = (x.data[i] - mean[r]) * rstd[r];
        dx[i] = rstd[r] * (g - mg - xh * mgx);
      }
    }
    return dx;
  };
}

/** A row width: small, or just past a workgroup of 64 (so GPU cases cover partial strides). */
const rowWidth = (g: CaseGen) => (g.int(0, 3) === 0 ? g.int(60, 70) : g.int(1, 6));
const normEps = (g: CaseGen) => [1e-5, 1e-2, 0.5][g.int(0, 2)];
const weightShape = (g: CaseGen, d: number) => (g.int(0, 3) === 0 ? [] : [d]);

function normCase(g: CaseGen, withBias: boolean, grad: boolean): OpCase<{ eps: number }> {
  const d = rowWidth(g);
  const x = [...randShape(g, 0, 2, d > 8 ? 3 : 4), d];
  const inputs = [{ type: f32(x), domain: REAL }, { type: f32(weightShape(g, d)), domain: REAL }];
  if (withBias) inputs.push({ type: f32(weightShape(g, d)), domain: REAL });
  if (grad) inputs.push({ type: f32(x), domain: REAL });
  return { inputs, attrs: { eps: normEps(g) } };
}

/** cross_entropy's reference: (loss, L, weight) per row of logits x against labels t. */
function crossEntropyRows(x: Tensor, t: Tensor): Float64Array {
  const { rows, width: c } = rowsOf(x.shape);
  const r = new Float64Array(rows * 3);
  for (let i = 0; i < rows; i++) {
    const row = x.data.subarray(i * c, (i + 1) * c);
    let m = -Infinity;
    for (const v of row) m = Math.max(m, v);
    let s = 0;
    for (const v of row) s += Math.exp(v - m);
    const lse = m + Math.log(s);
    const k = t.data[i];
    r[3 * i + 1] = lse;
    if (k === IGNORE_INDEX) continue;
    if (!(k >= 0 && k < c)) throw new RangeError(`cross_entropy: label ${k} outside [0, ${c}) and not the ignore index ${IGNORE_INDEX}`);
    r[3 * i] = lse - row[k];
    r[3 * i + 2] = 1;
  }
  return r;
}

function crossEntropyInfer([x, t]: readonly TensorType[]): { rows: readonly number[]; classes: number } {
  requireFloat(x, 'the logits');
  if (t.dtype !== 'i32') throw new ShapeProblem(`labels must be i32, got ${t.dtype}`, 'declare the labels input with dtype i32');
  if (x.shape.length < 1 || !sameShape(x.shape.slice(0, -1), t.shape)) {
    throw new ShapeProblem(`logits [${x.shape.join(',')}] must be the labels' shape [${t.shape.join(',')}] plus a class axis`);
  }
  return { rows: t.shape, classes: x.shape[x.shape.length - 1] };
}

/** Logits [...rows, C] with labels [...rows] (a share of them IGNORE_INDEX: none, some or all). */
function crossEntropyCase(g: CaseGen, grad: boolean): OpCase<NoAttrs> {
  const c = rowWidth(g);
  const rows = randShape(g, 0, 2, c > 8 ? 3 : 4);
  const ignoreFrac = [0, 0.3, 1][g.int(0, 2)];
  const inputs = [
    { type: f32([...rows, c]), domain: REAL },
    { type: { dtype: 'i32' as const, shape: rows }, domain: { kind: 'int' as const, lo: 0, hi: c - 1, ignoreFrac } },
  ];
  if (grad) inputs.push({ type: f32([...rows, 3]), domain: REAL }, { type: f32([...rows, 3]), domain: REAL });
  return { inputs, attrs: {} };
}

const LOSS_AND_NORM_OPS: Pick<OpRegistry, 'cross_entropy' | 'cross_entropy_grad' | 'linear_cross_entropy' | 'rms_norm' | 'rms_norm_grad' | 'layer_norm' | 'layer_norm_grad'> = {
  cross_entropy: {
    arity: 2,
    infer: (ins) => {
      const { rows } = crossEntropyInfer(ins);
      return { dtype: 'f32', shape: [...rows, 3] };
    },
    ref: ([x, t]) => crossEntropyRows(x, t),
    vjp: ({ b, ct, out, inputs: [x, t], wants }) => [wants[0] ? b.emit('cross_entropy_grad', [x, t, out, ct], {}) : null, null],
    wgsl: { kind: 'kernel', emitter: 'cross_entropy' },
    testCase: (g) => crossEntropyCase(g, false),
  },
  cross_entropy_grad: {
    arity: 4,
    infer: ([x, t, stats, ct]) => {
      const { rows } = crossEntropyInfer([x, t]);
      for (const [v, what] of [[stats, 'the statistics'], [ct, 'the cotangent']] as const) {
        requireFloat(v, what);
        if (!sameShape(v.shape, [...rows, 3])) throw new ShapeProblem(`${what} must be [${[...rows, 3].join(',')}], got [${v.shape.join(',')}]`);
      }
      return x;
    },
    ref: ([x, t, st, ct]) => {
      const { width: c } = rowsOf(x.shape);
      return x.data.map((v, i) => {
        const r = Math.floor(i / c);
        const w = st.data[3 * r + 2];
        const p = Math.exp(v - st.data[3 * r + 1]);
        return (ct.data[3 * r] * w + ct.data[3 * r + 1]) * p - (t.data[r] === i % c ? ct.data[3 * r] * w : 0);
      });
    },
    vjp: 'backward-only',
    wgsl: { kind: 'kernel', emitter: 'cross_entropy_grad' },
    testCase: (g) => crossEntropyCase(g, true),
  },
  linear_cross_entropy: {
    arity: 3,
    infer: (ins, a) => linearCeInfer(ins, a),
    ref: (ins, a) => linearCeRef(ins, a, (z, t) => crossEntropyRows(z, t)),
    vjp: ({ b, ct, out, inputs, attrs, wants }) => linearCeVjp(b, inputs, out, ct, attrs, wants),
    wgsl: { kind: 'kernel', emitter: 'linear_cross_entropy' },
    testCase: (g) => {
      // Past one workgroup's 16 rows, one 16-wide step of d and one 64-wide vocab tile, often.
      const n = g.int(0, 2) === 0 ? g.int(15, 18) : g.int(1, 5);
      const d = g.int(0, 2) === 0 ? g.int(15, 18) : g.int(1, 5);
      const v = rowWidth(g);
      const transB = g.bool();
      const ignoreFrac = [0, 0.3, 1][g.int(0, 2)];
      return {
        inputs: [
          { type: f32([n, d]), domain: REAL },
          { type: f32(transB ? [v, d] : [d, v]), domain: REAL },
          { type: { dtype: 'i32' as const, shape: [n] }, domain: { kind: 'int' as const, lo: 0, hi: v - 1, ignoreFrac } },
        ],
        attrs: { transB, chunk: g.int(1, n) },
      };
    },
  },
  rms_norm: {
    arity: 2,
    infer: normInfer('rms_norm', ['the weight']),
    ref: normRef(false),
    vjp: ({ b, ct, inputs: [x, w], attrs, wants }) => [
      wants[0] ? b.emit('rms_norm_grad', [x, w, ct], attrs) : null,
      // ct·x̂ with x̂ recomputed from x; the driver sums it over the rows.
      wants[1] ? b.mul(ct, b.emit('rms_norm', [x, b.scalar(1)], attrs, 'normed')) : null,
    ],
    wgsl: { kind: 'kernel', emitter: 'norm' },
    testCase: (g) => normCase(g, false, false),
  },
  rms_norm_grad: {
    arity: 3,
    infer: normInfer('rms_norm_grad', ['the weight', 'ct']),
    ref: normGradRef(false),
    vjp: 'backward-only',
    wgsl: { kind: 'kernel', emitter: 'norm_grad' },
    testCase: (g) => normCase(g, false, true),
  },
  layer_norm: {
    arity: 3,
    infer: normInfer('layer_norm', ['the weight', 'the bias']),
    ref: normRef(true),
    vjp: ({ b, ct, inputs: [x, w], attrs, wants }) => [
      wants[0] ? b.emit('layer_norm_grad', [x, w, ct], attrs) : null,
      wants[1] ? b.mul(ct, b.emit('layer_norm', [x, b.scalar(1), b.scalar(0)], attrs, 'normed')) : null,
      wants[2] ? ct : null,
    ],
    wgsl: { kind: 'kernel', emitter: 'norm' },
    testCase: (g) => normCase(g, true, false),
  },
  layer_norm_grad: {
    arity: 3,
    infer: normInfer('layer_norm_grad', ['the weight', 'ct']),
    ref: normGradRef(true),
    vjp: 'backward-only',
    wgsl: { kind: 'kernel', emitter: 'norm_grad' },
    testCase: (g) => normCase(g, false, true),
  },
};

// ---------------------------------------------------------------------------------------------
// the registry

export const OPS: OpRegistry = {
  neg: unary((x) => -x, ({ b, ct }) => [b.neg(ct)], (x) => `(-${x})`),
  exp: unary(Math.exp, ({ b, ct, out }) => [b.mul(ct, out)], (x) => `exp(${x})`),
  log: unary(Math.log, ({ b, ct, inputs: [x] }) => [b.div(ct, x)], (x) => `log(${x})`, POS),
  sqrt: unary(Math.sqrt, ({ b, ct, out }) => [b.div(ct, b.mul(out, b.scalar(2)))], (x) => `sqrt(${x})`, POS),
  rsqrt: unary(
    (x) => 1 / Math.sqrt(x),
    // d/dx x^-1/2 = -1/2 · x^-3/2 = -1/2 · y³
    ({ b, ct, out }) => [b.mul(ct, b.mul(b.powc(out, 3), b.scalar(-0.5)))],
    (x) => `inverseSqrt(${x})`,
    POS,
  ),
  tanh: unary(
    Math.tanh,
    ({ b, ct, out }) => [b.mul(ct, b.sub(b.scalar(1), b.mul(out, out)))],
    (x) => `tanh(clamp(${x}, -15.0, 15.0))`,
  ),
  sigmoid: unary(
    sigmoidRef,
    ({ b, ct, out }) => [b.mul(ct, b.mul(out, b.sub(b.scalar(1), out)))],
    (x) => `(1.0 / (1.0 + exp(-${x})))`,
  ),
  relu: unary((x) => (x > 0 ? x : 0), ({ b, ct, inputs: [x] }) => [b.mul(ct, b.step(x))], (x) => `max(${x}, 0.0)`, AWAY),
  gelu: unary(
    geluRef,
    ({ b, ct, inputs: [x] }) => [b.geluGrad(x, ct)],
    (x) => `(0.5 * ${x} * (1.0 + tanh(clamp(${SQRT_2_OVER_PI} * (${x} + ${GELU_C} * ${x} * ${x} * ${x}), -15.0, 15.0))))`,
  ),
  gelu_grad: binary(
    (x, ct) => ct * geluDerivRef(x),
    ({ b, ct, inputs: [x, g], wants }) => {
      // d/dct = gelu'(x) = ½(1+t) + ½x(1−t²)u'
      // d/dx = ct·gelu''(x), gelu'' = (1−t²)(u' − x·t·u'² + ½x·u''), u'' = 6·0.044715·c·x
      const { t, du } = geluParts(b, x);
      const oneMinusT2 = b.sub(b.scalar(1), b.mul(t, t));
      let dx: Value | null = null;
      if (wants[0]) {
        const ddu = b.mul(x, b.scalar(6 * GELU_C * SQRT_2_OVER_PI));
        const inner = b.add(b.sub(du, b.mul(b.mul(x, t), b.mul(du, du))), b.mul(b.mul(x, b.scalar(0.5)), ddu));
        dx = b.mul(b.mul(ct, g), b.mul(oneMinusT2, inner));
      }
      let dg: Value | null = null;
      if (wants[1]) {
        const deriv = b.add(b.mul(b.add(b.scalar(1), t), b.scalar(0.5)), b.mul(b.mul(b.mul(x, b.scalar(0.5)), oneMinusT2), du));
        dg = b.mul(ct, deriv);
      }
      return [dx, dg];
    },
    (x, ct) => {
      const t = `tanh(clamp(${SQRT_2_OVER_PI} * (${x} + ${GELU_C} * ${x} * ${x} * ${x}), -15.0, 15.0))`;
      return `(${ct} * (0.5 * (1.0 + ${t}) + 0.5 * ${x} * (1.0 - ${t} * ${t}) * ${SQRT_2_OVER_PI} * (1.0 + ${3 * GELU_C} * ${x} * ${x})))`;
    },
  ),
  gelu_erf: unary(
    (x) => x * normCdf(x),
    ({ b, ct, inputs: [x] }) => [b.geluErfGrad(x, ct)],
    (x) => `(0.5 * ${x} * (1.0 + ${wgslErf(`(${x} * ${Math.SQRT1_2})`)}))`,
  ),
  gelu_erf_grad: binary(
    (x, ct) => ct * (normCdf(x) + x * normPdf(x)),
    ({ b, ct, inputs: [x, g], wants }) => {
      // d/dct: the op is linear in ct, so it is the op itself at the incoming cotangent;
      // d/dx = ct·g·gelu''(x), gelu''(x) = φ(x)·(2 − x²)
      const pdf = () => b.mul(b.exp(b.mul(b.mul(x, x), b.scalar(-0.5))), b.scalar(1 / Math.sqrt(2 * Math.PI)));
      const dx = wants[0] ? b.mul(b.mul(ct, g), b.mul(pdf(), b.sub(b.scalar(2), b.mul(x, x)))) : null;
      const dg = wants[1] ? b.geluErfGrad(x, ct) : null;
      return [dx, dg];
    },
    (x, ct) => `(${ct} * (0.5 * (1.0 + ${wgslErf(`(${x} * ${Math.SQRT1_2})`)}) + ${x} * exp(-0.5 * ${x} * ${x}) * ${1 / Math.sqrt(2 * Math.PI)}))`,
  ),
  silu: unary(
    (x) => x * sigmoidRef(x),
    ({ b, ct, inputs: [x] }) => [b.emit('silu_grad', [x, ct], {})],
    (x) => `(${x} / (1.0 + exp(-${x})))`,
  ),
  silu_grad: binary(
    (x, ct) => ct * siluDerivRef(x),
    ({ b, ct, inputs: [x, c], wants }) => {
      // d/dx = ct·c·silu''(x), silu'' = σ(1 − σ)(2 + x(1 − 2σ)); d/dc = ct·silu'(x) = silu_grad(x, ct).
      let dx: Value | null = null;
      if (wants[0]) {
        const s = b.sigmoid(x);
        const second = b.mul(b.mul(s, b.sub(b.scalar(1), s)), b.add(b.scalar(2), b.mul(x, b.sub(b.scalar(1), b.mul(s, b.scalar(2))))));
        dx = b.mul(b.mul(ct, c), second);
      }
      return [dx, wants[1] ? b.emit('silu_grad', [x, ct], {}) : null];
    },
    (x, ct) => {
      const s = `(1.0 / (1.0 + exp(-${x})))`;
      return `(${ct} * (${s} * (1.0 + ${x} * (1.0 - ${s}))))`;
    },
  ),
  swiglu: binary(
    (g, u) => g * sigmoidRef(g) * u,
    // d/dgate = silu_grad(gate, ct·up); d/dup = ct·silu(gate) = swiglu(gate, ct): silu(gate) is
    // recomputed in the kernel, never saved, and each cotangent is one elementwise node.
    ({ b, ct, inputs: [g, u], wants }) => [
      wants[0] ? b.emit('silu_grad', [g, b.mul(ct, u)], {}) : null,
      wants[1] ? b.emit('swiglu', [g, ct], {}) : null,
    ],
    (g, u) => `((${g} / (1.0 + exp(-${g}))) * ${u})`,
  ),
  step: unary((x) => (x > 0 ? 1 : 0), 'nondiff', (x) => `select(0.0, 1.0, ${x} > 0.0)`, AWAY),
  stop_gradient: { ...unary((x) => x, 'nondiff', (x) => x), wgsl: { kind: 'view' } },
  powc: {
    arity: 1,
    infer: ([x]) => {
      requireFloat(x, 'the base');
      return x;
    },
    ref: ([x], { p }) => x.data.map((v) => Math.pow(v, p)),
    vjp: ({ b, ct, inputs: [x], attrs: { p } }) => [
      p === 1 ? ct : b.mul(ct, b.mul(p === 2 ? x : b.powc(x, p - 1), b.scalar(p))),
    ],
    // WGSL's pow is undefined for a negative base: integer powers keep the sign by hand.
    wgsl: {
      kind: 'map',
      expr: ([x], { p }) => {
        if (p === 1) return x;
        if (p === 2) return `(${x} * ${x})`;
        if (p === 3) return `(${x} * ${x} * ${x})`;
        const e = Number.isInteger(p) ? `${p}.0` : String(Math.fround(p));
        if (!Number.isInteger(p)) return `pow(${x}, ${e.includes('.') || e.includes('e') ? e : e + '.0'})`;
        const mag = `pow(abs(${x}), ${e})`;
        return p % 2 === 0 ? mag : `(sign(${x}) * ${mag})`;
      },
    },
    testCase: (g) => ({
      inputs: [{ type: f32(randShape(g, 0, 3)), domain: POS }],
      attrs: { p: [2, 3, 0.5, -1, -0.5, 1.5][g.int(0, 5)] },
    }),
  },
  add: binary((a, c) => a + c, ({ ct }) => [ct, ct], (a, c) => `(${a} + ${c})`),
  sub: binary((a, c) => a - c, ({ b, ct, wants }) => [ct, wants[1] ? b.neg(ct) : null], (a, c) => `(${a} - ${c})`),
  mul: binary(
    (a, c) => a * c,
    ({ b, ct, inputs: [x, y], wants }) => [wants[0] ? b.mul(ct, y) : null, wants[1] ? b.mul(ct, x) : null],
    (a, c) => `(${a} * ${c})`,
  ),
  div: binary(
    (a, c) => a / c,
    ({ b, ct, inputs: [x, y], out, wants }) => [
      wants[0] ? b.div(ct, y) : null,
      // d(x/y)/dy = −x/y² = −out/y
      wants[1] ? b.neg(b.div(b.mul(ct, out), y)) : null,
    ],
    (a, c) => `(${a} / ${c})`,
    [REAL, AWAY],
  ),
  eq: binary((a, c) => (a === c ? 1 : 0), 'nondiff', (a, c) => `select(0.0, 1.0, ${a} == ${c})`),
  where: {
    arity: 3,
    infer: ([c, x, y]) => {
      requireFloat(x, 'the value if true');
      requireFloat(y, 'the value if false');
      return { dtype: x.dtype, shape: broadcastShapes(c.shape, broadcastShapes(x.shape, y.shape)) };
    },
    ref: ([c, x, y], _a, out) => {
      const ic = broadcastIndex(c.shape, out.shape);
      const ix = broadcastIndex(x.shape, out.shape);
      const iy = broadcastIndex(y.shape, out.shape);
      return new Float64Array(numel(out.shape)).map((_, i) => (c.data[ic[i]] !== 0 ? x.data[ix[i]] : y.data[iy[i]]));
    },
    vjp: ({ b, ct, inputs: [c], wants }) => {
      const zero = b.scalar(0);
      return [null, wants[1] ? b.where(c, ct, zero) : null, wants[2] ? b.where(c, zero, ct) : null];
    },
    wgsl: { kind: 'map', expr: ([c, x, y]) => `select(${y}, ${x}, ${c} != 0.0)` },
    testCase: (g) => {
      const s = randShape(g, 0, 3);
      return {
        inputs: [
          { type: f32(broadcastableTo(g, s)), domain: { kind: 'int', lo: 0, hi: 1 } },
          { type: f32(s), domain: REAL },
          { type: f32(broadcastableTo(g, s)), domain: REAL },
        ],
        attrs: {},
      };
    },
  },
  count_nonfinite: {
    arity: 1,
    infer: ([x]) => {
      requireFloat(x, 'the input of count_nonfinite');
      return f32([]);
    },
    ref: ([x]) => Float64Array.of(x.data.reduce((n, v) => (Number.isFinite(v) ? n : n + 1), 0)),
    vjp: 'nondiff',
    // A sum over every element of 0/1 (emitReduce); exact in f32 up to 2²⁴ non-finite elements.
    wgsl: { kind: 'kernel', emitter: 'reduce' },
    testCase: (g) => ({ inputs: [{ type: f32(randShape(g, 1, 3, 6)), domain: REAL }], attrs: {} }),
  },
  fill: {
    arity: 0,
    infer: (_ins, a) => {
      if (a.shape.some((d) => !Number.isInteger(d) || d < 1)) throw new ShapeProblem(`bad shape [${a.shape.join(',')}]`);
      return { dtype: a.dtype, shape: a.shape };
    },
    ref: (_ins, a) => new Float64Array(numel(a.shape)).fill(a.value),
    vjp: 'nondiff',
    wgsl: { kind: 'kernel', emitter: 'fill' },
    testCase: (g) => ({ inputs: [], attrs: { value: g.int(-3, 3) / 2, shape: randShape(g, 0, 2), dtype: 'f32' } }),
  },
  sum: {
    arity: 1,
    infer: reduceInfer('sum'),
    ref: reduceRef(0, (acc, x) => acc + x),
    vjp: ({ b, ct, inputs: [x], attrs }) => [b.broadcast(b.reshape(ct, keepShape(x, attrs.axes)), x.type.shape)],
    wgsl: { kind: 'kernel', emitter: 'reduce' },
    testCase: (g) => reduceCase(g),
  },
  max: {
    arity: 1,
    infer: reduceInfer('max'),
    ref: reduceRef(-Infinity, Math.max),
    vjp: ({ b, ct, out, inputs: [x], attrs }) => {
      // Ties share the cotangent evenly, as torch.amax does.
      const keep = keepShape(x, attrs.axes);
      const mask = b.eq(x, b.reshape(out, keep));
      const count = b.sum(mask, attrs.axes, true);
      return [b.mul(mask, b.div(b.reshape(ct, keep), count))];
    },
    wgsl: { kind: 'kernel', emitter: 'reduce' },
    testCase: (g) => reduceCase(g),
  },
  reshape: {
    arity: 1,
    infer: ([x], { shape }) => {
      if (numel(shape) !== numel(x.shape) || shape.some((d) => !Number.isInteger(d) || d < 1)) {
        throw new ShapeProblem(
          `cannot reshape [${x.shape.join(',')}] (${numel(x.shape)} elements) to [${shape.join(',')}] (${numel(shape)} elements)`,
          'the element counts must match',
        );
      }
      return { dtype: x.dtype, shape };
    },
    ref: ([x]) => x.data.slice(),
    vjp: ({ b, ct, inputs: [x] }) => [b.reshape(ct, x.type.shape)],
    wgsl: { kind: 'view' },
    testCase: (g) => {
      const s = randShape(g, 1, 3);
      const n = numel(s);
      const t = g.bool() ? [n] : [1, ...s.slice().reverse()];
      return { inputs: [{ type: f32(s), domain: REAL }], attrs: { shape: numel(t) === n ? t : [n] } };
    },
  },
  transpose: {
    arity: 1,
    infer: ([x], { perm }) => {
      const r = x.shape.length;
      if (perm.length !== r || [...perm].sort((p, q) => p - q).some((p, i) => p !== i)) {
        throw new ShapeProblem(`[${perm.join(',')}] is not a permutation of the ${r} axes of [${x.shape.join(',')}]`);
      }
      return { dtype: x.dtype, shape: perm.map((p) => x.shape[p]) };
    },
    ref: ([x], { perm }, out) => {
      const xs = strides(x.shape);
      const r = new Float64Array(numel(out.shape));
      forEachIndex(out.shape, (idx, flat) => {
        let src = 0;
        for (let d = 0; d < perm.length; d++) src += idx[d] * xs[perm[d]];
        r[flat] = x.data[src];
      });
      return r;
    },
    vjp: ({ b, ct, attrs: { perm } }) => [b.transpose(ct, invertPerm(perm))],
    wgsl: { kind: 'kernel', emitter: 'permute' },
    testCase: (g) => {
      const s = randShape(g, 1, 4);
      const perm = s.map((_, i) => i);
      for (let i = perm.length - 1; i > 0; i--) {
        const j = g.int(0, i);
        [perm[i], perm[j]] = [perm[j], perm[i]];
      }
      return { inputs: [{ type: f32(s), domain: REAL }], attrs: { perm } };
    },
  },
  broadcast: {
    arity: 1,
    infer: ([x], { shape }) => {
      if (!broadcastsTo(x.shape, shape)) {
        throw new ShapeProblem(`[${x.shape.join(',')}] does not broadcast to [${shape.join(',')}]`);
      }
      return { dtype: x.dtype, shape };
    },
    ref: ([x], _a, out) => {
      const map = broadcastIndex(x.shape, out.shape);
      return new Float64Array(map.length).map((_, i) => x.data[map[i]]);
    },
    // The driver sums the output-shaped cotangent back to x's shape.
    vjp: ({ ct }) => [ct],
    wgsl: { kind: 'kernel', emitter: 'broadcast' },
    testCase: (g) => {
      const s = randShape(g, 1, 3);
      return { inputs: [{ type: f32(broadcastableTo(g, s)), domain: REAL }], attrs: { shape: s } };
    },
  },
  slice: {
    arity: 1,
    infer: ([x], { starts, ends }) => {
      const r = x.shape.length;
      if (starts.length !== r || ends.length !== r) {
        throw new ShapeProblem(`slice needs ${r} starts and ends for [${x.shape.join(',')}]`);
      }
      const shape = x.shape.map((d, i) => {
        if (!(0 <= starts[i] && starts[i] < ends[i] && ends[i] <= d)) {
          throw new ShapeProblem(`axis ${i}: [${starts[i]}, ${ends[i]}) is not a non-empty range inside [0, ${d})`);
        }
        return ends[i] - starts[i];
      });
      return { dtype: x.dtype, shape };
    },
    ref: ([x], { starts }, out) => {
      const xs = strides(x.shape);
      const r = new Float64Array(numel(out.shape));
      forEachIndex(out.shape, (idx, flat) => {
        let src = 0;
        for (let d = 0; d < idx.length; d++) src += (idx[d] + starts[d]) * xs[d];
        r[flat] = x.data[src];
      });
      return r;
    },
    vjp: ({ b, ct, inputs: [x], attrs: { starts, ends } }) => [
      b.pad(ct, starts, x.type.shape.map((d, i) => d - ends[i])),
    ],
    wgsl: { kind: 'kernel', emitter: 'slice' },
    testCase: (g) => {
      const s = randShape(g, 1, 3, 5);
      const starts = s.map((d) => g.int(0, d - 1));
      const ends = s.map((d, i) => g.int(starts[i] + 1, d));
      return { inputs: [{ type: f32(s), domain: REAL }], attrs: { starts, ends } };
    },
  },
  pad: {
    arity: 1,
    infer: ([x], { before, after }) => {
      const r = x.shape.length;
      if (before.length !== r || after.length !== r || [...before, ...after].some((p) => !Number.isInteger(p) || p < 0)) {
        throw new ShapeProblem(`pad needs ${r} non-negative amounts before and after`);
      }
      return { dtype: x.dtype, shape: x.shape.map((d, i) => d + before[i] + after[i]) };
    },
    ref: ([x], { before }, out) => {
      const os = strides(out.shape);
      const r = new Float64Array(numel(out.shape));
      forEachIndex(x.shape, (idx, flat) => {
        let dst = 0;
        for (let d = 0; d < idx.length; d++) dst += (idx[d] + before[d]) * os[d];
        r[dst] = x.data[flat];
      });
      return r;
    },
    vjp: ({ b, ct, inputs: [x], attrs: { before } }) => [
      b.slice(ct, before, x.type.shape.map((d, i) => before[i] + d)),
    ],
    wgsl: { kind: 'kernel', emitter: 'pad' },
    testCase: (g) => {
      const s = randShape(g, 1, 3);
      return {
        inputs: [{ type: f32(s), domain: REAL }],
        attrs: { before: s.map(() => g.int(0, 2)), after: s.map(() => g.int(0, 2)) },
      };
    },
  },
  concat: {
    arity: 'variadic',
    infer: (ins, { axis }) => {
      if (ins.length < 1) throw new ShapeProblem('concat needs at least one input');
      const first = ins[0];
      if (axis < 0 || axis >= first.shape.length) throw new ShapeProblem(`axis ${axis} is out of range for rank ${first.shape.length}`);
      let total = 0;
      ins.forEach((t, j) => {
        const ok = t.shape.length === first.shape.length && t.shape.every((d, i) => i === axis || d === first.shape[i]);
        if (!ok) {
          throw new ShapeProblem(
            `input #${j} [${t.shape.join(',')}] does not match input #0 [${first.shape.join(',')}] outside axis ${axis}`,
          );
        }
        total += t.shape[axis];
      });
      return { dtype: first.dtype, shape: first.shape.map((d, i) => (i === axis ? total : d)) };
    },
    ref: (ins, { axis }, out) => {
      const r = new Float64Array(numel(out.shape));
      const os = strides(out.shape);
      let offset = 0;
      for (const t of ins) {
        forEachIndex(t.shape, (idx, flat) => {
          let dst = 0;
          for (let d = 0; d < idx.length; d++) dst += (d === axis ? idx[d] + offset : idx[d]) * os[d];
          r[dst] = t.data[flat];
        });
        offset += t.shape[axis];
      }
      return r;
    },
    vjp: ({ b, ct, inputs, attrs: { axis }, wants }) => {
      let offset = 0;
      return inputs.map((x, j) => {
        const start = offset;
        offset += x.type.shape[axis];
        if (!wants[j]) return null;
        const starts = x.type.shape.map((_, i) => (i === axis ? start : 0));
        const ends = ct.type.shape.map((d, i) => (i === axis ? start + x.type.shape[axis] : d));
        return b.slice(ct, starts, ends);
      });
    },
    wgsl: { kind: 'kernel', emitter: 'concat' },
    testCase: (g) => {
      const s = randShape(g, 1, 3);
      const axis = g.int(0, s.length - 1);
      const n = g.int(1, 3);
      return {
        inputs: Array.from({ length: n }, () => ({
          type: f32(s.map((d, i) => (i === axis ? g.int(1, 3) : d))),
          domain: REAL,
        })),
        attrs: { axis },
      };
    },
  },
  gather: {
    arity: 2,
    infer: ([table, idx]) => {
      requireFloat(table, 'the table');
      if (idx.dtype !== 'i32') throw new ShapeProblem(`indices must be i32, got ${idx.dtype}`, 'declare the input with dtype i32');
      if (table.shape.length < 1) throw new ShapeProblem('the table must have at least one dimension');
      return { dtype: table.dtype, shape: [...idx.shape, ...table.shape.slice(1)] };
    },
    ref: ([table, idx]) => {
      const row = numel(table.shape.slice(1));
      const r = new Float64Array(idx.data.length * row);
      idx.data.forEach((k, i) => {
        if (k < 0 || k >= table.shape[0]) throw new RangeError(`gather: index ${k} outside [0, ${table.shape[0]})`);
        r.set(table.data.subarray(k * row, (k + 1) * row), i * row);
      });
      return r;
    },
    vjp: ({ b, ct, inputs: [table, idx] }) => [b.scatterAdd(idx, ct, table.type.shape[0]), null],
    wgsl: { kind: 'kernel', emitter: 'gather' },
    testCase: (g) => {
      const rows = g.int(1, 5);
      return {
        inputs: [
          { type: f32([rows, ...randShape(g, 0, 2)]), domain: REAL },
          { type: { dtype: 'i32', shape: randShape(g, 0, 2) }, domain: { kind: 'int', lo: 0, hi: rows - 1 } },
        ],
        attrs: {},
      };
    },
  },
  scatter_add: {
    arity: 2,
    infer: ([idx, src], { rows }) => {
      if (idx.dtype !== 'i32') throw new ShapeProblem(`indices must be i32, got ${idx.dtype}`);
      requireFloat(src, 'the source');
      const lead = src.shape.slice(0, idx.shape.length);
      if (!sameShape(lead, idx.shape)) {
        throw new ShapeProblem(`source [${src.shape.join(',')}] must start with the index shape [${idx.shape.join(',')}]`);
      }
      return { dtype: src.dtype, shape: [rows, ...src.shape.slice(idx.shape.length)] };
    },
    ref: ([idx, src], { rows }) => {
      const row = numel(src.shape.slice(idx.shape.length));
      const r = new Float64Array(rows * row);
      idx.data.forEach((k, i) => {
        if (k < 0 || k >= rows) throw new RangeError(`scatter_add: index ${k} outside [0, ${rows})`);
        for (let j = 0; j < row; j++) r[k * row + j] += src.data[i * row + j];
      });
      return r;
    },
    vjp: ({ b, ct, inputs: [idx] }) => [null, b.gather(ct, idx)],
    wgsl: { kind: 'kernel', emitter: 'scatter_add' },
    testCase: (g) => {
      const rows = g.int(1, 5);
      const is = randShape(g, 0, 2);
      return {
        inputs: [
          { type: { dtype: 'i32', shape: is }, domain: { kind: 'int', lo: 0, hi: rows - 1 } },
          { type: f32([...is, ...randShape(g, 0, 2)]), domain: REAL },
        ],
        attrs: { rows },
      };
    },
  },
  one_hot: {
    arity: 1,
    infer: ([idx], { classes }) => {
      if (idx.dtype !== 'i32') throw new ShapeProblem(`labels must be i32, got ${idx.dtype}`, 'declare the labels input with dtype i32');
      return { dtype: 'f32', shape: [...idx.shape, classes] };
    },
    ref: ([idx], { classes }) => {
      const r = new Float64Array(idx.data.length * classes);
      idx.data.forEach((k, i) => {
        if (k < 0 || k >= classes) throw new RangeError(`one_hot: label ${k} outside [0, ${classes})`);
        r[i * classes + k] = 1;
      });
      return r;
    },
    vjp: 'nondiff',
    wgsl: { kind: 'kernel', emitter: 'one_hot' },
    testCase: (g) => {
      const classes = g.int(1, 5);
      return {
        inputs: [{ type: { dtype: 'i32', shape: randShape(g, 0, 2) }, domain: { kind: 'int', lo: 0, hi: classes - 1 } }],
        attrs: { classes },
      };
    },
  },
  matmul: {
    arity: 2,
    infer: ([a, b], t) => {
      requireFloat(a, 'the left operand');
      requireFloat(b, 'the right operand');
      if (a.shape.length < 2 || b.shape.length < 2) {
        throw new ShapeProblem(`both operands need rank ≥ 2, got [${a.shape.join(',')}] and [${b.shape.join(',')}]`, 'reshape vectors to [1,n] or [n,1]');
      }
      const { m, ka, kb, n } = matmulDims(a, b, t);
      if (ka !== kb) {
        throw new ShapeProblem(
          `inner dimensions differ: ${ka} (a${t.transA ? 'ᵀ' : ''}) vs ${kb} (b${t.transB ? 'ᵀ' : ''})`,
          'the left operand\'s feature size must equal the right operand\'s input size',
        );
      }
      const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
      return { dtype: a.dtype, shape: [...batch, m, n] };
    },
    ref: ([a, b], t, out) => {
      const { m, ka: k, n } = matmulDims({ dtype: 'f32', shape: a.shape }, { dtype: 'f32', shape: b.shape }, t);
      const batch = out.shape.slice(0, -2);
      const ia = broadcastIndex(a.shape.slice(0, -2), batch);
      const ib = broadcastIndex(b.shape.slice(0, -2), batch);
      const r = new Float64Array(numel(out.shape));
      for (let bi = 0; bi < ia.length; bi++) {
        const ao = ia[bi] * m * k;
        const bo = ib[bi] * k * n;
        const ro = bi * m * n;
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < n; j++) {
            let s = 0;
            for (let p = 0; p < k; p++) {
              const av = t.transA ? a.data[ao + p * m + i] : a.data[ao + i * k + p];
              const bv = t.transB ? b.data[bo + j * k + p] : b.data[bo + p * n + j];
              s += av * bv;
            }
            r[ro + i * n + j] = s;
          }
        }
      }
      return r;
    },
    vjp: ({ b, ct, inputs: [x, w], attrs: { transA, transB }, wants }) => {
      let dx: Value | null = null;
      let dw: Value | null = null;
      if (wants[0]) {
        // a = [.., m, k]: da = ct·bᵀ; transA stores aᵀ, so its cotangent is (ct·bᵀ)ᵀ = b·ctᵀ.
        dx = transA
          ? transB
            ? b.matmul(w, ct, { transA: true, transB: true })
            : b.matmul(w, ct, { transB: true })
          : transB
            ? b.matmul(ct, w)
            : b.matmul(ct, w, { transB: true });
      }
      if (wants[1]) {
        // A shared 2-D weight against a batched input (a linear layer on [b, s, d]): fold the batch
        // into the rows so dW is one matmul, not a batched product summed afterwards.
        let xx = x;
        let cc = ct;
        if (w.type.shape.length === 2 && x.type.shape.length > 2 && !transA) {
          const k = x.type.shape[x.type.shape.length - 1];
          const n = ct.type.shape[ct.type.shape.length - 1];
          xx = b.reshape(x, [numel(x.type.shape) / k, k]);
          cc = b.reshape(ct, [numel(ct.type.shape) / n, n]);
        }
        dw = transB
          ? transA
            ? b.matmul(cc, xx, { transA: true, transB: true })
            : b.matmul(cc, xx, { transA: true })
          : transA
            ? b.matmul(xx, cc)
            : b.matmul(xx, cc, { transA: true });
      }
      return [dx, dw];
    },
    wgsl: { kind: 'kernel', emitter: 'matmul' },
    testCase: (g) => {
      const m = g.int(1, 4);
      const k = g.int(1, 4);
      const n = g.int(1, 4);
      const transA = g.bool();
      const transB = g.bool();
      const batch = randShape(g, 0, 2, 3);
      const shapeA = [...batch, ...(transA ? [k, m] : [m, k])];
      const bBatch = g.bool() ? batch : broadcastableTo(g, batch);
      const shapeB = [...bBatch, ...(transB ? [n, k] : [k, n])];
      return {
        inputs: [
          { type: f32(shapeA), domain: REAL },
          { type: f32(shapeB), domain: REAL },
        ],
        attrs: { transA, transB },
      };
    },
  },
  ...LOSS_AND_NORM_OPS,
  attention: {
    arity: 'variadic',
    infer: (ins, a) => {
      const d = attentionDims(ins, a, 0);
      return { dtype: 'f32', shape: [d.b, d.h, d.sq, d.dv + L_COLUMNS] };
    },
    ref: (ins, a) => attentionRef(ins, a),
    vjp: ({ b, ct, inputs, out, attrs, wants }) => {
      // Only q, k, v, mask, the packed output (O and L) and its cotangent are read: the
      // probabilities are recomputed tile by tile from L (FlashAttention-2's backward).
      const res: (Value | null)[] = inputs.map(() => null);
      if (!wants[0] && !wants[1] && !wants[2]) return res;
      const delta = b.emit('attention_delta', [out, ct], {}, 'delta');
      const args = [...inputs, out, ct, delta];
      if (wants[0]) res[0] = b.emit('attention_dq', args, attrs, 'dq');
      if (wants[1] || wants[2]) {
        const [bs, hkv, sk, dk] = inputs[1].type.shape;
        const dv = inputs[2].type.shape[3];
        const dkv = b.emit('attention_dkv', args, attrs, 'dkv');
        if (wants[1]) res[1] = b.slice(dkv, [0, 0, 0, 0], [bs, hkv, sk, dk]);
        if (wants[2]) res[2] = b.slice(dkv, [0, 0, 0, dk], [bs, hkv, sk, dk + dv]);
      }
      return res;
    },
    wgsl: { kind: 'kernel', emitter: 'attention' },
    testCase: (g) => {
      const c = attentionCase(g);
      return { inputs: c.qkvm, attrs: c.attrs };
    },
  },
  attention_delta: {
    arity: 2,
    infer: ([packed, ct]) => {
      if (packed.dtype !== 'f32' || ct.dtype !== 'f32') throw new ShapeProblem('both inputs must be f32');
      if (packed.shape.length < 1 || packed.shape[packed.shape.length - 1] < 1 + L_COLUMNS) {
        throw new ShapeProblem(`the packed output [${packed.shape.join(',')}] needs a last axis of at least ${1 + L_COLUMNS} (dv + ${L_COLUMNS})`);
      }
      if (!sameShape(packed.shape, ct.shape)) throw new ShapeProblem(`the cotangent [${ct.shape.join(',')}] must match the packed output [${packed.shape.join(',')}]`);
      return { dtype: 'f32', shape: packed.shape.slice(0, -1) };
    },
    ref: (ins) => attentionDeltaRef(ins),
    vjp: 'backward-only',
    wgsl: { kind: 'kernel', emitter: 'attention_delta' },
    testCase: (g) => {
      const c = attentionCase(g);
      return { inputs: [c.packed, c.packed], attrs: {} };
    },
  },
  attention_dq: {
    arity: 'variadic',
    infer: (ins, a) => {
      attentionDims(ins, a, 3);
      return ins[0];
    },
    ref: (ins, a) => attentionGradRef(ins, a, 'dq'),
    vjp: 'backward-only',
    wgsl: { kind: 'kernel', emitter: 'attention_dq' },
    testCase: attentionGradCase,
  },
  attention_dkv: {
    arity: 'variadic',
    infer: (ins, a) => {
      const d = attentionDims(ins, a, 3);
      return { dtype: 'f32', shape: [d.b, d.hkv, d.sk, d.dk + d.dv] };
    },
    ref: (ins, a) => attentionGradRef(ins, a, 'dkv'),
    vjp: 'backward-only',
    wgsl: { kind: 'kernel', emitter: 'attention_dkv' },
    testCase: attentionGradCase,
  },
};

/** attention_dq's and attention_dkv's operands: q, k, v (and the mask), packed, its cotangent, delta. */
function attentionGradCase(g: CaseGen): OpCase<AttentionAttrs> {
  const c = attentionCase(g);
  return { inputs: [...c.qkvm, c.packed, c.packed, c.delta], attrs: c.attrs };
}

/** Head dims the attention cases draw from (the kernels size their tiles from these). */
const HEAD_DIMS = [16, 24, 32, 64, 128];

/**
 * An attention case: grouped-query ratios 1, 2 and 4, head dims 16…128, causal or not, a key mask
 * or not, and few rows (float64 finite differences run the reference twice per element).
 */
function attentionCase(g: CaseGen) {
  const b = g.int(1, 2);
  const hkv = g.int(1, 2);
  const h = hkv * [1, 2, 4][g.int(0, 2)];
  const causal = g.bool();
  const masked = g.bool();
  const sq = g.int(1, b * h > 4 ? 3 : 5);
  const sk = causal ? sq : g.int(1, b * h > 4 ? 3 : 5);
  const dk = HEAD_DIMS[g.int(0, HEAD_DIMS.length - 1)];
  const dv = HEAD_DIMS[g.int(0, HEAD_DIMS.length - 1)];
  const attrs: AttentionAttrs = { causal, scale: 1 / Math.sqrt(dk), masked };
  const qkvm = [
    { type: f32([b, h, sq, dk]), domain: REAL },
    { type: f32([b, hkv, sk, dk]), domain: REAL },
    { type: f32([b, hkv, sk, dv]), domain: REAL },
    ...(masked ? [{ type: f32([b, sk]), domain: { kind: 'mask', row: sk } as Domain }] : []),
  ];
  return { attrs, qkvm, packed: { type: f32([b, h, sq, dv + L_COLUMNS]), domain: REAL }, delta: { type: f32([b, h, sq]), domain: REAL } };
}

function reduceCase(g: CaseGen): OpCase<{ axes: readonly number[]; keepdims: boolean }> {
  const s = randShape(g, 1, 3);
  const axes = s.map((_, i) => i).filter(() => g.bool());
  return { inputs: [{ type: f32(s), domain: REAL }], attrs: { axes: axes.length ? axes : [s.length - 1], keepdims: g.bool() } };
}

export const OP_NAMES = Object.keys(OPS) as OpName[];

export function isOpName(s: string): s is OpName {
  return Object.prototype.hasOwnProperty.call(OPS, s);
}

export function opDef(name: string): OpDef<any> {
  if (!isOpName(name)) throw new Error(`unknown op '${name}'`);
  return OPS[name] as OpDef<any>;
}
