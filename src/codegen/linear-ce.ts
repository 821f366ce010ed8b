// The linear_cross_entropy forward kernel (semantics: src/ir/linear-ce.ts). Its backward is
// ordinary ops (matmul, cross_entropy_grad, slice, concat) that its VJP emits chunk by chunk.
//
// A workgroup of 64 invocations owns LCE_ROWS (16) rows of h and walks the vocabulary in tiles of
// 64 columns, one column per invocation. For each tile it computes the [16, 64] block of logits as
// a tiled matmul (h and w step through workgroup memory 16 features at a time; each invocation
// keeps its column's 16 row sums in 16 named registers, not a private array, which lavapipe would
// keep in memory), writes the block to workgroup memory, and the invocations that own a row fold
// the block into that row's online log-sum-exp (running max m and sum s, s rescaled by exp(m − m')
// when the max grows) and pick out the label's logit when it lies in the tile. No logit is ever
// written to global memory. Workgroup memory: 16·16 + 16·64 + 16·64 floats = 9 KiB.
// Columns past V score −∞ (they add exp(−∞) = 0), features past d and rows past N load 0; a row
// past N is computed on zeros and stored nowhere. Every loop bound around a barrier is a constant:
// uniform control flow.
import { linearCeDims, type LinearCeAttrs } from '../ir/linear-ce.ts';
import type { Node } from '../ir/types.ts';
import type { EmitContext, KernelSource } from './kernel.ts';
import { foldGroups, header, lit, split } from './wgsl.ts';

/** Rows of h per workgroup. */
export const LCE_ROWS = 16;
/** Vocabulary columns per tile: one per invocation. */
const COLS = 64;
/** Features per step of the inner product. */
const STEP = 16;

const u = (n: number) => `${n}u`;

export function emitLinearCrossEntropy(node: Node, ctx: EmitContext): KernelSource {
  const a = node.attrs as LinearCeAttrs;
  const { n, d, v } = linearCeDims(node.inputs.map((x) => x.type), a);
  const { bound, arg, st } = split(node, ctx);
  // w[k, col]: [d, V] row-major, or [V, d] with transB.
  const wAt = (k: string, col: string) => arg(1, a.transB ? `(${col}) * ${u(d)} + ${k}` : `(${k}) * ${u(v)} + ${col}`);
  const rows = Array.from({ length: LCE_ROWS }, (_, r) => r);
  return {
    bound,
    workgroups: foldGroups(Math.ceil(n / LCE_ROWS), ctx),
    wgsl: `${header(bound, node.out, ctx)}
const N = ${u(n)};
const D = ${u(d)};
const V = ${u(v)};
var<workgroup> hs: array<f32, ${LCE_ROWS * STEP}>;
var<workgroup> ws: array<f32, ${STEP * COLS}>;
var<workgroup> zs: array<f32, ${LCE_ROWS * COLS}>;

@compute @workgroup_size(${COLS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let r0 = (wid.x + wid.y * nwg.x) * ${u(LCE_ROWS)};
  let own = lid < ${u(LCE_ROWS)} && r0 + lid < N;
  var label = -1i;
  if (own) { label = ${arg(2, 'r0 + lid')}; }
  var m = ${lit(-Infinity)};
  var s = 0.0;
  var picked = 0.0;
  for (var c0 = 0u; c0 < V; c0 += ${u(COLS)}) {
    let col = c0 + lid;
${rows.map((r) => `    var z${r} = 0.0;`).join('\n')}
    for (var k0 = 0u; k0 < D; k0 += ${u(STEP)}) {
      for (var e = lid; e < ${u(LCE_ROWS * STEP)}; e += ${u(COLS)}) {
        let r = e / ${u(STEP)};
        let k = k0 + e % ${u(STEP)};
        var hv = 0.0;
        if (r0 + r < N && k < D) { hv = ${arg(0, '(r0 + r) * D + k')}; }
        hs[(e % ${u(STEP)}) * ${u(LCE_ROWS)} + r] = hv;
      }
      for (var e = lid; e < ${u(STEP * COLS)}; e += ${u(COLS)}) {
        ${a.transB ? `let kk = e % ${u(STEP)}; let cc = e / ${u(STEP)};` : `let kk = e / ${u(COLS)}; let cc = e % ${u(COLS)};`}
        var wv = 0.0;
        if (k0 + kk < D && c0 + cc < V) { wv = ${wAt('k0 + kk', 'c0 + cc')}; }
        ws[kk * ${u(COLS)} + cc] = wv;
      }
      workgroupBarrier();
      for (var kk = 0u; kk < ${u(STEP)}; kk++) {
        let wk = ws[kk * ${u(COLS)} + lid];
        let hb = kk * ${u(LCE_ROWS)};
${rows.map((r) => `        z${r} += hs[hb + ${u(r)}] * wk;`).join('\n')}
      }
      workgroupBarrier();
    }
    let live = col < V;
${rows.map((r) => `    zs[${u(r * COLS)} + lid] = select(${lit(-Infinity)}, z${r}, live);`).join('\n')}
    workgroupBarrier();
    if (own) {
      let base = lid * ${u(COLS)};
      for (var j = 0u; j < ${u(COLS)}; j++) {
        let zv = zs[base + j];
        if (zv > m) { s = s * exp(m - zv); m = zv; }
        s = s + exp(zv - m);
      }
      if (label >= i32(c0) && label < i32(c0 + ${u(COLS)}) && label < ${v}i) { picked = zs[base + u32(label) - c0]; }
    }
    workgroupBarrier();
  }
  if (own) {
    let row = r0 + lid;
    let lse = m + log(s);
    let ok = label >= 0i && label < ${v}i;
    ${st(`row * 3u`, `select(0.0, lse - picked, ok)`)}
    ${st(`row * 3u + 1u`, `lse`)}
    ${st(`row * 3u + 2u`, `select(0.0, 1.0, ok)`)}
  }
}
`,
  };
}
