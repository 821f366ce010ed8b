// WGSL for every op in the registry. Each emitter bakes the node's shapes into the text as
// constants, so one pipeline serves every node with the same op, attributes and shapes.
import { L_COLUMNS } from '../ir/attention.ts';
import { OPS, type OpName } from '../ir/ops.ts';
import { strides } from '../ir/shape.ts';
import { numel, type Node, type Value } from '../ir/types.ts';
import type { EmitContext, KernelSource } from './kernel.ts';
import { emitAttention, emitAttentionDkv, emitAttentionDq } from './attention.ts';
import { emitLinearCrossEntropy } from './linear-ce.ts';
import { emitMatmul } from './matmul.ts';
import { access, declare, defaultElem, type Access } from './storage.ts';

const WG = 256;

/** A WGSL f32 literal (WGSL has no inf/nan literals: clamp to the largest finite f32). */
export function lit(x: number): string {
  if (Number.isNaN(x)) throw new Error('WGSL has no NaN literal');
  // 3.4028234e38 is the largest 8-digit decimal below f32's maximum (3.40282347e38 rounds above it).
  if (Math.abs(x) >= 3.4028234e38) return x < 0 ? '-3.4028234e38' : '3.4028234e38';
  const v = x;
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return `${v}.0`;
  const s = v.toPrecision(9);
  return s.includes('e') || s.includes('.') ? s : `${s}.0`;
}

const u = (n: number) => `${n}u`;

function elemType(v: Value): string {
  return v.type.dtype === 'i32' ? 'i32' : 'f32';
}

/** The scalar accesses of a kernel's bindings: in0 … in(k-1), then `out` (written). */
export function bindings(bound: readonly Value[], out: Value, ctx: EmitContext): { ins: Access[]; out: Access } {
  const elem = ctx.elem ?? defaultElem;
  return { ins: bound.map((v, i) => access(i, `in${i}`, elem(v))), out: access(bound.length, 'out', elem(out), { written: true }) };
}

export function header(bound: readonly Value[], out: Value, ctx: EmitContext): string {
  const b = bindings(bound, out, ctx);
  return declare([...b.ins, b.out]);
}

/** The statement `out[e] = v;` in the output's storage. */
export function storeOut(node: Node, ctx: EmitContext): (e: string, v: string) => string {
  return bindings([], node.out, ctx).out.st;
}

/** `groups` workgroups (at least one) in a row, folded into 2-D past the per-dimension limit. */
export function foldGroups(groups: number, ctx: EmitContext): readonly [number, number, number] {
  const g = Math.max(1, groups);
  const x = Math.min(g, ctx.maxWorkgroupsPerDimension);
  return [x, Math.ceil(g / x), 1];
}

/** A 1-D grid of `total` invocations in workgroups of WG, folded into 2-D past the per-dimension limit. */
export function grid1d(total: number, ctx: EmitContext): readonly [number, number, number] {
  return foldGroups(Math.ceil(total / WG), ctx);
}

/**
 * A kernel over the output's elements, one invocation each: `body` runs with `i` the flat index,
 * already bounds-checked against `n`.
 */
function kernel1d(bound: Value[], node: Node, n: number, ctx: EmitContext, body: string): KernelSource {
  return {
    bound,
    workgroups: grid1d(n, ctx),
    wgsl: `${header(bound, node.out, ctx)}
${MAIN_1D}
  if (i >= ${u(n)}) { return; }
${body.replace(/^\n/, '')}
}
`,
  };
}

const MAIN_1D = `@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;`;

/**
 * WGSL statements computing, from `idx` (flat index into `shape`), the flat index into an operand
 * whose element (c0, c1, …) lives at Σ c_d·str[d]; str[d] = 0 broadcasts along d.
 */
export function gatherIndex(name: string, idx: string, shape: readonly number[], str: readonly number[]): string {
  if (!shape.length) return `let ${name} = 0u;`;
  const parts: string[] = [`var ${name} = 0u;`, `var ${name}_r = ${idx};`];
  for (let d = shape.length - 1; d >= 0; d--) {
    const c = d > 0 ? `${name}_r % ${u(shape[d])}` : `${name}_r`;
    if (str[d] !== 0) parts.push(`${name} += (${c}) * ${u(str[d])};`);
    if (d > 0) parts.push(`${name}_r = ${name}_r / ${u(shape[d])};`);
  }
  return parts.join(' ');
}

