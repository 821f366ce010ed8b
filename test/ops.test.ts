// The op registry, op by op: hand-checked cases for every shape rule and float64 reference, the
// shape errors users see, and properties that tie each op's test-case generator to its own rules.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Builder } from '../src/ir/builder.ts';
import { ShapeError } from '../src/ir/errors.ts';
import { OP_NAMES, OPS, type Domain, type OpAttrs, type OpDef, type OpName } from '../src/ir/ops.ts';
import { invertPerm, type Tensor } from '../src/ir/shape.ts';
import { numel, type DType, type TensorType } from '../src/ir/types.ts';
import { verify } from '../src/ir/verify.ts';
import { runReference } from '../src/runtime/reference.ts';
import { caseGen, dot, property, sample } from './helpers.ts';

interface HandInput {
  readonly shape: readonly number[];
  readonly data: readonly number[];
  readonly dtype?: DType;
}

interface HandCase<A> {
  readonly what: string;
  readonly inputs: readonly HandInput[];
  readonly attrs: A;
  readonly shape: readonly number[];
  readonly dtype?: DType;
  /** Worked out by hand (or, for transcendental functions, from the closed form noted). */
  readonly expected: readonly number[];
}

type HandTable = { readonly [K in OpName]: readonly HandCase<OpAttrs[K]>[] };

const f = (shape: readonly number[], data: readonly number[]): HandInput => ({ shape, data });
const i32 = (shape: readonly number[], data: readonly number[]): HandInput => ({ shape, data, dtype: 'i32' });
const NONE = {} as Record<string, never>;
const ATT = { causal: false, scale: 1, masked: false };
const GELU_1 = 0.8411919906082768; // 0.5·(1 + tanh(√(2/π)·1.044715))

