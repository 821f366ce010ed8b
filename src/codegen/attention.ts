// The fused attention kernels (semantics: src/ir/attention.ts). WGSL has no float atomics, so the
// backward is split by what each invocation owns, as in FlashAttention-2:
//   attention      one invocation per query row, ATTENTION_ROWS rows per workgroup: the key/value
//                  rows stream through workgroup memory in tiles of `keys` rows; an online softmax
//                  (running max m, running sum l, accumulator rescaled by exp(m − m') once per
//                  tile) never holds a score row; writes O and L = m + log l.
//   attention_dq   the same loop per query row: P = exp(s − L) recomputed, dq += dS·k.
//   attention_dkv  one invocation per key row: query rows (q, dO, L, D) stream through workgroup
//                  memory in tiles of `queries` rows, over every query head sharing the key's
//                  kv head: dk += dS·q, dv += P·dO.
// Tiles: the largest power of two ≤ 64 rows whose floats fit WORKGROUP_BYTES (16 KiB, WebGPU's
// default maxComputeWorkgroupStorageSize): key tiles hold dk + dv floats a row (64 rows for head
// dims 16+16 … 32+32, 16 for 128+128), query tiles dk + dv + 2 (64 … 8). Causal: key tiles past
// a query block's last row (forward, dq) and query tiles before a key block's first row (dk/dv)
// are skipped, not masked; the diagonal tile checks j ≤ i per element. A sequence that is not a
// multiple of a tile loads and visits only its rows; rows past the end compute on a clamped row
// and store nothing, but still take part in every barrier.
// Every loop bound around a barrier depends only on the workgroup id: uniform control flow.
// Speed on lavapipe (a causal [4,4,128,32] step with a projection and a loss, 2 busy cores): 42 ms
// against the composition's 23 ms (peak 1.8 MiB against 5.8): one workgroup-memory load per
// multiply-add, and private arrays indexed by a loop variable live in memory. Rows as vec4 with
// the head-dim loops fully unrolled ran in 19 ms, but lavapipe's JIT then took 1.5 s (d 32) to
// 50 s (d 128) per kernel at its first dispatch; without the unrolling, vec4 ran in 50 ms. A
// register-blocked variant (several keys per invocation, subgroup broadcasts as in matmul.ts) is
// the open follow-up.
import { ALL_PADDING_L, attentionDims, L_COLUMNS, PADDING_SCORE, type AttentionAttrs, type AttentionDims } from '../ir/attention.ts';
import type { Node } from '../ir/types.ts';
import type { EmitContext, KernelSource } from './kernel.ts';
import { defaultElem, roundedTo } from './storage.ts';
import { foldGroups, header, lit, split } from './wgsl.ts';

/** Query rows (forward, dq) or key rows (dk/dv) per workgroup: one invocation each. */
export const ATTENTION_ROWS = 64;
/** Workgroup memory every attention kernel stays within, for any head dims up to 128 + 128. */
export const WORKGROUP_BYTES = 16384;

/** The largest power of two ≤ 64 rows of `perRow` floats that fits WORKGROUP_BYTES. */
export function tileRows(perRow: number): number {
  const fit = Math.min(64, Math.floor(WORKGROUP_BYTES / 4 / perRow));
  if (fit < 1) throw new Error(`attention: a tile row of ${perRow} floats does not fit ${WORKGROUP_BYTES} bytes of workgroup memory`);
  return 2 ** Math.floor(Math.log2(fit));
}

/** Rows per tile: key/value rows (forward, dq) and query rows (dk/dv). */
export function attentionTiles(dk: number, dv: number): { readonly keys: number; readonly queries: number } {
  return { keys: tileRows(dk + dv), queries: tileRows(dk + dv + 2) };
}

/** Bytes of workgroup memory each kernel declares. */
export function attentionWorkgroupBytes(dk: number, dv: number): { readonly forward: number; readonly dq: number; readonly dkv: number } {
  const t = attentionTiles(dk, dv);
  return { forward: 4 * t.keys * (dk + dv), dq: 4 * t.keys * (dk + dv), dkv: 4 * t.queries * (dk + dv + 2) };
}

const u = (n: number) => `${n}u`;
const NEG = lit(-Infinity);

const MAIN = `@compute @workgroup_size(${ATTENTION_ROWS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let wg = wid.x + wid.y * nwg.x;`;