/** Strides of `inShape` read as a broadcast to `outShape` (0 along broadcast dims). */
export function broadcastStrides(inShape: readonly number[], outShape: readonly number[]): number[] {
  const s = strides(inShape);
  const off = outShape.length - inShape.length;
  return outShape.map((_, d) => (d < off || inShape[d - off] === 1 ? 0 : s[d - off]));
}

/**
 * Binds a node's operands: constants become literals, operands sharing storage share a binding,
 * and an operand stored where the output goes is read through `out` (in-place, elementwise).
 * `names[i]` is the WGSL array operand i is read from; `arg(i, index)` reads it (a constant
 * ignores the index). Every emitter goes through here, so none binds an inlined scalar (it has
 * no storage) or binds one storage twice. Only elementwise kernels (`inPlace`) may read an
 * operand through `out`: anywhere else an invocation would read elements another one overwrites.
 */
export function split(
  node: Node,
  ctx: EmitContext,
  inPlace = false,
): { bound: Value[]; names: string[]; arg: (i: number, index: string) => string; st: (e: string, v: string) => string } {
  const key = ctx.storage ?? ((v: Value) => v.id);
  const outKey = key(node.out);
  const bound: Value[] = [];
  const names = node.inputs.map((v, i) => {
    if (ctx.constants.has(v.id)) return '';
    if (key(v) === outKey) {
      if (!inPlace) throw new Error(`${node.op} ${node.out.name}: operand #${i} "${v.name}" shares the output's storage, and only elementwise kernels run in place`);
      return 'out';
    }
    let slot = bound.findIndex((b) => key(b) === key(v));
    if (slot < 0) {
      bound.push(v);
      slot = bound.length - 1;
    }
    return `in${slot}`;
  });
  const acc = bindings(bound, node.out, ctx);
  const reader = (name: string) => (name === 'out' ? acc.out : acc.ins[Number(name.slice(2))]);
  return {
    bound,
    names,
    arg: (i, index) => (names[i] === '' ? constLit(node.inputs[i], ctx.constants.get(node.inputs[i].id)!) : reader(names[i]).ld(index)),
    st: acc.out.st,
  };
}

/** An inlined scalar constant: an i32 one (an index) stays an integer. */
function constLit(v: Value, x: number): string {
  return v.type.dtype === 'i32' ? `${Math.trunc(x)}i` : lit(x);
}

// ---------------------------------------------------------------------------------------------

function emitMap(node: Node, ctx: EmitContext): KernelSource {
  const def = OPS[node.op as OpName].wgsl;
  if (def.kind !== 'map') throw new Error(`${node.op} is not elementwise`);
  const out = node.out.type.shape;
  const n = numel(out);
  const { bound, arg, st } = split(node, ctx, true);
  const lets: string[] = [];
  const args = node.inputs.map((v, k) => {
    if (ctx.constants.has(v.id)) return arg(k, '');
    if (v.type.shape.length === out.length && v.type.shape.every((d, j) => d === out[j])) return arg(k, 'i');
    lets.push(gatherIndex(`j${k}`, 'i', out, broadcastStrides(v.type.shape, out)));
    return arg(k, `j${k}`);
  });
  const vals = args.map((a, k) => {
    lets.push(`let a${k} = ${a};`);
    return `a${k}`;
  });
  const expr = (def.expr as (a: readonly string[], attrs: unknown) => string)(vals, node.attrs);
  return kernel1d(bound, node, n, ctx, `
  ${lets.join('\n  ')}
  ${st(`i`, `${expr}`)}`);
}

function emitFill(node: Node, ctx: EmitContext): KernelSource {
  const a = node.attrs as { value: number };
  const n = numel(node.out.type.shape);
  const value = node.out.type.dtype === 'i32' ? `${Math.trunc(a.value)}` : lit(a.value);
  const st = storeOut(node, ctx);
  return kernel1d([], node, n, ctx, `
  ${st(`i`, `${value}`)}`);
}