// Keyed by OpName, so a new op without a row does not compile: every op has a hand-checked case.
const HAND: HandTable = {
  neg: [{ what: 'signs flip', inputs: [f([3], [1, -2, 0.5])], attrs: NONE, shape: [3], expected: [-1, 2, -0.5] }],
  exp: [{ what: 'e^0, e^1, e^-1', inputs: [f([3], [0, 1, -1])], attrs: NONE, shape: [3], expected: [1, Math.E, 1 / Math.E] }],
  log: [{ what: 'ln 1, ln e, ln 1/4', inputs: [f([3], [1, Math.E, 0.25])], attrs: NONE, shape: [3], expected: [0, 1, -2 * Math.LN2] }],
  sqrt: [{ what: 'perfect squares', inputs: [f([2, 2], [4, 9, 0.25, 0])], attrs: NONE, shape: [2, 2], expected: [2, 3, 0.5, 0] }],
  rsqrt: [{ what: '1/√4, 1/√0.25', inputs: [f([2], [4, 0.25])], attrs: NONE, shape: [2], expected: [0.5, 2] }],
  tanh: [
    {
      what: 'odd, saturating',
      inputs: [f([4], [0, 0.5, -0.5, 30])],
      attrs: NONE,
      shape: [4],
      expected: [0, 0.46211715726000974, -0.46211715726000974, 1],
    },
  ],
  sigmoid: [
    {
      what: 'σ(0) = ½, σ(±2), no NaN far out',
      inputs: [f([5], [0, 2, -2, 1000, -1000])],
      attrs: NONE,
      shape: [5],
      expected: [0.5, 0.8807970779778823, 0.11920292202211755, 1, 0],
    },
  ],
  relu: [{ what: 'clamps negatives', inputs: [f([4], [-1, 0, 2, -0.1])], attrs: NONE, shape: [4], expected: [0, 0, 2, 0] }],
  gelu: [
    {
      // gelu(-x) = gelu(x) - x for the tanh form
      what: 'tanh approximation at 0, ±1, 3',
      inputs: [f([4], [0, 1, -1, 3])],
      attrs: NONE,
      shape: [4],
      expected: [0, GELU_1, GELU_1 - 1, 2.996362607918227],
    },
  ],
  gelu_grad: [
    {
      // gelu'(x) by high-precision numerical differentiation of the tanh form (mpmath, 40 digits)
      what: "ct · gelu'(x) at 0, ±1, 3",
      inputs: [f([4], [0, 1, -1, 3]), f([4], [2, 1, 1, -1])],
      attrs: NONE,
      shape: [4],
      expected: [1, 1.0829640838457826, -0.082964083845782555, -1.0115841666309697],
    },
  ],
  gelu_erf: [
    {
      // x·Φ(x) with Φ from Python's math.erf
      what: 'exact GELU at 0, ±1, 3',
      inputs: [f([4], [0, 1, -1, 3])],
      attrs: NONE,
      shape: [4],
      expected: [0, 0.8413447460685429, -0.15865525393145707, 2.99595030590511],
    },
  ],
  gelu_erf_grad: [
    {
      // ct · (Φ(x) + x·φ(x)), from Python's math.erf and math.exp
      what: "ct · gelu_erf'(x) at 0, ±1, 3",
      inputs: [f([4], [0, 1, -1, 3]), f([4], [2, 1, 1, -1])],
      attrs: NONE,
      shape: [4],
      expected: [1, 1.0833154705876864, -0.08331547058768629, -1.011945647204184],
    },
  ],
  silu: [
    {
      what: 'x·σ(x)',
      inputs: [f([3], [0, 1, -1])],
      attrs: NONE,
      shape: [3],
      expected: [0, 0.7310585786300049, -0.2689414213699951],
    },
  ],
  silu_grad: [
    {
      what: 'ct·silu\'(x): ½ct at 0, σ(1)(2 − σ(1))·ct at 1',
      inputs: [f([2], [0, 1]), f([2], [4, -2])],
      attrs: NONE,
      shape: [2],
      expected: [2, -2 * 0.7310585786300049 * (2 - 0.7310585786300049)],
    },
  ],
  swiglu: [
    {
      what: 'silu(gate)·up, up broadcast along rows',
      inputs: [f([2, 2], [0, 1, -1, 2]), f([2], [3, -2])],
      attrs: NONE,
      shape: [2, 2],
      expected: [0, -1.4621171572600098, -0.8068242641099853, -3.5231883119115293],
    },
  ],
  step: [{ what: 'x > 0 (strict)', inputs: [f([4], [-0.5, 0, 0.5, 3])], attrs: NONE, shape: [4], expected: [0, 0, 1, 1] }],
  stop_gradient: [{ what: 'identity', inputs: [f([2, 2], [3, -1, 0, 7])], attrs: NONE, shape: [2, 2], expected: [3, -1, 0, 7] }],
  powc: [
    { what: 'square', inputs: [f([2], [3, -2])], attrs: { p: 2 }, shape: [2], expected: [9, 4] },
    { what: 'cube', inputs: [f([2], [2, -1])], attrs: { p: 3 }, shape: [2], expected: [8, -1] },
    { what: 'reciprocal', inputs: [f([2], [4, 0.5])], attrs: { p: -1 }, shape: [2], expected: [0.25, 2] },
    { what: 'square root', inputs: [f([2], [9, 0.25])], attrs: { p: 0.5 }, shape: [2], expected: [3, 0.5] },
    { what: 'p = 1.5', inputs: [f([2], [4, 1])], attrs: { p: 1.5 }, shape: [2], expected: [8, 1] },
  ],
  add: [
    {
      what: '[2,1] + [3] broadcasts to [2,3]',
      inputs: [f([2, 1], [1, 2]), f([3], [10, 20, 30])],
      attrs: NONE,
      shape: [2, 3],
      expected: [11, 21, 31, 12, 22, 32],
    },
  ],
  sub: [
    { what: 'minus a scalar', inputs: [f([2, 2], [1, 2, 3, 4]), f([], [1])], attrs: NONE, shape: [2, 2], expected: [0, 1, 2, 3] },
    { what: 'scalar minus [1,2] (order kept)', inputs: [f([], [10]), f([1, 2], [1, 4])], attrs: NONE, shape: [1, 2], expected: [9, 6] },
  ],
  mul: [
    {
      what: '[1,3] · [2,1] outer product',
      inputs: [f([1, 3], [1, 2, 3]), f([2, 1], [10, -1])],
      attrs: NONE,
      shape: [2, 3],
      expected: [10, 20, 30, -1, -2, -3],
    },
  ],
  div: [
    {
      what: 'rows divided by [2] (order kept)',
      inputs: [f([2, 2], [2, 4, 6, 8]), f([2], [2, 4])],
      attrs: NONE,
      shape: [2, 2],
      expected: [1, 1, 3, 2],
    },
  ],
  eq: [
    { what: 'elementwise', inputs: [f([3], [1, 2, 3]), f([3], [1, 5, 3])], attrs: NONE, shape: [3], expected: [1, 0, 1] },
    { what: 'broadcast [2,1] vs [2]', inputs: [f([2, 1], [1, 2]), f([2], [1, 2])], attrs: NONE, shape: [2, 2], expected: [1, 0, 0, 1] },
  ],
  where: [
    {
      what: 'cond [2,1], a [2,3], b scalar',
      inputs: [f([2, 1], [1, 0]), f([2, 3], [1, 2, 3, 4, 5, 6]), f([], [-1])],
      attrs: NONE,
      shape: [2, 3],
      expected: [1, 2, 3, -1, -1, -1],
    },
    {
      what: 'any non-zero condition is true; a broadcasts',
      inputs: [f([4], [0.5, -2, 0, 1]), f([], [7]), f([4], [1, 2, 3, 4])],
      attrs: NONE,
      shape: [4],
      expected: [7, 7, 3, 7],
    },
  ],
  count_nonfinite: [
    {
      what: '±Inf and NaN count; the largest finite, subnormals and −0 do not',
      inputs: [f([2, 4], [Infinity, 1, NaN, -Infinity, 3.4028234663852886e38, 1e-45, -0, -2])],
      attrs: NONE,
      shape: [],
      expected: [3],
    },
    { what: 'all finite', inputs: [f([3], [0, -1e30, 5])], attrs: NONE, shape: [], expected: [0] },
  ],
  fill: [
    { what: 'f32 [2,2]', inputs: [], attrs: { value: 2.5, shape: [2, 2], dtype: 'f32' }, shape: [2, 2], expected: [2.5, 2.5, 2.5, 2.5] },
    { what: 'scalar', inputs: [], attrs: { value: -1, shape: [], dtype: 'f32' }, shape: [], expected: [-1] },
    { what: 'i32', inputs: [], attrs: { value: 3, shape: [2], dtype: 'i32' }, shape: [2], dtype: 'i32', expected: [3, 3] },
  ],
  sum: [
    { what: 'axis 0', inputs: [f([2, 3], [1, 2, 3, 4, 5, 6])], attrs: { axes: [0], keepdims: false }, shape: [3], expected: [5, 7, 9] },
    { what: 'axis 1 keepdims', inputs: [f([2, 3], [1, 2, 3, 4, 5, 6])], attrs: { axes: [1], keepdims: true }, shape: [2, 1], expected: [6, 15] },
    { what: 'all axes', inputs: [f([2, 3], [1, 2, 3, 4, 5, 6])], attrs: { axes: [0, 1], keepdims: false }, shape: [], expected: [21] },
    {
      // x[i,j,k] = 4i+2j+k: j=0 → 0+1+4+5, j=1 → 2+3+6+7
      what: 'outer axes 0 and 2 of [2,2,2]',
      inputs: [f([2, 2, 2], [0, 1, 2, 3, 4, 5, 6, 7])],
      attrs: { axes: [0, 2], keepdims: false },
      shape: [2],
      expected: [10, 18],
    },
    {
      what: 'axes 0 and 2 keepdims',
      inputs: [f([2, 2, 2], [0, 1, 2, 3, 4, 5, 6, 7])],
      attrs: { axes: [0, 2], keepdims: true },
      shape: [1, 2, 1],
      expected: [10, 18],
    },
  ],
  max: [
    { what: 'axis 1', inputs: [f([2, 3], [1, 5, 3, 4, 2, 6])], attrs: { axes: [1], keepdims: false }, shape: [2], expected: [5, 6] },
    { what: 'axis 0 keepdims', inputs: [f([2, 3], [1, 5, 3, 4, 2, 6])], attrs: { axes: [0], keepdims: true }, shape: [1, 3], expected: [4, 5, 6] },
    { what: 'all negative (init is -∞, not 0)', inputs: [f([3], [-3, -1, -2])], attrs: { axes: [0], keepdims: false }, shape: [], expected: [-1] },
  ],
  reshape: [
    { what: '[2,3] → [3,2] keeps row-major order', inputs: [f([2, 3], [1, 2, 3, 4, 5, 6])], attrs: { shape: [3, 2] }, shape: [3, 2], expected: [1, 2, 3, 4, 5, 6] },
    { what: '[2,2] → [4,1,1]', inputs: [f([2, 2], [1, 2, 3, 4])], attrs: { shape: [4, 1, 1] }, shape: [4, 1, 1], expected: [1, 2, 3, 4] },
  ],
  transpose: [
    { what: '2-D', inputs: [f([2, 3], [1, 2, 3, 4, 5, 6])], attrs: { perm: [1, 0] }, shape: [3, 2], expected: [1, 4, 2, 5, 3, 6] },
    {
      // x[0,j,k] = 3j+k; out[k,0,j] = x[0,j,k]
      what: '[1,2,3] with perm [2,0,1]',
      inputs: [f([1, 2, 3], [0, 1, 2, 3, 4, 5])],
      attrs: { perm: [2, 0, 1] },
      shape: [3, 1, 2],
      expected: [0, 3, 1, 4, 2, 5],
    },
    {
      // x[i,j,k] = 4i+2j+k; out[j,k,i] = x[i,j,k]  (perm [1,2,0], whose inverse is [2,0,1])
      what: '[2,2,2] with perm [1,2,0]',
      inputs: [f([2, 2, 2], [0, 1, 2, 3, 4, 5, 6, 7])],
      attrs: { perm: [1, 2, 0] },
      shape: [2, 2, 2],
      expected: [0, 4, 1, 5, 2, 6, 3, 7],
    },
  ],
  broadcast: [
    { what: '[3] → [2,3]', inputs: [f([3], [1, 2, 3])], attrs: { shape: [2, 3] }, shape: [2, 3], expected: [1, 2, 3, 1, 2, 3] },
    { what: '[2,1] → [2,3]', inputs: [f([2, 1], [1, 2])], attrs: { shape: [2, 3] }, shape: [2, 3], expected: [1, 1, 1, 2, 2, 2] },
    { what: 'scalar → [2]', inputs: [f([], [4])], attrs: { shape: [2] }, shape: [2], expected: [4, 4] },
  ],
  slice: [
    {
      what: 'the middle 2×2 of [3,4]',
      inputs: [f([3, 4], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])],
      attrs: { starts: [1, 1], ends: [3, 3] },
      shape: [2, 2],
      expected: [5, 6, 9, 10],
    },
    { what: 'last element', inputs: [f([4], [1, 2, 3, 4])], attrs: { starts: [3], ends: [4] }, shape: [1], expected: [4] },
  ],
  pad: [
    { what: '1-D', inputs: [f([2], [1, 2])], attrs: { before: [1], after: [2] }, shape: [5], expected: [0, 1, 2, 0, 0] },
    { what: '2-D', inputs: [f([1, 2], [1, 2])], attrs: { before: [1, 0], after: [0, 1] }, shape: [2, 3], expected: [0, 0, 0, 1, 2, 0] },
  ],
  concat: [
    {
      what: 'axis 1, widths 1 and 2',
      inputs: [f([2, 1], [1, 2]), f([2, 2], [3, 4, 5, 6])],
      attrs: { axis: 1 },
      shape: [2, 3],
      expected: [1, 3, 4, 2, 5, 6],
    },
    {
      what: 'axis 0, three inputs',
      inputs: [f([1, 2], [1, 2]), f([2, 2], [3, 4, 5, 6]), f([1, 2], [7, 8])],
      attrs: { axis: 0 },
      shape: [4, 2],
      expected: [1, 2, 3, 4, 5, 6, 7, 8],
    },
  ],
  gather: [
    {
      what: 'rows of [3,2] at [[2,0],[2,2]] (repeats)',
      inputs: [f([3, 2], [1, 2, 3, 4, 5, 6]), i32([2, 2], [2, 0, 2, 2])],
      attrs: NONE,
      shape: [2, 2, 2],
      expected: [5, 6, 1, 2, 5, 6, 5, 6],
    },
    { what: '1-D table', inputs: [f([3], [10, 20, 30]), i32([4], [1, 1, 0, 2])], attrs: NONE, shape: [4], expected: [20, 20, 10, 30] },
    { what: 'scalar index', inputs: [f([3, 2], [1, 2, 3, 4, 5, 6]), i32([], [1])], attrs: NONE, shape: [2], expected: [3, 4] },
  ],
  scatter_add: [
    {
      // row 0 gets src rows 0, 2, 3; row 1 nothing; row 2 src row 1
      what: 'duplicates accumulate, untouched rows stay 0',
      inputs: [i32([4], [0, 2, 0, 0]), f([4, 2], [1, 2, 3, 4, 5, 6, 7, 8])],
      attrs: { rows: 3 },
      shape: [3, 2],
      expected: [13, 16, 0, 0, 3, 4],
    },
    {
      what: '2-D indices',
      inputs: [i32([2, 2], [1, 1, 0, 1]), f([2, 2], [1, 2, 3, 4])],
      attrs: { rows: 2 },
      shape: [2],
      expected: [3, 7],
    },
  ],
  one_hot: [
    {
      what: 'labels [2,0,2], 3 classes',
      inputs: [i32([3], [2, 0, 2])],
      attrs: { classes: 3 },
      shape: [3, 3],
      expected: [0, 0, 1, 1, 0, 0, 0, 0, 1],
    },
    { what: 'scalar label', inputs: [i32([], [1])], attrs: { classes: 2 }, shape: [2], expected: [0, 1] },
  ],
  matmul: [
    // A = [[1,2],[3,4]], B = [[5,6],[7,8]]
    { what: 'A·B', inputs: [f([2, 2], [1, 2, 3, 4]), f([2, 2], [5, 6, 7, 8])], attrs: { transA: false, transB: false }, shape: [2, 2], expected: [19, 22, 43, 50] },
    { what: 'Aᵀ·B', inputs: [f([2, 2], [1, 2, 3, 4]), f([2, 2], [5, 6, 7, 8])], attrs: { transA: true, transB: false }, shape: [2, 2], expected: [26, 30, 38, 44] },
    { what: 'A·Bᵀ', inputs: [f([2, 2], [1, 2, 3, 4]), f([2, 2], [5, 6, 7, 8])], attrs: { transA: false, transB: true }, shape: [2, 2], expected: [17, 23, 39, 53] },
    { what: 'Aᵀ·Bᵀ', inputs: [f([2, 2], [1, 2, 3, 4]), f([2, 2], [5, 6, 7, 8])], attrs: { transA: true, transB: true }, shape: [2, 2], expected: [23, 31, 34, 46] },
    // non-square, so a wrong stride cannot hide: [[1,2,3],[4,5,6]]·[1,0,-1]ᵀ = [-2,-2]
    { what: '[2,3]·[3,1]', inputs: [f([2, 3], [1, 2, 3, 4, 5, 6]), f([3, 1], [1, 0, -1])], attrs: { transA: false, transB: false }, shape: [2, 1], expected: [-2, -2] },
    { what: 'transA: a stored [3,2]', inputs: [f([3, 2], [1, 4, 2, 5, 3, 6]), f([3, 1], [1, 0, -1])], attrs: { transA: true, transB: false }, shape: [2, 1], expected: [-2, -2] },
    { what: 'transB: b stored [1,3]', inputs: [f([2, 3], [1, 2, 3, 4, 5, 6]), f([1, 3], [1, 0, -1])], attrs: { transA: false, transB: true }, shape: [2, 1], expected: [-2, -2] },
    {
      what: 'transA and transB, non-square: a stored [3,1], b stored [2,3]',
      inputs: [f([3, 1], [1, 2, 3]), f([2, 3], [1, 0, 0, 1, 1, 1])],
      attrs: { transA: true, transB: true },
      shape: [1, 2],
      expected: [1, 6],
    },
    {
      what: 'batched a [2,1,2] against a shared 2-D b',
      inputs: [f([2, 1, 2], [1, 2, 3, 4]), f([2, 2], [1, 0, 0, 2])],
      attrs: { transA: false, transB: false },
      shape: [2, 1, 2],
      expected: [1, 4, 3, 8],
    },
    {
      // a_i = [1,2], [3,4]; b_j = [1,1]ᵀ, [1,-1]ᵀ, [0,1]ᵀ; out[i,j] = a_i·b_j
      what: 'batch dims [2,1] and [3] broadcast to [2,3]',
      inputs: [f([2, 1, 1, 2], [1, 2, 3, 4]), f([3, 2, 1], [1, 1, 1, -1, 0, 1])],
      attrs: { transA: false, transB: false },
      shape: [2, 3, 1, 1],
      expected: [3, -1, 2, 7, -1, 4],
    },
  ],
  // Issue 14: losses and norms as primitives.
  cross_entropy: [
    {
      what: 'logits [0,0] label 1: L = loss = ln 2; [ln 3, 0] labelled −100: (0, ln 4, 0)',
      inputs: [f([2, 2], [0, 0, Math.log(3), 0]), i32([2], [1, -100])],
      attrs: NONE,
      shape: [2, 3],
      expected: [Math.LN2, Math.LN2, 1, 0, 2 * Math.LN2, 0],
    },
    {
      what: 'labels at 0 and C−1: L − logit',
      inputs: [f([2, 3], [1, 2, 3, 1, 2, 3]), i32([2], [0, 2])],
      attrs: NONE,
      shape: [2, 3],
      // L = ln(e + e² + e³)
      expected: [Math.log(Math.E + Math.E ** 2 + Math.E ** 3) - 1, Math.log(Math.E + Math.E ** 2 + Math.E ** 3), 1, Math.log(Math.E + Math.E ** 2 + Math.E ** 3) - 3, Math.log(Math.E + Math.E ** 2 + Math.E ** 3), 1],
    },
  ],
  linear_cross_entropy: [
    {
      what: 'h = I, so the logits are w\'s rows: [0,0] label 1 → (ln 2, ln 2, 1); [ln 3, 0] labelled −100 → (0, ln 4, 0)',
      inputs: [f([2, 2], [1, 0, 0, 1]), f([2, 2], [0, 0, Math.log(3), 0]), i32([2], [1, -100])],
      attrs: { transB: false, chunk: 2 },
      shape: [2, 3],
      expected: [Math.LN2, Math.LN2, 1, 0, 2 * Math.LN2, 0],
    },
    {
      what: 'the same weight stored [V, d] (transB)',
      inputs: [f([2, 2], [1, 0, 0, 1]), f([2, 2], [0, Math.log(3), 0, 0]), i32([2], [1, -100])],
      attrs: { transB: true, chunk: 1 },
      shape: [2, 3],
      expected: [Math.LN2, Math.LN2, 1, 0, 2 * Math.LN2, 0],
    },
  ],
  cross_entropy_grad: [
    {
      what: 'softmax [½, ½] − onehot(1), the L column weighted in; an ignored row only through L',
      inputs: [f([2, 2], [0, 0, 0, 0]), i32([2], [1, -100]), f([2, 3], [Math.LN2, Math.LN2, 1, 0, Math.LN2, 0]), f([2, 3], [1, 2, 7, 1, 0, 7])],
      attrs: NONE,
      shape: [2, 2],
      // row 0: (1 + 2)·½ − [0, 1]; row 1: weight 0, so (0 + 0)·½
      expected: [1.5, 0.5, 0, 0],
    },
  ],
  rms_norm: [
    {
      what: 'x [3, 4]: mean x² = 12.5; weight [1, 2] and a scalar weight 2',
      inputs: [f([1, 2], [3, 4]), f([2], [1, 2])],
      attrs: { eps: 0 },
      shape: [1, 2],
      expected: [3 / Math.sqrt(12.5), 8 / Math.sqrt(12.5)],
    },
    { what: 'scalar weight, eps 0.5', inputs: [f([2], [3, 4]), f([], [2])], attrs: { eps: 0.5 }, shape: [2], expected: [6 / Math.sqrt(13), 8 / Math.sqrt(13)] },
  ],
  rms_norm_grad: [
    {
      what: 'a cotangent orthogonal to x: dx = rstd·ct',
      inputs: [f([1, 2], [3, 4]), f([2], [1, 1]), f([1, 2], [4, -3])],
      attrs: { eps: 0 },
      shape: [1, 2],
      expected: [4 / Math.sqrt(12.5), -3 / Math.sqrt(12.5)],
    },
  ],
  layer_norm: [
    {
      what: 'x [1, 3]: mean 2, var 1, x̂ = [−1, 1]; weight [2, 3], bias [1, 0]',
      inputs: [f([1, 2], [1, 3]), f([2], [2, 3]), f([2], [1, 0])],
      attrs: { eps: 0 },
      shape: [1, 2],
      expected: [-1, 3],
    },
  ],
  layer_norm_grad: [
    {
      what: 'x [0, 1, 2], ct [1, 0, 0]: rstd = √1.5, dx = √1.5·[1/6, −1/3, 1/6]',
      inputs: [f([3], [0, 1, 2]), f([3], [1, 1, 1]), f([3], [1, 0, 0])],
      attrs: { eps: 0 },
      shape: [3],
      expected: [Math.sqrt(1.5) / 6, -Math.sqrt(1.5) / 3, Math.sqrt(1.5) / 6],
    },
  ],
  // One query, keys k = [0, ln 3] (scale 1): probabilities [1/4, 3/4]; v = [2, 6]. Each row is
  // O, then L's high and low parts (the low part is 0 in float64).
  attention: [
    { what: 'two keys: O = 5, L = ln 4', inputs: [f([1, 1, 1, 1], [1]), f([1, 1, 2, 1], [0, Math.log(3)]), f([1, 1, 2, 1], [2, 6])], attrs: ATT, shape: [1, 1, 1, 3], expected: [5, Math.log(4), 0] },
    {
      what: 'causal: row 0 sees key 0 only',
      inputs: [f([1, 1, 2, 1], [1, 1]), f([1, 1, 2, 1], [0, Math.log(3)]), f([1, 1, 2, 1], [2, 6])],
      attrs: { ...ATT, causal: true },
      shape: [1, 1, 2, 3],
      expected: [2, 0, 0, 5, Math.log(4), 0],
    },
    {
      what: 'key mask [1, 0]: the padding key gets −1e9',
      inputs: [f([1, 1, 1, 1], [1]), f([1, 1, 2, 1], [0, Math.log(3)]), f([1, 1, 2, 1], [2, 6]), f([1, 2], [1, 0])],
      attrs: { ...ATT, masked: true },
      shape: [1, 1, 1, 3],
      expected: [2, 0, 0],
    },
    {
      what: 'every key padding: the mean of v, L = −1e9 + ln 2',
      inputs: [f([1, 1, 1, 1], [1]), f([1, 1, 2, 1], [0, Math.log(3)]), f([1, 1, 2, 1], [2, 6]), f([1, 2], [0, 0])],
      attrs: { ...ATT, masked: true },
      shape: [1, 1, 1, 3],
      expected: [4, -1e9 + Math.log(2), 0],
    },
    {
      what: 'two query heads share one kv head (q = 1, then 0)',
      inputs: [f([1, 2, 1, 1], [1, 0]), f([1, 1, 2, 1], [0, Math.log(3)]), f([1, 1, 2, 1], [2, 6])],
      attrs: ATT,
      shape: [1, 2, 1, 3],
      expected: [5, Math.log(4), 0, 4, Math.log(2), 0],
    },
  ],
  attention_delta: [
    // D = Σ ct·O − ct_L (L's low part has no cotangent: its 9 and 4 are ignored):
    // 1·1 + 1·2 − 2 = 1; 0.5·3 + 2·(−1) − 1 = −1.5
    { what: 'two rows', inputs: [f([2, 4], [1, 2, 0.5, 0, 3, -1, 7, 0]), f([2, 4], [1, 1, 2, 9, 0.5, 2, 1, 4])], attrs: NONE, shape: [2], expected: [1, -1.5] },
    // The L column is high + low parts: a low part of 0.25 changes nothing in D, but moves dq's P.
    { what: 'a nonzero low part', inputs: [f([1, 3], [2, 0.5, 0.25]), f([1, 3], [3, 1, 5])], attrs: NONE, shape: [1], expected: [5] },
  ],
  // The first attention case with dO = 1, ctL = 0 and L = ln 4 split as (ln 4 − ½) + ½: D = 5, dP = v = [2, 6],
  // dS = P·(dP − D) = [−3/4, 3/4]; dq = Σ dS·k = (3/4)·ln 3; dk = dS·q; dv = P·dO.
  attention_dq: [
    {
      what: 'two keys',
      inputs: [f([1, 1, 1, 1], [1]), f([1, 1, 2, 1], [0, Math.log(3)]), f([1, 1, 2, 1], [2, 6]), f([1, 1, 1, 3], [5, Math.log(4) - 0.5, 0.5]), f([1, 1, 1, 3], [1, 0, 0]), f([1, 1, 1], [5])],
      attrs: ATT,
      shape: [1, 1, 1, 1],
      expected: [0.75 * Math.log(3)],
    },
  ],
  attention_dkv: [
    {
      what: 'two keys: [dk, dv] per key',
      inputs: [f([1, 1, 1, 1], [1]), f([1, 1, 2, 1], [0, Math.log(3)]), f([1, 1, 2, 1], [2, 6]), f([1, 1, 1, 3], [5, Math.log(4) - 0.5, 0.5]), f([1, 1, 1, 3], [1, 0, 0]), f([1, 1, 1], [5])],
      attrs: ATT,
      shape: [1, 1, 2, 2],
      expected: [-0.75, 0.25, 0.75, 0.75],
    },
  ],
};