interface Parts {
  readonly a: AttentionAttrs;
  readonly d: AttentionDims;
  readonly bound: KernelSource['bound'];
  /** Reads operand `role` at a WGSL index expression. */
  readonly read: (role: 'q' | 'k' | 'v' | 'mask' | 'packed' | 'ct' | 'delta', index: string) => string;
  /** The statement storing f32 `v` at element `e` of the output. */
  readonly st: (e: string, v: string) => string;
}

function parts(node: Node, ctx: EmitContext, extra: 0 | 3): Parts {
  const a = node.attrs as AttentionAttrs;
  const d = attentionDims(node.inputs.map((v) => v.type), a, extra);
  const { bound, arg, st } = split(node, ctx);
  const at = a.masked ? 4 : 3;
  const slot = { q: 0, k: 1, v: 2, mask: 3, packed: at, ct: at + 1, delta: at + 2 } as const;
  return { a, d, bound, st, read: (role, index) => arg(slot[role], index) };
}

/** Statements that load rows [row0, row0 + n) of a contiguous [.., width] operand into `dst`. */
function loadRows(dst: string, src: string, width: number): string {
  return `for (var t = lid; t < n * ${u(width)}; t += ${u(ATTENTION_ROWS)}) { ${dst}[t] = ${src.replace('$', `t`)}; }`;
}

/**
 * A query-row kernel (forward, dq): one invocation per query row i (ir: clamped in range), 64 rows
 * a workgroup. Before `before` runs, the invocation has its (batch·head) bh, the first key row of
 * its kv head kbase, its row index ro in [b·h·sq] and its q row in qr. Then K/V tiles of TK rows
 * stream through workgroup memory (ks, vs; n rows in this tile, the first j0) and `tile` runs for
 * each; causal blocks stop at their last row. `after` ends the kernel.
 */
function queryRowKernel(
  node: Node,
  ctx: EmitContext,
  extra: 0 | 3,
  body: (p: Parts & { readonly TK: number }) => { readonly before: string; readonly tile: string; readonly after: string },
): KernelSource {
  const p = parts(node, ctx, extra);
  const { a, d, bound, read } = p;
  const R = ATTENTION_ROWS;
  const TK = attentionTiles(d.dk, d.dv).keys;
  const blocks = Math.ceil(d.sq / R);
  const total = d.b * d.h * blocks;
  const { before, tile, after } = body({ ...p, TK });
  const wgsl = `${header(bound, node.out, ctx)}
var<workgroup> ks: array<f32, ${TK * d.dk}>;
var<workgroup> vs: array<f32, ${TK * d.dv}>;

${MAIN}
  if (wg >= ${u(total)}) { return; }
  let bh = wg / ${u(blocks)};
  let i0 = (wg % ${u(blocks)}) * ${u(R)};
  let bi = bh / ${u(d.h)};
  let kbase = (bi * ${u(d.hkv)} + (bh % ${u(d.h)}) / ${u(d.group)}) * ${u(d.sk)};
  let i = i0 + lid;
  let ir = min(i, ${u(d.sq - 1)});
  let ro = bh * ${u(d.sq)} + ir;
  var qr: array<f32, ${d.dk}>;
  for (var c = 0u; c < ${u(d.dk)}; c++) { qr[c] = ${read('q', `ro * ${u(d.dk)} + c`)}; }
${before}
  // Causal: no row of this block sees a key past its last row.
  let kend = ${a.causal ? `min(i0 + ${u(R)}, ${u(d.sk)})` : u(d.sk)};
  for (var j0 = 0u; j0 < kend; j0 += ${u(TK)}) {
    let n = min(${u(TK)}, ${u(d.sk)} - j0);
    workgroupBarrier();
    ${loadRows('ks', read('k', `(kbase + j0) * ${u(d.dk)} + $`), d.dk)}
    ${loadRows('vs', read('v', `(kbase + j0) * ${u(d.dv)} + $`), d.dv)}
    workgroupBarrier();
${tile}
  }
${after}
}
`;
  return { wgsl, bound, workgroups: foldGroups(total, ctx) };
}