function emitReduce(node: Node, ctx: EmitContext): KernelSource {
  const x = node.inputs[0];
  const shape = x.type.shape;
  // count_nonfinite sums, over every element, 1 where the exponent bits are all ones (±Inf, NaN).
  const count = node.op === 'count_nonfinite';
  const axes = new Set(count ? shape.map((_, d) => d) : (node.attrs as { axes: readonly number[] }).axes);
  const xs = strides(shape);
  const keptDims = shape.map((_, d) => d).filter((d) => !axes.has(d));
  const redDims = shape.map((_, d) => d).filter((d) => axes.has(d));
  const nOut = keptDims.reduce((a, d) => a * shape[d], 1);
  const nRed = redDims.reduce((a, d) => a * shape[d], 1);
  const isMax = node.op === 'max';
  const { bound, arg, st } = split(node, ctx);
  const base = gatherIndex('base', 'i', keptDims.map((d) => shape[d]), keptDims.map((d) => xs[d]));
  // Reducing a contiguous tail (the common case: the last axis) is a plain strided loop.
  const tail = redDims.length > 0 && redDims.every((d, k) => d === shape.length - redDims.length + k);
  const read = (index: string) => (count ? `select(0.0, 1.0, (bitcast<u32>(f32(${arg(0, index)})) & 0x7f800000u) == 0x7f800000u)` : arg(0, index));
  const body = tail
    ? `let v = ${read('base + j')};`
    : `${gatherIndex('ro', 'j', redDims.map((d) => shape[d]), redDims.map((d) => xs[d]))} let v = ${read('base + ro')};`;
  if (isMax || nRed <= SUM_BLOCK) {
    return kernel1d(bound, node, nOut, ctx, `
  ${base}
  var acc = ${isMax ? lit(-Infinity) : '0.0'};
  for (var j = 0u; j < ${u(nRed)}; j++) {
    ${body}
    acc = ${isMax ? 'max(acc, v)' : 'acc + v'};
  }
  ${st(`i`, `acc`)}`);
  }
  // A long f32 sum in one running total loses about √n·ε of it (a mean-squared-error loss over
  // 512×768 elements was off by 6e-5 relative): sum blocks of SUM_BLOCK terms, then the blocks, so
  // no running total sees more than SUM_BLOCK + n/SUM_BLOCK additions.
  return kernel1d(bound, node, nOut, ctx, `
  ${base}
  var acc = 0.0;
  for (var j0 = 0u; j0 < ${u(nRed)}; j0 += ${u(SUM_BLOCK)}) {
    var part = 0.0;
    for (var j = j0; j < min(j0 + ${u(SUM_BLOCK)}, ${u(nRed)}); j++) {
      ${body}
      part = part + v;
    }
    acc = acc + part;
  }
  ${st(`i`, `acc`)}`);
}

/** Terms per partial sum in a long reduction (emitReduce). */
const SUM_BLOCK = 256;

/** out[i] = in0[f(i)] for an index remap computed from output coordinates. */
function emitRemap(node: Node, ctx: EmitContext, srcIndex: (c: readonly string[]) => string, guard?: (c: readonly string[]) => string): KernelSource {
  const out = node.out.type.shape;
  const n = numel(out);
  const coords = out.map((_, d) => `c${d}`);
  const decompose: string[] = ['var r = i;'];
  for (let d = out.length - 1; d >= 0; d--) {
    decompose.push(d > 0 ? `let c${d} = r % ${u(out[d])}; r = r / ${u(out[d])};` : `let c${d} = r;`);
  }
  const { bound, arg, st } = split(node, ctx);
  const read = arg(0, srcIndex(coords));
  const zero = elemType(node.out) === 'i32' ? '0' : '0.0';
  const body = guard
    ? `if (${guard(coords)}) { ${st(`i`, `${read}`)} } else { ${st(`i`, `${zero}`)} }`
    : `${st(`i`, `${read}`)}`;
  return kernel1d(bound, node, n, ctx, `
  ${out.length ? decompose.join(' ') : ''}
  ${body}`);
}