const anyDef = (op: OpName) => OPS[op] as OpDef<any>;
const typeOf = (x: HandInput): TensorType => ({ dtype: x.dtype ?? 'f32', shape: x.shape });

function expectValues(actual: ArrayLike<number>, expected: readonly number[], what: string): void {
  expect(actual.length, `${what}: element count`).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const tol = 1e-12 * Math.max(1, Math.abs(expected[i]));
    if (!(Math.abs(actual[i] - expected[i]) <= tol)) {
      expect.fail(`${what}: element ${i} is ${actual[i]}, expected ${expected[i]} (all: [${Array.from(actual)}])`);
    }
  }
}

describe('hand-checked cases', () => {
  for (const op of OP_NAMES) {
    describe(op, () => {
      it('has a hand-checked case', () => expect(HAND[op].length).toBeGreaterThan(0));
      it.each(HAND[op].map((c) => [c.what, c] as const))('%s', (_what, c) => {
        const def = anyDef(op);
        const ins = c.inputs.map(typeOf);
        const out = def.infer(ins, c.attrs);
        expect(out.shape, 'shape rule').toEqual(c.shape);
        expect(out.dtype, 'dtype rule').toBe(c.dtype ?? 'f32');
        const tensors: Tensor[] = c.inputs.map((x) => ({ shape: x.shape, data: Float64Array.from(x.data) }));
        expectValues(def.ref(tensors, c.attrs, out), c.expected, `${op} ${c.what} (ref)`);

        // The same case through the Builder and the reference interpreter.
        const b = new Builder();
        const vs = c.inputs.map((x, i) => b.input(`x${i}`, x.shape, x.dtype ?? 'f32'));
        b.output('y', b.emit(op, vs, c.attrs as never));
        const g = verify(b.build());
        const feeds = Object.fromEntries(c.inputs.map((x, i) => [`x${i}`, x.data]));
        expectValues(runReference(g, { feeds }).outputs.y.data, c.expected, `${op} ${c.what} (interpreter)`);
      });
    });
  }
});