export function emitAttention(node: Node, ctx: EmitContext): KernelSource {
  const outKind = (ctx.elem ?? defaultElem)(node.out);
  return queryRowKernel(node, ctx, 0, ({ a, d, read, st, TK }) => ({
    before: `  var acc: array<f32, ${d.dv}>;
  var sc: array<f32, ${TK}>;
  var m = ${NEG};
  var l = 0.0;`,
    tile: `    var tmax = ${NEG};
    for (var jj = 0u; jj < n; jj++) {
      let j = j0 + jj;
      var s = ${NEG};
      ${a.causal ? 'if (j <= ir) {' : '{'}
        var qk = 0.0;
        for (var c = 0u; c < ${u(d.dk)}; c++) { qk += qr[c] * ks[jj * ${u(d.dk)} + c]; }
        s = qk * ${lit(a.scale)};
        ${a.masked ? `if (${read('mask', `bi * ${u(d.sk)} + j`)} == 0.0) { s = ${lit(PADDING_SCORE)}; }` : ''}
      }
      sc[jj] = s;
      tmax = max(tmax, s);
    }
    let mnew = max(m, tmax);
    let corr = select(exp(m - mnew), 0.0, m == ${NEG});
    l = l * corr;
    for (var c = 0u; c < ${u(d.dv)}; c++) { acc[c] = acc[c] * corr; }
    for (var jj = 0u; jj < n; jj++) {
      if (sc[jj] == ${NEG}) { continue; }
      let p = exp(sc[jj] - mnew);
      l = l + p;
      for (var c = 0u; c < ${u(d.dv)}; c++) { acc[c] = acc[c] + p * vs[jj * ${u(d.dv)} + c]; }
    }
    m = mnew;`,
    after: `  if (i < ${u(d.sq)}) {
    let o = (bh * ${u(d.sq)} + i) * ${u(d.dv + L_COLUMNS)};
    let inv = 1.0 / l;
    for (var c = 0u; c < ${u(d.dv)}; c++) { ${st(`o + c`, `acc[c] * inv`)} }
    // L as high + low parts: in half storage the low part keeps what rounding L would lose.
    let lse = m + log(l);
    let lhi = ${roundedTo(outKind, 'lse')};
    ${st(`o + ${u(d.dv)}`, 'lhi')}
    ${st(`o + ${u(d.dv + 1)}`, 'lse - lhi')}
  }`,
  }));
}

/** P for a row with log-sum-exp `L` and `count` allowed keys (a row of padding: uniform). */
function prob(s: string, L: string, count: string): string {
  return `select(exp(${s} - ${L}), 1.0 / f32(${count}), ${L} < ${lit(ALL_PADDING_L)})`;
}

export function emitAttentionDq(node: Node, ctx: EmitContext): KernelSource {
  return queryRowKernel(node, ctx, 3, ({ a, d, read, st }) => {
    const w = d.dv + L_COLUMNS;
    return {
      before: `  var dor: array<f32, ${d.dv}>;
  for (var c = 0u; c < ${u(d.dv)}; c++) { dor[c] = ${read('ct', `ro * ${u(w)} + c`)}; }
  let L = ${read('packed', `ro * ${u(w)} + ${u(d.dv)}`)} + ${read('packed', `ro * ${u(w)} + ${u(d.dv + 1)}`)};
  let D = ${read('delta', 'ro')};
  var dq: array<f32, ${d.dk}>;`,
      tile: `    for (var jj = 0u; jj < n; jj++) {
      let j = j0 + jj;
      ${a.causal ? 'if (j > ir) { break; }' : ''}
      let padded = ${a.masked ? `${read('mask', `bi * ${u(d.sk)} + j`)} == 0.0` : 'false'};
      var qk = 0.0;
      for (var c = 0u; c < ${u(d.dk)}; c++) { qk += qr[c] * ks[jj * ${u(d.dk)} + c]; }
      let s = select(qk * ${lit(a.scale)}, ${lit(PADDING_SCORE)}, padded);
      let p = ${prob('s', 'L', a.causal ? 'ir + 1u' : u(d.sk))};
      var dp = 0.0;
      for (var c = 0u; c < ${u(d.dv)}; c++) { dp += dor[c] * vs[jj * ${u(d.dv)} + c]; }
      let ds = select(p * (dp - D), 0.0, padded);
      for (var c = 0u; c < ${u(d.dk)}; c++) { dq[c] = dq[c] + ds * ks[jj * ${u(d.dk)} + c]; }
    }`,
      after: `  if (i < ${u(d.sq)}) {
    for (var c = 0u; c < ${u(d.dk)}; c++) { ${st(`ro * ${u(d.dk)} + c`, `dq[c] * ${lit(a.scale)}`)} }
  }`,
    };
  });
}