function sumTerms(terms: readonly string[]): string {
  const t = terms.filter((s) => s !== '');
  return t.length ? t.join(' + ') : '0u';
}

function emitPermute(node: Node, ctx: EmitContext): KernelSource {
  const perm = (node.attrs as { perm: readonly number[] }).perm;
  const xs = strides(node.inputs[0].type.shape);
  return emitRemap(node, ctx, (c) => sumTerms(perm.map((p, d) => `${c[d]} * ${u(xs[p])}`)));
}

function emitBroadcast(node: Node, ctx: EmitContext): KernelSource {
  const bs = broadcastStrides(node.inputs[0].type.shape, node.out.type.shape);
  return emitRemap(node, ctx, (c) => sumTerms(bs.map((s, d) => (s ? `${c[d]} * ${u(s)}` : ''))));
}

function emitSlice(node: Node, ctx: EmitContext): KernelSource {
  const starts = (node.attrs as { starts: readonly number[] }).starts;
  const xs = strides(node.inputs[0].type.shape);
  return emitRemap(node, ctx, (c) => sumTerms(c.map((cd, d) => `(${cd} + ${u(starts[d])}) * ${u(xs[d])}`)));
}

function emitPad(node: Node, ctx: EmitContext): KernelSource {
  const before = (node.attrs as { before: readonly number[] }).before;
  const shape = node.inputs[0].type.shape;
  const xs = strides(shape);
  return emitRemap(
    node,
    ctx,
    (c) => sumTerms(c.map((cd, d) => `(${cd} - ${u(before[d])}) * ${u(xs[d])}`)),
    (c) => c.map((cd, d) => `${cd} >= ${u(before[d])} && ${cd} < ${u(before[d] + shape[d])}`).join(' && ') || 'true',
  );
}

function emitConcat(node: Node, ctx: EmitContext): KernelSource {
  const axis = (node.attrs as { axis: number }).axis;
  const out = node.out.type.shape;
  const n = numel(out);
  const { bound, arg, st } = split(node, ctx);
  const decompose: string[] = ['var r = i;'];
  for (let d = out.length - 1; d >= 0; d--) decompose.push(d > 0 ? `let c${d} = r % ${u(out[d])}; r = r / ${u(out[d])};` : `let c${d} = r;`);
  let offset = 0;
  const branches = node.inputs.map((v, j) => {
    const vs = strides(v.type.shape);
    const start = offset;
    offset += v.type.shape[axis];
    const idx = sumTerms(v.type.shape.map((_, d) => (d === axis ? `(c${d} - ${u(start)}) * ${u(vs[d])}` : `c${d} * ${u(vs[d])}`)));
    return `if (c${axis} < ${u(offset)}) { ${st(`i`, `${arg(j, idx)}`)} return; }`;
  });
  return kernel1d(bound, node, n, ctx, `
  ${decompose.join(' ')}
  ${branches.join('\n  ')}`);
}

function emitGather(node: Node, ctx: EmitContext): KernelSource {
  const table = node.inputs[0];
  const rows = table.type.shape[0];
  const row = numel(table.type.shape.slice(1));
  const n = numel(node.out.type.shape);
  const { bound, arg, st } = split(node, ctx);
  return kernel1d(bound, node, n, ctx, `
  let k = u32(clamp(${arg(1, `i / ${u(row)}`)}, 0, ${rows - 1}));
  ${st(`i`, `${arg(0, `k * ${u(row)} + i % ${u(row)}`)}`)}`);
}

/** Columns one scatter_add invocation sums at once (held in a private array). */
export const SCATTER_COLS = 32;