describe('shape errors name the op and the operand shapes', () => {
  interface Bad {
    readonly what: string;
    readonly op: string;
    readonly shapes: readonly string[];
    readonly build: (b: Builder) => unknown;
    readonly says: RegExp;
  }
  const BAD: readonly Bad[] = [
    {
      what: 'matmul inner dims',
      op: 'matmul',
      shapes: ['f32[2,3]', 'f32[4,5]'],
      build: (b) => b.matmul(b.input('a', [2, 3]), b.input('w', [4, 5])),
      says: /inner dimensions differ: 3 .* 4/,
    },
    {
      what: 'matmul inner dims under transB',
      op: 'matmul',
      shapes: ['f32[2,3]', 'f32[3,5]'],
      build: (b) => b.matmul(b.input('a', [2, 3]), b.input('w', [3, 5]), { transB: true }),
      says: /inner dimensions differ: 3 .* 5/,
    },
    {
      what: 'matmul of a vector',
      op: 'matmul',
      shapes: ['f32[3]', 'f32[3,2]'],
      build: (b) => b.matmul(b.input('a', [3]), b.input('w', [3, 2])),
      says: /rank ≥ 2/,
    },
    {
      what: 'matmul batch dims',
      op: 'matmul',
      shapes: ['f32[2,1,3]', 'f32[4,3,1]'],
      build: (b) => b.matmul(b.input('a', [2, 1, 3]), b.input('w', [4, 3, 1])),
      says: /do not broadcast/,
    },
    {
      what: 'add broadcast',
      op: 'add',
      shapes: ['f32[2,3]', 'f32[4]'],
      build: (b) => b.add(b.input('a', [2, 3]), b.input('c', [4])),
      says: /do not broadcast \(dim -1: 3 vs 4\)/,
    },
    {
      what: 'where broadcast',
      op: 'where',
      shapes: ['f32[3]', 'f32[2,3]', 'f32[2]'],
      build: (b) => b.where(b.input('m', [3]), b.input('a', [2, 3]), b.input('c', [2])),
      says: /do not broadcast/,
    },
    {
      what: 'broadcast to an incompatible shape',
      op: 'broadcast',
      shapes: ['f32[3]'],
      build: (b) => b.broadcast(b.input('a', [3]), [2, 4]),
      says: /\[3\] does not broadcast to \[2,4\]/,
    },
    {
      what: 'reshape element count',
      op: 'reshape',
      shapes: ['f32[2,3]'],
      build: (b) => b.reshape(b.input('a', [2, 3]), [4]),
      says: /6 elements.*4 elements/,
    },
    {
      what: 'transpose with a repeated axis',
      op: 'transpose',
      shapes: ['f32[2,3]'],
      build: (b) => b.transpose(b.input('a', [2, 3]), [0, 0]),
      says: /not a permutation/,
    },
    {
      what: 'transpose with too few axes',
      op: 'transpose',
      shapes: ['f32[2,3,4]'],
      build: (b) => b.transpose(b.input('a', [2, 3, 4]), [1, 0]),
      says: /not a permutation/,
    },
    {
      what: 'slice past the end',
      op: 'slice',
      shapes: ['f32[3,4]'],
      build: (b) => b.slice(b.input('a', [3, 4]), [0, 2], [3, 5]),
      says: /axis 1: \[2, 5\)/,
    },
    {
      what: 'empty slice',
      op: 'slice',
      shapes: ['f32[3]'],
      build: (b) => b.slice(b.input('a', [3]), [2], [2]),
      says: /non-empty/,
    },
    {
      what: 'negative pad',
      op: 'pad',
      shapes: ['f32[3]'],
      build: (b) => b.pad(b.input('a', [3]), [-1], [0]),
      says: /non-negative/,
    },
    {
      what: 'concat mismatch off the axis',
      op: 'concat',
      shapes: ['f32[2,3]', 'f32[3,3]'],
      build: (b) => b.concat([b.input('a', [2, 3]), b.input('c', [3, 3])], 1),
      says: /input #1 \[3,3\] does not match input #0 \[2,3\] outside axis 1/,
    },
    {
      what: 'gather with float indices',
      op: 'gather',
      shapes: ['f32[5,2]', 'f32[3]'],
      build: (b) => b.gather(b.input('table', [5, 2]), b.input('idx', [3])),
      says: /indices must be i32, got f32/,
    },
    {
      what: 'scatter_add source not led by the index shape',
      op: 'scatter_add',
      shapes: ['i32[3]', 'f32[4,2]'],
      build: (b) => b.scatterAdd(b.input('idx', [3], 'i32'), b.input('src', [4, 2]), 5),
      says: /must start with the index shape/,
    },
    {
      what: 'one_hot of float labels',
      op: 'one_hot',
      shapes: ['f32[3]'],
      build: (b) => b.oneHot(b.input('labels', [3]), 4),
      says: /labels must be i32/,
    },
    {
      what: 'exp of an integer tensor',
      op: 'exp',
      shapes: ['i32[3]'],
      build: (b) => b.exp(b.input('idx', [3], 'i32')),
      says: /must be a float tensor, got i32/,
    },
    {
      what: 'sum over an axis out of range (the rule itself)',
      op: 'sum',
      shapes: ['f32[2,3]'],
      build: (b) => b.emit('sum', [b.input('a', [2, 3])], { axes: [2], keepdims: false }),
      says: /axis 2 is out of range for rank 2/,
    },
    {
      what: 'add with one operand',
      op: 'add',
      shapes: ['f32[2]'],
      build: (b) => b.emit('add', [b.input('a', [2])], {}),
      says: /takes 2 inputs, got 1/,
    },
  ];

  it.each(BAD.map((c) => [c.what, c] as const))('%s', (_what, c) => {
    const b = new Builder();
    let err: unknown;
    try {
      c.build(b);
    } catch (e) {
      err = e;
    }
    expect(err, 'must throw').toBeInstanceOf(ShapeError);
    const e = err as ShapeError;
    expect(e.op).toBe(c.op);
    expect(e.message).toContain(`${c.op}: `);
    expect(e.message).toMatch(c.says);
    for (const s of c.shapes) expect(e.message).toContain(s);
    // …and names the operands.
    for (const v of e.operands) expect(e.message).toContain(JSON.stringify(v.name));
  });

  it('carries the model source line when the builder knows the model file', () => {
    const file = new URL(import.meta.url).pathname;
    const b = new Builder({ file, displayFile: 'test/ops.test.ts' });
    const a = b.input('a', [2, 3]);
    const w = b.input('w', [4, 5]);
    let err: ShapeError | undefined;
    try {
      b.matmul(a, w); // this line
    } catch (e) {
      err = e as ShapeError;
    }
    expect(err).toBeInstanceOf(ShapeError);
    expect(err!.src?.file).toBe('test/ops.test.ts');
    expect(err!.message).toMatch(/^test\/ops\.test\.ts:\d+:\d+: matmul:/);
  });
});