export function emitAttentionDkv(node: Node, ctx: EmitContext): KernelSource {
  const { a, d, bound, read, st } = parts(node, ctx, 3);
  const R = ATTENTION_ROWS;
  const TQ = attentionTiles(d.dk, d.dv).queries;
  const blocks = Math.ceil(d.sk / R);
  const total = d.b * d.hkv * blocks;
  const w = d.dv + L_COLUMNS;
  const wkv = d.dk + d.dv;
  const wgsl = `${header(bound, node.out, ctx)}
var<workgroup> qs: array<f32, ${TQ * d.dk}>;
var<workgroup> dos: array<f32, ${TQ * d.dv}>;
var<workgroup> ls: array<f32, ${TQ}>;
var<workgroup> dls: array<f32, ${TQ}>;

${MAIN}
  if (wg >= ${u(total)}) { return; }
  let bk = wg / ${u(blocks)};
  let j0 = (wg % ${u(blocks)}) * ${u(R)};
  let bi = bk / ${u(d.hkv)};
  let hk = bk % ${u(d.hkv)};
  let j = j0 + lid;
  let jr = min(j, ${u(d.sk - 1)});
  let ko = bk * ${u(d.sk)} + jr;
  var kr: array<f32, ${d.dk}>;
  for (var c = 0u; c < ${u(d.dk)}; c++) { kr[c] = ${read('k', `ko * ${u(d.dk)} + c`)}; }
  var vr: array<f32, ${d.dv}>;
  for (var c = 0u; c < ${u(d.dv)}; c++) { vr[c] = ${read('v', `ko * ${u(d.dv)} + c`)}; }
  let padded = ${a.masked ? `${read('mask', `bi * ${u(d.sk)} + jr`)} == 0.0` : 'false'};
  var dk: array<f32, ${d.dk}>;
  var dv: array<f32, ${d.dv}>;
  // Causal: query tiles wholly before this key block see none of its keys.
  let istart = ${a.causal ? `(j0 / ${u(TQ)}) * ${u(TQ)}` : '0u'};
  for (var g = 0u; g < ${u(d.group)}; g++) {
    let qbase = (bi * ${u(d.h)} + hk * ${u(d.group)} + g) * ${u(d.sq)};
    for (var i0 = istart; i0 < ${u(d.sq)}; i0 += ${u(TQ)}) {
      let n = min(${u(TQ)}, ${u(d.sq)} - i0);
      workgroupBarrier();
      ${loadRows('qs', read('q', `(qbase + i0) * ${u(d.dk)} + $`), d.dk)}
      for (var t = lid; t < n * ${u(d.dv)}; t += ${u(R)}) { dos[t] = ${read('ct', `(qbase + i0 + t / ${u(d.dv)}) * ${u(w)} + t % ${u(d.dv)}`)}; }
      for (var t = lid; t < n; t += ${u(R)}) {
        ls[t] = ${read('packed', `(qbase + i0 + t) * ${u(w)} + ${u(d.dv)}`)} + ${read('packed', `(qbase + i0 + t) * ${u(w)} + ${u(d.dv + 1)}`)};
        dls[t] = ${read('delta', 'qbase + i0 + t')};
      }
      workgroupBarrier();
      for (var ii = 0u; ii < n; ii++) {
        let i = i0 + ii;
        ${a.causal ? 'if (jr > i) { continue; }' : ''}
        var qk = 0.0;
        for (var c = 0u; c < ${u(d.dk)}; c++) { qk += qs[ii * ${u(d.dk)} + c] * kr[c]; }
        let s = select(qk * ${lit(a.scale)}, ${lit(PADDING_SCORE)}, padded);
        let p = ${prob('s', 'ls[ii]', a.causal ? 'i + 1u' : u(d.sk))};
        var dp = 0.0;
        for (var c = 0u; c < ${u(d.dv)}; c++) {
          let g_o = dos[ii * ${u(d.dv)} + c];
          dv[c] = dv[c] + p * g_o;
          dp += g_o * vr[c];
        }
        let ds = select(p * (dp - dls[ii]), 0.0, padded);
        for (var c = 0u; c < ${u(d.dk)}; c++) { dk[c] = dk[c] + ds * qs[ii * ${u(d.dk)} + c]; }
      }
    }
  }
  if (j < ${u(d.sk)}) {
    let o = ko * ${u(wkv)};
    for (var c = 0u; c < ${u(d.dk)}; c++) { ${st(`o + c`, `dk[c] * ${lit(a.scale)}`)} }
    for (var c = 0u; c < ${u(d.dv)}; c++) { ${st(`o + ${u(d.dk)} + c`, `dv[c]`)} }
  }
}
`;
  return { wgsl, bound, workgroups: foldGroups(total, ctx) };
}