function emitScatterAdd(node: Node, ctx: EmitContext): KernelSource {
  const [idx, src] = node.inputs;
  const count = numel(idx.type.shape);
  const row = numel(src.type.shape.slice(idx.type.shape.length));
  const rows = (node.attrs as { rows: number }).rows;
  const w = Math.min(row, SCATTER_COLS);
  const chunks = Math.ceil(row / w);
  const { bound, arg, st } = split(node, ctx);
  // WGSL has no float atomics, so each output element is owned by one invocation, which sums the
  // source rows whose index hits its row, in index order (deterministic, and the same sum as a
  // plain loop). One invocation owns a row's run of w columns: it reads the indices once for w
  // sums, not once per element (an embedding gradient of 8192×96 from 512 tokens: 12.6M index
  // reads instead of 403M). Neighbouring invocations are neighbouring rows, reading the same index.
  const tail = chunks * w === row ? '' : `if (c0 + c >= ${u(row)}) { break; } `;
  return kernel1d(bound, node, rows * chunks, ctx, `
  let hit = i % ${u(rows)};
  let c0 = (i / ${u(rows)}) * ${u(w)};
  var acc: array<f32, ${w}>;
  for (var j = 0u; j < ${u(count)}; j++) {
    if (${arg(0, 'j')} == i32(hit)) {
      let at = j * ${u(row)} + c0;
      for (var c = 0u; c < ${u(w)}; c++) { ${tail}acc[c] += ${arg(1, 'at + c')}; }
    }
  }
  for (var c = 0u; c < ${u(w)}; c++) { ${tail}${st(`hit * ${u(row)} + c0 + c`, 'acc[c]')} }`);
}

function emitOneHot(node: Node, ctx: EmitContext): KernelSource {
  const classes = (node.attrs as { classes: number }).classes;
  const n = numel(node.out.type.shape);
  const { bound, arg, st } = split(node, ctx);
  return kernel1d(bound, node, n, ctx, `
  ${st(`i`, `select(0.0, 1.0, ${arg(0, `i / ${u(classes)}`)} == i32(i % ${u(classes)}))`)}`);
}

// ---------------------------------------------------------------------------------------------
// Row kernels: cross-entropy and the norms (issue 14). One workgroup of ROW_WG invocations per
// row: each invocation strides over the row (j = lid, lid + ROW_WG, …), then a tree reduction in
// workgroup memory combines the partials (a row of 4096 is 64 serial terms and 6 levels, not one
// running total). The row index comes from workgroup_id only, so it is uniform and every barrier
// is in uniform control flow.
//
// On a CPU adapter (lavapipe) a barrier is a switch through every invocation of the workgroup, and
// a norm's row pays 8 of them per sum: a row of up to CPU_ROW_MAX is then one invocation's serial
// loop instead (the same body, with a stride of 1 and sums that are the invocation's own), 64 rows
// to a workgroup and no barrier. A serial sum of D terms keeps the same (D + 8)·ulp bound.

const ROW_WG = 64;
/** The widest row one invocation sums alone on a CPU adapter. */
export const CPU_ROW_MAX = 1024;

const ROW_PRELUDE = `const RS = ${ROW_WG}u;
var<workgroup> red: array<f32, ${ROW_WG}>;

fn wsum(v: f32, l: u32) -> f32 {
  red[l] = v;
  workgroupBarrier();
  for (var s = ${ROW_WG / 2}u; s > 0u; s = s >> 1u) {
    if (l < s) { red[l] = red[l] + red[l + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn wmax(v: f32, l: u32) -> f32 {
  red[l] = v;
  workgroupBarrier();
  for (var s = ${ROW_WG / 2}u; s > 0u; s = s >> 1u) {
    if (l < s) { red[l] = max(red[l], red[l + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;

/** One invocation per row, no workgroup memory or barrier: the CPU adapter's row kernel (see above). */
const SERIAL_ROW_PRELUDE = `const RS = 1u;
fn wsum(v: f32, l: u32) -> f32 { return v; }
fn wmax(v: f32, l: u32) -> f32 { return v; }`;

function rowKernel(bound: Value[], node: Node, rows: number, width: number, ctx: EmitContext, body: string): KernelSource {
  // As the matmul heuristic: an adapter not said to be a GPU is taken for a CPU one.
  if ((ctx.cpuAdapter ?? true) && width <= CPU_ROW_MAX) {
    return {
      bound,
      workgroups: grid1d(rows, ctx),
      wgsl: `${header(bound, node.out, ctx)}
${SERIAL_ROW_PRELUDE}

${MAIN_1D}
  let row = i;
  let l = 0u;
  if (row >= ${u(rows)}) { return; }