describe('references reject indices outside their range', () => {
  const t = (shape: readonly number[], data: readonly number[]): Tensor => ({ shape, data: Float64Array.from(data) });
  const cases: readonly [string, () => unknown, RegExp][] = [
    ['gather: index = rows', () => OPS.gather.ref([t([3, 2], [1, 2, 3, 4, 5, 6]), t([2], [0, 3])], {}, { dtype: 'f32', shape: [2, 2] }), /gather: index 3 outside \[0, 3\)/],
    ['gather: negative index', () => OPS.gather.ref([t([3], [1, 2, 3]), t([1], [-1])], {}, { dtype: 'f32', shape: [1] }), /index -1/],
    ['scatter_add: index = rows', () => OPS.scatter_add.ref([t([2], [0, 2]), t([2], [1, 1])], { rows: 2 }, { dtype: 'f32', shape: [2] }), /scatter_add: index 2 outside \[0, 2\)/],
    ['scatter_add: negative index', () => OPS.scatter_add.ref([t([1], [-1]), t([1], [1])], { rows: 2 }, { dtype: 'f32', shape: [2] }), /index -1/],
    ['one_hot: label = classes', () => OPS.one_hot.ref([t([2], [1, 3])], { classes: 3 }, { dtype: 'f32', shape: [2, 3] }), /one_hot: label 3 outside \[0, 3\)/],
  ];
  it.each(cases)('%s', (_what, run, says) => {
    expect(run).toThrow(RangeError);
    expect(run).toThrow(says);
  });
});

/** A registry case drawn through fc.gen(), so its shapes shrink. */
const caseArb = (op: OpName) =>
  fc.tuple(fc.gen(), fc.integer({ min: 0, max: 0x7fffffff })).map(([g, seed]) => {
    const oc = anyDef(op).testCase(caseGen(g, fc));
    const text = `${op}(${oc.inputs.map((x) => `${x.type.dtype}[${x.type.shape}] ${x.domain.kind}`).join(', ')}) attrs ${JSON.stringify(oc.attrs)} seed ${seed}`;
    return { oc, seed, toString: () => text };
  });

/** A tensor that remembers its dtype, so shape rules see i32 indices as i32. */
type Typed = Tensor & { readonly dtype: DType };

const feedOf = (oc: { inputs: readonly { type: TensorType; domain: Domain }[] }, seed: number): Typed[] =>
  oc.inputs.map((x, i) => ({ dtype: x.type.dtype, shape: x.type.shape, data: sample(numel(x.type.shape), x.domain, seed + 7919 * i) }));

describe('every op’s test cases satisfy its own rules', () => {
  for (const op of OP_NAMES) {
    it(op, () => {
      const def = anyDef(op);
      property(`ops/${op}/testCase`, caseArb(op), ({ oc, seed }) => {
        if (def.arity !== 'variadic') expect(oc.inputs.length, 'arity').toBe(def.arity);
        for (const x of oc.inputs) {
          expect(x.type.shape.every((d) => Number.isInteger(d) && d >= 1), `dims of ${x.type.shape}`).toBe(true);
          if (x.type.dtype === 'i32') expect(x.domain.kind, 'an i32 input has an integer domain').toBe('int');
          if (x.domain.kind === 'int') expect(x.domain.lo).toBeLessThanOrEqual(x.domain.hi);
        }
        const out = def.infer(
          oc.inputs.map((x) => x.type),
          oc.attrs,
        );
        expect(out.shape.every((d) => Number.isInteger(d) && d >= 1)).toBe(true);
        // The Builder agrees, and the graph verifies.
        const b = new Builder();
        const vs = oc.inputs.map((x, i) => b.input(`x${i}`, x.type.shape, x.type.dtype));
        const y = b.emit(op, vs, oc.attrs);
        expect(y.type).toEqual(out);
        verify(b.build());
        // The reference fills exactly the output, with finite values on the input domains.
        const r = def.ref(feedOf(oc, seed), oc.attrs, out);
        expect(r.length).toBe(numel(out.shape));
        expect(r.every(Number.isFinite), 'finite').toBe(true);
      });
    });
  }
});