${body.replace(/^\n/, '')}
}
`,
    };
  }
  return {
    bound,
    workgroups: foldGroups(rows, ctx), // one workgroup per row
    wgsl: `${header(bound, node.out, ctx)}
${ROW_PRELUDE}

@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= ${u(rows)}) { return; }
${body.replace(/^\n/, '')}
}
`,
  };
}

/** `for` over this invocation's elements j of a row of `width`. */
const rowLoop = (width: number, body: string) => `for (var j = l; j < ${u(width)}; j += RS) {
    ${body}
  }`;

/**
 * cross_entropy: per row an online max / Σexp over the invocation's stride, combined as
 * M = max mᵢ, S = Σ sᵢ·exp(mᵢ − M); L = M + log S. A label outside [0, C) (the ignore index −100
 * or any other) gives (0, L, 0), and is never used as an index: the logit read is clamped.
 */
function emitCrossEntropy(node: Node, ctx: EmitContext): KernelSource {
  const [x] = node.inputs;
  const c = x.type.shape[x.type.shape.length - 1];
  const rows = numel(x.type.shape) / c;
  const { bound, arg, st } = split(node, ctx);
  return rowKernel(bound, node, rows, c, ctx, `
  let base = row * ${u(c)};
  var m = ${lit(-Infinity)};
  var s = 0.0;
  ${rowLoop(c, `let v = ${arg(0, 'base + j')};
    if (v > m) { s = s * exp(m - v); m = v; }
    s = s + exp(v - m);`)}
  let mx = wmax(m, l);
  let lse = mx + log(wsum(s * exp(m - mx), l));
  if (l == 0u) {
    let k = ${arg(1, 'row')};
    let ok = k >= 0i && k < ${c}i;
    let picked = ${arg(0, `base + u32(clamp(k, 0i, ${c - 1}i))`)};
    ${st(`row * 3u`, `select(0.0, lse - picked, ok)`)}
    ${st(`row * 3u + 1u`, `lse`)}
    ${st(`row * 3u + 2u`, `select(0.0, 1.0, ok)`)}
  }`);
}

/** cross_entropy_grad: elementwise over [rows, C]; softmax recomputed from the saved L. */
function emitCrossEntropyGrad(node: Node, ctx: EmitContext): KernelSource {
  const [x] = node.inputs;
  const c = x.type.shape[x.type.shape.length - 1];
  const n = numel(x.type.shape);
  const { bound, arg, st } = split(node, ctx);
  return kernel1d(bound, node, n, ctx, `
  let r = i / ${u(c)};
  let w = ${arg(2, 'r * 3u + 2u')};
  let c0 = ${arg(3, 'r * 3u')} * w;
  let p = exp(${arg(0, 'i')} - ${arg(2, 'r * 3u + 1u')});
  let hit = ${arg(1, 'r')} == i32(i % ${u(c)});
  ${st(`i`, `(c0 + ${arg(3, 'r * 3u + 1u')}) * p - select(0.0, c0, hit)`)}`);
}

/** A norm's per-feature operand (weight or bias): [D] indexed by j, or a scalar. */
function featureArg(node: Node, k: number, arg: (i: number, index: string) => string): string {
  return arg(k, node.inputs[k].type.shape.length === 0 ? '0u' : 'j');
}

/** mean (LayerNorm; `let mu = 0.0` for RMSNorm) and rstd of the row at `base`. */
function normStats(centered: boolean, width: number, x: (index: string) => string): string {
  const mean = centered
    ? `var sx = 0.0;
  ${rowLoop(width, `sx = sx + ${x('base + j')};`)}
  let mu = wsum(sx, l) / ${lit(width)};`
    : 'let mu = 0.0;';
  return `${mean}
  var sv = 0.0;
  ${rowLoop(width, `let d = ${x('base + j')} - mu; sv = sv + d * d;`)}
  let rstd = inverseSqrt(wsum(sv, l) / ${lit(width)} + EPS);`;
}

/** rms_norm (x, w) and layer_norm (x, w, b): statistics, then each element. */
function emitNorm(node: Node, ctx: EmitContext): KernelSource {
  const x = node.inputs[0];
  const width = x.type.shape[x.type.shape.length - 1];
  const rows = numel(x.type.shape) / width;
  const centered = node.op === 'layer_norm';
  const { bound, arg, st } = split(node, ctx);
  const xs = (index: string) => arg(0, index);
  const bias = centered ? ` + ${featureArg(node, 2, arg)}` : '';
  return rowKernel(bound, node, rows, width, ctx, `
  const EPS = ${lit((node.attrs as { eps: number }).eps)};
  let base = row * ${u(width)};
  ${normStats(centered, width, xs)}
  ${rowLoop(width, `${st(`base + j`, `(${xs('base + j')} - mu) * rstd * ${featureArg(node, 1, arg)}${bias}`)}`)}`);
}

/** rms_norm_grad / layer_norm_grad (x, w, ct): statistics again, mean(g) and mean(g·x̂), then dx. */
function emitNormGrad(node: Node, ctx: EmitContext): KernelSource {
  const x = node.inputs[0];
  const width = x.type.shape[x.type.shape.length - 1];
  const rows = numel(x.type.shape) / width;
  const centered = node.op === 'layer_norm_grad';
  const { bound, arg, st } = split(node, ctx);
  const xs = (index: string) => arg(0, index);
  const g = `${arg(2, 'base + j')} * ${featureArg(node, 1, arg)}`;
  return rowKernel(bound, node, rows, width, ctx, `
  const EPS = ${lit((node.attrs as { eps: number }).eps)};
  let base = row * ${u(width)};
  ${normStats(centered, width, xs)}
  var sg = 0.0;
  var sgx = 0.0;
  ${rowLoop(width, `let g = ${g}; sg = sg + g; sgx = sgx + g * (${xs('base + j')} - mu) * rstd;`)}
  let mg = ${centered ? `wsum(sg, l) / ${lit(width)}` : '0.0'};
  let mgx = wsum(sgx, l) / ${lit(width)};
  ${rowLoop(width, `let g = ${g}; ${st(`base + j`, `rstd * (g - mg - (${xs('base + j')} - mu) * rstd * mgx)`)}`)}`);
}

/** D_i = Σ_c ct_ic·O_ic − ct_i,dv (c < dv = w − 2): one invocation per row of the packed attention output. */
function emitAttentionDelta(node: Node, ctx: EmitContext): KernelSource {
  const w = node.inputs[0].type.shape[node.inputs[0].type.shape.length - 1];
  const n = numel(node.out.type.shape);
  const { bound, arg, st } = split(node, ctx);
  return kernel1d(bound, node, n, ctx, `
  let base = i * ${u(w)};
  var acc = 0.0;
  for (var c = 0u; c < ${u(w - L_COLUMNS)}; c++) { acc += ${arg(1, 'base + c')} * ${arg(0, 'base + c')}; }
  ${st(`i`, `acc - ${arg(1, `base + ${u(w - L_COLUMNS)}`)}`)}`);
}

const EMITTERS = {
  fill: emitFill,
  reduce: emitReduce,
  permute: emitPermute,
  broadcast: emitBroadcast,
  slice: emitSlice,
  pad: emitPad,
  concat: emitConcat,
  gather: emitGather,
  scatter_add: emitScatterAdd,
  one_hot: emitOneHot,
  matmul: emitMatmul,
  cross_entropy: emitCrossEntropy,
  cross_entropy_grad: emitCrossEntropyGrad,
  linear_cross_entropy: emitLinearCrossEntropy,
  norm: emitNorm,
  norm_grad: emitNormGrad,
  attention: emitAttention,
  attention_delta: emitAttentionDelta,
  attention_dq: emitAttentionDq,
  attention_dkv: emitAttentionDkv,
} as const;

/** The kernel for one node; throws for views, which need none. */
export function emitKernel(node: Node, ctx: EmitContext): KernelSource {
  const slot = OPS[node.op as OpName].wgsl;
  if (slot.kind === 'view') throw new Error(`${node.op} is a view: it needs no kernel`);
  if (slot.kind === 'map') return emitMap(node, ctx);
  return EMITTERS[slot.emitter](node, ctx);
}