// Identities between references on random shapes, which hand cases cannot cover exhaustively.
describe('reference identities', () => {
  const ref = <K extends OpName>(op: K, ins: readonly (Tensor & { dtype?: DType })[], attrs: OpAttrs[K]): Typed => {
    const out = OPS[op].infer(
      ins.map((t) => ({ dtype: t.dtype ?? 'f32', shape: t.shape })),
      attrs,
    );
    return { dtype: out.dtype, shape: out.shape, data: OPS[op].ref(ins, attrs, out) };
  };

  it('matmul with transpose flags equals matmul of explicitly transposed operands', () => {
    property('ops/matmul/trans-flags', caseArb('matmul'), ({ oc, seed }) => {
      const [a, w] = feedOf(oc, seed);
      const { transA, transB } = oc.attrs as OpAttrs['matmul'];
      const swapLast = (t: Tensor) => {
        const r = t.shape.length;
        return ref('transpose', [t], { perm: [...t.shape.keys()].map((i) => (i === r - 1 ? r - 2 : i === r - 2 ? r - 1 : i)) });
      };
      const got = ref('matmul', [a, w], { transA, transB });
      const plain = ref('matmul', [transA ? swapLast(a) : a, transB ? swapLast(w) : w], { transA: false, transB: false });
      expect(got.shape).toEqual(plain.shape);
      expect(Array.from(got.data)).toEqual(Array.from(plain.data));
    });
  });

  it('gather and scatter_add are adjoint: ⟨gather(T, i), S⟩ = ⟨T, scatter_add(i, S)⟩', () => {
    property('ops/gather/scatter-adjoint', caseArb('gather'), ({ oc, seed }) => {
      const [table, idx] = feedOf(oc, seed);
      const g = ref('gather', [table, idx], {});
      const s = { shape: g.shape, data: sample(g.data.length, { kind: 'real' }, seed + 1) };
      const back = ref('scatter_add', [idx, s], { rows: table.shape[0] });
      expect(back.shape).toEqual(table.shape);
      expect(dot(g.data, s.data)).toBeCloseTo(dot(table.data, back.data), 10);
    });
  });

  it('slice and pad are adjoint: ⟨slice(x), y⟩ = ⟨x, pad(y)⟩', () => {
    property('ops/slice/pad-adjoint', caseArb('slice'), ({ oc, seed }) => {
      const [x] = feedOf(oc, seed);
      const { starts, ends } = oc.attrs as OpAttrs['slice'];
      const s = ref('slice', [x], { starts, ends });
      const y = { shape: s.shape, data: sample(s.data.length, { kind: 'real' }, seed + 1) };
      const p = ref('pad', [y], { before: starts, after: x.shape.map((d, i) => d - ends[i]) });
      expect(p.shape).toEqual(x.shape);
      expect(dot(s.data, y.data)).toBeCloseTo(dot(x.data, p.data), 10);
    });
  });

  it('transpose by perm then by its inverse is the identity', () => {
    property('ops/transpose/inverse', caseArb('transpose'), ({ oc, seed }) => {
      const [x] = feedOf(oc, seed);
      const { perm } = oc.attrs as OpAttrs['transpose'];
      const back = ref('transpose', [ref('transpose', [x], { perm })], { perm: invertPerm(perm) });
      expect(back.shape).toEqual(x.shape);
      expect(Array.from(back.data)).toEqual(Array.from(x.data));
    });
  });

  it('concat then slice recovers each part', () => {
    property('ops/concat/slice-parts', caseArb('concat'), ({ oc, seed }) => {
      const parts = feedOf(oc, seed);
      const { axis } = oc.attrs as OpAttrs['concat'];
      const whole = ref('concat', parts, { axis });
      let offset = 0;
      for (const p of parts) {
        const starts = p.shape.map((_, i) => (i === axis ? offset : 0));
        const ends = whole.shape.map((d, i) => (i === axis ? offset + p.shape[axis] : d));
        expect(Array.from(ref('slice', [whole], { starts, ends }).data)).toEqual(Array.from(p.data));
        offset += p.shape[axis];
      }
    });
  });

  it('broadcast then sum over the broadcast axes multiplies by the repeat count', () => {
    property('ops/broadcast/sum', caseArb('broadcast'), ({ oc, seed }) => {
      const [x] = feedOf(oc, seed);
      const { shape } = oc.attrs as OpAttrs['broadcast'];
      const lead = shape.length - x.shape.length;
      const axes = shape.flatMap((d, i) => (i < lead || (x.shape[i - lead] === 1 && d !== 1) ? [i] : []));
      const repeat = axes.reduce((n, a) => n * shape[a], 1);
      const summed = ref('sum', [ref('broadcast', [x], { shape })], { axes, keepdims: false });
      expect(summed.data.length).toBe(x.data.length);
      summed.data.forEach((v, i) => expect(v).toBeCloseTo(repeat * x.data[i], 12));
    });
  });
});
