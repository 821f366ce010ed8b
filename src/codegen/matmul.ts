// The matmul kernels: C[.., m, n] = op(A)[.., m, k] · op(B)[.., k, n], op = transpose or not.
//
// Portable (every adapter): one invocation computes a TM×TN = 4×8 block of C in registers (two
// vec4 per row), 4×8 invocations a workgroup (a 32×32 block of C), no workgroup memory, no
// barriers:
//   - each operand is read as vec4 along the dimension it is contiguous in (k for A and Bᵀ, m for
//     Aᵀ, n for B) whenever that dimension is a multiple of 4, so every quad of k costs TM + TN
//     vec4 loads for 4·TM·TN multiply-adds whatever the transpose flags: dy·Wᵀ and xᵀ·dy run as
//     fast as x·W, and no transpose is ever materialised; other operands use scalar loads;
//   - loads clamp their row / column to the matrix, so the k loop has no branches; stores are
//     guarded only where m or n is not a multiple of the block; the k % 4 leftover steps run
//     after the loop (all of k, one step at a time, when neither operand can be read as vec4).
// Subgroups (ctx.subgroupSize 8, i.e. lavapipe), two variants, both sharing loads across the 8
// lanes of a subgroup with subgroupBroadcast:
//   - row lanes (the default where k and n are multiples of 4 and m ≥ 16, unless A is transposed
//     and column lanes fit too: see emitMatmul): a workgroup is one
//     subgroup computing a 32×16 block of C, each lane 4 rows × the same 16 columns; per quad of
//     k a lane loads its 4 rows of op(A) (4 vec4) and one of the quad's 16 vec4 of op(B), which
//     the broadcasts hand round: 4 + 2 loads for 256 multiply-adds;
//   - column lanes (small m, e.g. dB = (x·A)ᵀ·dy with m = r; n not a multiple of 4): 8×8 per
//     invocation, the lanes of a subgroup share their 8 rows of C, so each lane loads one of those
//     rows' vec4 of A per quad and broadcasts it: 1 + 8 loads per quad for 256.
//
// Why this shape: on lavapipe (llvmpipe) every storage load an invocation makes is a loop over
// the 8 SIMD lanes with a bounds check per component (~1.4 ns per lane per vec4 here), and a
// barrier is a coroutine switch, so cost is loads per multiply-add; the register arithmetic
// alone reaches ~70 GFLOP per 2 CPU-seconds. A load every lane makes at the same address costs
// as much as any other (measured: giving each lane its own rows and loading B uniformly was 2–4×
// slower than broadcasting it). Bigger blocks (8×8 portable, 16×8 column lanes, 8×16 or 4×32 row
// lanes) or two quads per iteration were no faster: their live values spill around the loads.
// Measured 512×768 · 768×768 (x·W), one dispatch, median of 15 after warm-up, 2 idle cores, the
// wait through quietly() (src/runtime/gpu.ts; with Dawn's busy poll every figure is ~half):
//   portable 4×8 vec4        16.8 GFLOP/s
//   column lanes 8×8         39.1
//   row lanes 4×16 (32×16)   54.9      (row lanes 4×32: 57.2, 8×16: 49.7, 2×32: 51.1)
// (the issue's textbook 16×16 workgroup-memory tile: ~0.7 GFLOP/s). On a discrete GPU the
// register-blocked kernel reads through L1/L2 rather than workgroup memory: sane, not peak.
// There the heuristic takes the workgroup-memory tiled kernels of matmul-tiled.ts instead.
//
// The kernels are variants in one registry (MATMUL_VARIANTS below: register, row-lanes and its
// 4×32 and 8×16 blocks, column-lanes, tiled, tiled-small), each saying whether it needs subgroups
// and which nodes it fits. emitMatmul runs a tuned choice for the node's shape key (`lorafa tune`, EmitContext
// .matmulChoice) when there is one and it fits, else the heuristic's; `--kernels portable` keeps
// both to the variants without subgroups.
import { OPS } from '../ir/ops.ts';
import { strides } from '../ir/shape.ts';
import { numel, type Node, type Value } from '../ir/types.ts';
import type { EmitContext, KernelSource } from './kernel.ts';
import { emitMatmulTiled, TILED_LARGE, TILED_SMALL, tiledFits, tiledGrid } from './matmul-tiled.ts';
import { access, declare, defaultElem, type Access, type ElemKind } from './storage.ts';

export interface MatmulTiling {
  /** Rows of C per invocation: a multiple of 4 (Aᵀ is read as vec4 along m). */
  readonly tm: number;
  /** Columns of C per invocation: a multiple of 4 (accumulators are vec4 along n). */
  readonly tn: number;
  /** Workgroup shape: wgx invocations along n, wgy along m. */
  readonly wgx: number;
  readonly wgy: number;
}

/** Rows of C per lane and columns per subgroup in the row-lane variant. */
export const ROW_LANES: RowLaneTile = { tm: 4, tn: 16 };

/**
 * A row-lane block: TM rows of C per lane (a multiple of 4), TN columns per subgroup (a multiple
 * of 8). 4×16 is the heuristic's; the others are candidates `lorafa tune` measures, since which
 * wins depends on the shape and the CPU (docs/performance.md: loads per multiply-add fall with
 * both, spills rise).
 */
export interface RowLaneTile {
  readonly tm: number;
  readonly tn: number;
}

/** The row-lane blocks lorafa has besides 4×16, by variant name. */
export const ROW_LANE_TILES: Readonly<Record<string, RowLaneTile>> = {
  'row-lanes-4x32': { tm: 4, tn: 32 },
  'row-lanes-8x16': { tm: 8, tn: 16 },
};

/** 4×8 per invocation, 4×8 invocations: each workgroup covers 32×32 of C. */
export const MATMUL_TILING: MatmulTiling = { tm: 4, tn: 8, wgx: 4, wgy: 8 };

/**
 * With subgroups of 8 (lavapipe): wgx must be the subgroup size, so each subgroup is one row of
 * invocations that share their rows of C; tm is a multiple of 8 (one A row per lane).
 */
export const MATMUL_SUBGROUP_TILING: MatmulTiling = { tm: 8, tn: 8, wgx: 8, wgy: 4 };

const u = (x: number) => `${x}u`;
const XYZW = ['x', 'y', 'z', 'w'];

/** Strides of `inShape` read as a broadcast to `outShape` (0 along broadcast dims). */
export function broadcastStrides(inShape: readonly number[], outShape: readonly number[]): number[] {
  const s = strides(inShape);
  const off = outShape.length - inShape.length;
  return outShape.map((_, d) => (d < off || inShape[d - off] === 1 ? 0 : s[d - off]));
}

/** `let name = Σ coord_d(idx)·str[d]` over the batch dims of `shape`. */
export function batchOffset(name: string, idx: string, shape: readonly number[], str: readonly number[]): string {
  if (!shape.length || str.every((s) => s === 0)) return `let ${name} = 0u;`;
  const parts = [`var ${name} = 0u;`, `var ${name}_r = ${idx};`];
  for (let d = shape.length - 1; d >= 0; d--) {
    const c = d > 0 ? `${name}_r % ${u(shape[d])}` : `${name}_r`;
    if (str[d] !== 0) parts.push(`${name} += (${c}) * ${u(str[d])};`);
    if (d > 0) parts.push(`${name}_r = ${name}_r / ${u(shape[d])};`);
  }
  return parts.join(' ');
}

/** A matmul node's operands, flags, sizes and per-batch operand offsets (element strides). */
export function matmulDims(node: Node) {
  const [a, b] = node.inputs;
  const { transA, transB } = node.attrs as { transA: boolean; transB: boolean };
  const out = node.out.type.shape;
  const m = out[out.length - 2];
  const n = out[out.length - 1];
  const ra = a.type.shape.length;
  const k = transA ? a.type.shape[ra - 2] : a.type.shape[ra - 1];
  const batch = out.slice(0, -2);
  const aStr = broadcastStrides(a.type.shape.slice(0, -2), batch).map((s) => s * m * k);
  const bStr = broadcastStrides(b.type.shape.slice(0, -2), batch).map((s) => s * k * n);
  return { a, b, transA, transB, m, n, k, batch, nb: numel(batch), aStr, bStr };
}

/** The output never aliases an operand (an invocation would read elements another one has overwritten). */
export function checkOutputApart(node: Node, key: (v: Value) => number): void {
  for (const [i, v] of node.inputs.entries()) {
    if (key(v) === key(node.out)) {
      throw new Error(`matmul ${node.out.name}: operand #${i} "${v.name}" shares the output's storage, and only elementwise kernels run in place`);
    }
  }
}

/**
 * One way to compute a matmul node. `fits` says whether this variant takes the node on the device
 * `ctx` describes (features, limits, the shapes it was written for); `emit` gives its kernel.
 * Every variant binds the same operands in the same order (A, B unless they share storage, then
 * C), so a dispatch can swap one for another (kernel-plan.ts's applyMatmulChoices).
 */
export interface MatmulVariant {
  readonly name: string;
  /** Needs no optional feature (subgroups): `--kernels portable` keeps to these. */
  readonly portable: boolean;
  fits(node: Node, ctx: EmitContext): boolean;
  emit(node: Node, ctx: EmitContext): KernelSource;
}

/** A read as vec4 along its contiguous dimension, as the column-lane variant needs. */
function aReadAsVec4(node: Node, ctx: EmitContext): boolean {
  const { a, b, transA, transB, m, n, k } = matmulDims(node);
  const key = ctx.storage ?? ((v: Value) => v.id);
  return (transA ? m : k) % 4 === 0 && (key(a) !== key(b) || (transB ? k : n) % 4 === 0);
}

/** The column-lane tiling fits: 8-wide subgroups, A as vec4, a subgroup's worth of column blocks. */
function columnLanesFit(node: Node, ctx: EmitContext): boolean {
  const t = MATMUL_SUBGROUP_TILING;
  const { n } = matmulDims(node);
  return ctx.subgroupSize === 8 && aReadAsVec4(node, ctx) && t.wgx === 8 && t.tm % 8 === 0 && Math.ceil(n / t.tn) >= 8;
}

/**
 * Every matmul kernel lorafa has. A test forces each one through the float64 reference on ragged
 * shapes, transposes, broadcast batches and half storage (test/matmul-variants.test.ts), so a
 * variant added here is covered without a new test.
 */
export const MATMUL_VARIANTS: readonly MatmulVariant[] = [
  {
    name: 'register',
    portable: true,
    fits: () => true,
    emit: (node, ctx) => emitMatmulWith(node, ctx, MATMUL_TILING, false),
  },
  {
    name: 'row-lanes',
    portable: false,
    fits: (node, ctx) => ctx.subgroupSize === 8 && rowLanesFit(node),
    emit: (node, ctx) => emitMatmulRowLanes(node, ctx, ctx.storage ?? ((v: Value) => v.id)),
  },
  ...Object.entries(ROW_LANE_TILES).map(([name, tile]) => ({
    name,
    portable: false,
    fits: (node: Node, ctx: EmitContext) => ctx.subgroupSize === 8 && rowLanesFit(node, tile),
    emit: (node: Node, ctx: EmitContext) => emitMatmulRowLanes(node, ctx, ctx.storage ?? ((v: Value) => v.id), tile),
  })),
  {
    name: 'column-lanes',
    portable: false,
    fits: columnLanesFit,
    emit: (node, ctx) => emitMatmulWith(node, ctx, MATMUL_SUBGROUP_TILING, true),
  },
  {
    name: 'tiled',
    portable: true,
    fits: (node, ctx) => tiledFits(node, ctx, TILED_LARGE),
    emit: (node, ctx) => emitMatmulTiled(node, ctx, TILED_LARGE, 'tiled'),
  },
  {
    name: 'tiled-small',
    portable: true,
    fits: (node, ctx) => tiledFits(node, ctx, TILED_SMALL),
    emit: (node, ctx) => emitMatmulTiled(node, ctx, TILED_SMALL, 'tiled-small'),
  },
];

export function matmulVariant(name: string): MatmulVariant | undefined {
  return MATMUL_VARIANTS.find((v) => v.name === name);
}

/** The variants `ctx` allows for this node: those that fit, only portable ones under `kernels: 'portable'`. */
export function matmulCandidates(node: Node, ctx: EmitContext): MatmulVariant[] {
  return MATMUL_VARIANTS.filter((v) => (ctx.kernels !== 'portable' || v.portable) && v.fits(node, ctx));
}

/**
 * The variant the heuristic picks (no tuning). On a CPU adapter (lavapipe; also when the context
 * does not say, the choice lorafa always made): with 8-wide subgroups, row lanes wherever they fit
 * except a transposed A that column lanes also take (Aᵀ read along m at a stride of m per k step
 * ran at 29 GFLOP/s in row lanes, 33 in column lanes: xᵀ·dy, W1), else column lanes where they
 * fit; otherwise the register-blocked kernel. On a GPU: the workgroup-memory tiles, 64×64 where C
 * has at least 128 such blocks and 32×32 below (a guess for filling a GPU's cores, not measured
 * here: `lorafa tune` measures).
 */
export function heuristicMatmulVariant(node: Node, ctx: EmitContext): MatmulVariant {
  const ok = new Set(matmulCandidates(node, ctx).map((v) => v.name));
  const pick = (name: string) => matmulVariant(name)!;
  if (ctx.cpuAdapter ?? true) {
    const { transA } = matmulDims(node);
    if (ok.has('row-lanes') && !(transA && ok.has('column-lanes'))) return pick('row-lanes');
    if (ok.has('column-lanes')) return pick('column-lanes');
    return pick('register');
  }
  const [gx, gy, gz] = tiledGrid(node, TILED_LARGE);
  if (ok.has('tiled') && (gx * gy * gz >= 128 || !ok.has('tiled-small'))) return pick('tiled');
  if (ok.has('tiled-small')) return pick('tiled-small');
  return pick('register');
}

/**
 * What identifies a matmul for tuning: the operand shapes (batch dims, m, k, n), the transposes,
 * the storage of A, B and C, and whether A and B are one tensor. Every variant's kernel depends on
 * nothing else, so a choice measured for a key holds for every node with it. Parsed back by
 * matmulNodeFromKey. E.g. `[512,768]·[768,768]ᵀ f32,f32→f32`.
 */
export function matmulShapeKey(node: Node, ctx: Pick<EmitContext, 'elem' | 'storage'>): string {
  const [a, b] = node.inputs;
  const { transA, transB } = node.attrs as { transA: boolean; transB: boolean };
  const elem = ctx.elem ?? defaultElem;
  const key = ctx.storage ?? ((v: Value) => v.id);
  const shape = (v: Value, t: boolean) => `[${v.type.shape.join(',')}]${t ? 'ᵀ' : ''}`;
  return `${shape(a, transA)}·${shape(b, transB)} ${elem(a)},${elem(b)}→${elem(node.out)}${key(a) === key(b) ? ' shared' : ''}`;
}

const KEY_RE = /^\[([\d,]*)\](ᵀ?)·\[([\d,]*)\](ᵀ?) (\w+),(\w+)→(\w+)( shared)?$/;
const ELEMS: readonly ElemKind[] = ['f32', 'f16', 'f16p', 'bf16'];

/**
 * A matmul node (and the storage context it was keyed in) rebuilt from its shape key, for tuning
 * and for re-emitting a compiled plan's matmuls with a tuned variant. Undefined for a string that
 * is not a key.
 */
export function matmulNodeFromKey(shapeKey: string): { node: Node; elem: (v: Value) => ElemKind } | undefined {
  const r = KEY_RE.exec(shapeKey);
  if (!r) return undefined;
  const dims = (s: string) => (s ? s.split(',').map(Number) : []);
  const [as, bs] = [dims(r[1]), dims(r[3])];
  const kinds = [r[5], r[6], r[7]] as ElemKind[];
  if (as.length < 2 || bs.length < 2 || !kinds.every((x) => ELEMS.includes(x))) return undefined;
  const shared = !!r[8];
  if (shared && as.join(',') !== bs.join(',')) return undefined;
  const a: Value = { id: 0, name: 'a', type: { dtype: 'f32', shape: as } };
  const b: Value = shared ? a : { id: 1, name: 'b', type: { dtype: 'f32', shape: bs } };
  const attrs = { transA: r[2] === 'ᵀ', transB: r[4] === 'ᵀ' };
  let out;
  try {
    out = OPS.matmul.infer([a.type, b.type], attrs);
  } catch {
    return undefined;
  }
  const c: Value = { id: 2, name: 'c', type: out };
  const node: Node = { op: 'matmul', inputs: [a, b], attrs, out: c, phase: 'forward' };
  return { node, elem: (v) => (v.id === 2 ? kinds[2] : v.id === 1 ? kinds[1] : kinds[0]) };
}

/**
 * The kernel for one matmul node: the variant `ctx.matmulChoice` names for its shape key when
 * there is one and it fits (tuning: `lorafa tune`), else the heuristic's
 * (heuristicMatmulVariant), in both cases only a portable variant under `kernels: 'portable'`.
 * `tiling` forces the register-blocked kernel with that tiling (benchmarks), subgroup loads
 * when it fits them.
 */
export function emitMatmul(node: Node, ctx: EmitContext, tiling?: MatmulTiling): KernelSource {
  if (tiling) {
    const fits = ctx.kernels !== 'portable' && ctx.subgroupSize === 8 && aReadAsVec4(node, ctx) && tiling.wgx === 8 && tiling.tm % 8 === 0 && Math.ceil(matmulDims(node).n / tiling.tn) >= 8;
    return emitMatmulWith(node, ctx, tiling, fits);
  }
  return chooseMatmulVariant(node, ctx).emit(node, ctx);
}

/** The variant emitMatmul uses for this node. */
export function chooseMatmulVariant(node: Node, ctx: EmitContext): MatmulVariant {
  const tuned = ctx.matmulChoice?.get(matmulShapeKey(node, ctx));
  if (tuned !== undefined) {
    const v = matmulCandidates(node, ctx).find((c) => c.name === tuned);
    if (v) return v;
  }
  return heuristicMatmulVariant(node, ctx);
}


/**
 * Whether the row-lane variant takes this matmul: k and n multiples of 4 (A along k or Aᵀ along
 * m, B along n or Bᵀ along k, and C are all read or written as vec4, with no k tail), m a
 * multiple of 4 when A is transposed, and at least one subgroup's worth of rows (m ≥ 8·TM/2:
 * below that most lanes would compute clamped copies; the column-lane variant takes such a C).
 */
function rowLanesFit(node: Node, tile: RowLaneTile = ROW_LANES): boolean {
  const { transA, m, n, k } = matmulDims(node);
  return k % 4 === 0 && n % 4 === 0 && (!transA || m % 4 === 0) && m >= 4 * tile.tm && (tile === ROW_LANES || n >= tile.tn);
}

/**
 * The row-lane subgroup variant (8-wide fixed subgroups: lavapipe). A workgroup is one subgroup;
 * it computes an (8·TM)×TN block of C, lane s the TM rows row0 + s·TM …, all lanes the same TN
 * columns. Per quad of k each lane loads its TM rows of op(A) (one vec4 per row along k, or one
 * vec4 of 4 rows per k step when A is transposed) and 1/8 of the quad's TN vec4 of op(B), which
 * subgroupBroadcast hands to the other lanes: TM + TN/8 loads for 4·TM·TN multiply-adds (the
 * column-lane variant: 9 for 256; this one: 6 for 256). Loads clamp to the matrix; stores are
 * guarded; every lane runs to the end (the broadcasts need them all).
 */
function emitMatmulRowLanes(node: Node, ctx: EmitContext, key: (v: Value) => number, tile: RowLaneTile = ROW_LANES): KernelSource {
  const TM = tile.tm;
  const { a, b, transA, transB, m, n, k, batch, nb, aStr, bStr } = matmulDims(node);
  checkOutputApart(node, key);
  // Narrow C (x·A at rank 8): fewer columns per subgroup rather than clamped copies.
  const TN = n >= tile.tn ? tile.tn : n >= 16 && tile.tn > 16 ? 16 : n >= 8 ? 8 : 4;
  const nv = TN / 4;
  const shared = key(a) === key(b);
  const elem = ctx.elem ?? defaultElem;
  const accA = access(0, 'in0', elem(a), { vec: true });
  const accB = shared ? accA : access(1, 'in1', elem(b), { vec: true });
  const accC = access(shared ? 1 : 2, 'out', elem(node.out), { vec: true, written: true });
  const A = (q: string) => accA.ld4(q);
  const B = (q: string) => accB.ld4(q);
  const decls = [declare(shared ? [accA, accC] : [accA, accB, accC])];

  const pre: string[] = [];
  const body: string[] = [];
  // This lane's rows of op(A): aval(i, q) = op(A)[row0 + i, k0 + q].
  let aval: (i: number, q: number) => string;
  if (!transA) {
    for (let i = 0; i < TM; i++) pre.push(`let ab${i} = (aOff + min(row0 + ${u(i)}, ${u(m - 1)}) * ${u(k)}) / 4u;`);
    for (let i = 0; i < TM; i++) body.push(`let a${i} = ${A(`ab${i} + kq`)};`);
    aval = (i, q) => `a${i}.${XYZW[q]}`;
  } else if (TM === 4) {
    // Aᵀ stored [k, m]: rows row0 … row0 + 3 at one k are one vec4 (TM = 4, m a multiple of 4).
    pre.push(`let ag = (aOff / 4u) + min(row0 / 4u, ${u(m / 4 - 1)});`);
    for (let q = 0; q < 4; q++) body.push(`let a_${q} = ${A(`ag + (kq * 4u + ${u(q)}) * ${u(m / 4)}`)};`);
    aval = (i, q) => `a_${q}.${XYZW[i]}`;
  } else {
    // The same with TM / 4 vec4 of rows per k step.
    for (let g = 0; g < TM / 4; g++) pre.push(`let ag${g} = (aOff / 4u) + min(row0 / 4u + ${u(g)}, ${u(m / 4 - 1)});`);
    for (let q = 0; q < 4; q++) for (let g = 0; g < TM / 4; g++) body.push(`let a${g}_${q} = ${A(`ag${g} + (kq * 4u + ${u(q)}) * ${u(m / 4)}`)};`);
    aval = (i, q) => `a${Math.floor(i / 4)}_${q}.${XYZW[i % 4]}`;
  }
  // The quad's TN vec4 of op(B), e = 0 … TN - 1, spread over the lanes: lane s loads e = 8g + s
  // (a clamped duplicate where TN < 8) and vector e lives in lane e % 8 of load g = e / 8.
  const G = Math.ceil(TN / 8);
  for (let g = 0; g < G; g++) {
    pre.push(`let e${g} = min(${u(8 * g)} + sid, ${u(TN - 1)});`);
    if (!transB) {
      // vector e = (q, j): B[k0 + q, col0 + 4j … + 3]
      pre.push(`let bq${g} = e${g} / ${u(nv)};`);
      pre.push(`let bc${g} = (bOff / 4u) + min(col0 / 4u + e${g} % ${u(nv)}, ${u(n / 4 - 1)});`);
      body.push(`let bl${g} = ${B(`bc${g} + (kq * 4u + bq${g}) * ${u(n / 4)}`)};`);
    } else {
      // Bᵀ stored [n, k]: vector e = column col0 + e along the quad's k
      pre.push(`let bc${g} = (bOff + min(col0 + e${g}, ${u(n - 1)}) * ${u(k)}) / 4u;`);
      body.push(`let bl${g} = ${B(`bc${g} + kq`)};`);
    }
  }
  const bcast = (e: number) => `subgroupBroadcast(bl${Math.floor(e / 8)}, ${u(e % 8)})`;
  if (!transB) {
    for (let q = 0; q < 4; q++) {
      for (let j = 0; j < nv; j++) {
        body.push(`let b${q}_${j} = ${bcast(q * nv + j)};`);
        for (let i = 0; i < TM; i++) body.push(`acc${i}_${j} = fma(vec4<f32>(${aval(i, q)}), b${q}_${j}, acc${i}_${j});`);
      }
    }
  } else {
    for (let c = 0; c < TN; c++) body.push(`let bt${c} = ${bcast(c)};`);
    for (let q = 0; q < 4; q++) {
      for (let j = 0; j < nv; j++) {
        body.push(`let b${q}_${j} = vec4<f32>(${[0, 1, 2, 3].map((c) => `bt${4 * j + c}.${XYZW[q]}`).join(', ')});`);
        for (let i = 0; i < TM; i++) body.push(`acc${i}_${j} = fma(vec4<f32>(${aval(i, q)}), b${q}_${j}, acc${i}_${j});`);
      }
    }
  }
  const accs: string[] = [];
  const stores: string[] = [];
  const gx = Math.ceil(n / TN);
  const gy = Math.ceil(m / (8 * TM));
  const gz = Math.max(1, nb);
  if (Math.max(gx, gy, gz) > ctx.maxWorkgroupsPerDimension) {
    throw new Error(`matmul ${node.out.name}: grid ${gx}×${gy}×${gz} exceeds ${ctx.maxWorkgroupsPerDimension} workgroups per dimension`);
  }
  const rowsExact = m % (8 * TM) === 0;
  const colsExact = n % TN === 0;
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < nv; j++) {
      accs.push(`var acc${i}_${j} = vec4<f32>(0.0);`);
      const cond = [rowsExact ? '' : `row0 + ${u(i)} < ${u(m)}`, colsExact ? '' : `col0 / 4u + ${u(j)} < ${u(n / 4)}`].filter(Boolean).join(' && ');
      const st = accC.st4(`(cOff + (row0 + ${u(i)}) * ${u(n)}) / 4u + col0 / 4u + ${u(j)}`, `acc${i}_${j}`);
      stores.push(cond ? `if (${cond}) { ${st} }` : st);
    }
  }
  return {
    bound: shared ? [a] : [a, b],
    workgroups: [gx, gy, gz],
    wgsl: `// lorafa matmul: row lanes ${TM}×${TN}
enable subgroups;
${decls.join('\n')}
@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) sid: u32) {
  let col0 = wid.x * ${u(TN)};
  let row0 = wid.y * ${u(8 * TM)} + sid * ${u(TM)};
  let bi = wid.z;
  ${batchOffset('aOff', 'bi', batch, aStr)}
  ${batchOffset('bOff', 'bi', batch, bStr)}
  let cOff = bi * ${u(m * n)};
  ${pre.join('\n  ')}
  ${accs.join(' ')}
  for (var kq = 0u; kq < ${u(k / 4)}; kq++) {
    ${body.join('\n    ')}
  }
  ${stores.join('\n  ')}
}
`,
  };
}

/**
 * The bindings of a matmul kernel that reads each operand as vec4 along its contiguous dimension
 * where that dimension is a multiple of 4 (then so is every batch offset), else as scalars:
 * operands with one storage are bound once (both then vec4 only if both can be), the output
 * after them. The output must not alias an operand.
 */
export function matmulBindings(node: Node, ctx: EmitContext) {
  const { a, b, transA, transB, m, n, k } = matmulDims(node);
  const key = ctx.storage ?? ((v: Value) => v.id);
  checkOutputApart(node, key);
  const shared = key(a) === key(b);
  const bound: Value[] = shared ? [a] : [a, b];
  let aVec = (transA ? m : k) % 4 === 0;
  let bVec = (transB ? k : n) % 4 === 0;
  if (shared) aVec = bVec = aVec && bVec;
  const cVec = n % 4 === 0;
  const elem = ctx.elem ?? defaultElem;
  const accA = access(0, 'in0', elem(a), { vec: aVec });
  const accB = shared ? accA : access(1, 'in1', elem(b), { vec: bVec });
  const accC = access(bound.length, 'out', elem(node.out), { vec: cVec, written: true });
  return { shared, bound, aVec, bVec, cVec, accA, accB, accC, decl: declare(shared ? [accA, accC] : [accA, accB, accC]) };
}

function emitMatmulWith(node: Node, ctx: EmitContext, tiling: MatmulTiling, subgroup: boolean): KernelSource {
  const { tm: TM, tn: TN } = tiling;
  if (TM % 4 || TN % 4) throw new Error(`matmul tiling ${TM}×${TN}: both must be multiples of 4`);
  // A C narrower than a workgroup's columns (x·A at rank r: n = r) or shorter than its rows
  // (dB = (x·A)ᵀ·dy: m = r) would leave most of the workgroup idle: move its lanes to the other
  // dimension (the subgroup variant keeps its 8 lanes along n and just drops rows).
  const tilesX = Math.ceil(node.out.type.shape[node.out.type.shape.length - 1] / TN);
  const tilesY = Math.ceil(node.out.type.shape[node.out.type.shape.length - 2] / TM);
  let WGX = tiling.wgx;
  let WGY = tiling.wgy;
  if (!subgroup && tilesX <= WGX / 2) {
    while (WGX > 1 && tilesX <= WGX / 2) {
      WGX /= 2;
      WGY *= 2;
    }
  } else {
    while (WGY > 1 && tilesY <= WGY / 2) {
      WGY /= 2;
      if (!subgroup) WGX *= 2;
    }
  }
  const { transA, transB, m, n, k, batch, nb, aStr, bStr } = matmulDims(node);

  const { bound, aVec, bVec, cVec, accA, accB, accC, decl } = matmulBindings(node, ctx);
  // A load: a vec4 (by vec4 index) from a vec4 binding, an element from a scalar one.
  const A = (i: string) => (aVec ? accA.ld4(i) : accA.ld(i));
  const B = (i: string) => (bVec ? accB.ld4(i) : accB.ld(i));
  const decls = [decl];

  // Quads of k, unrolled, when an operand is read as vec4; otherwise (both scalar: odd shapes,
  // where compile time matters more than speed) one k step per iteration.
  const K4 = aVec || bVec ? Math.floor(k / 4) : 0;
  const nv = TN / 4;
  const pre: string[] = [];
  const body: string[] = [];
  const tailBody: string[] = [];

  // Element (row, p) of op(A) and (p, col) of op(B), as a flat index into the operand.
  const aIndex = (row: string, p: string) => (transA ? `aOff + (${p}) * ${u(m)} + ${row}` : `aOff + ${row} * ${u(k)} + ${p}`);
  const bIndex = (p: string, col: string) => (transB ? `bOff + ${col} * ${u(k)} + ${p}` : `bOff + (${p}) * ${u(n)} + ${col}`);
  // One scalar element of an operand, whichever array type it is bound as (tail steps only).
  const scalarAt = (acc: Access, idx: string) => acc.ld(idx);

  // Row and column indices, clamped so every load is in bounds (stores are guarded).
  for (let i = 0; i < TM; i++) pre.push(`let r${i} = min(row0 + ${u(i)}, ${u(m - 1)});`);
  for (let c = 0; c < TN; c++) pre.push(`let c${c} = min(col0 + ${u(c)}, ${u(n - 1)});`);

  // aval(i, q): op(A)[row0 + i, k0 + q] inside the loop.
  let aval: (i: number, q: number) => string;
  if (subgroup && !transA) {
    // Lane s of the subgroup loads row row0 + 8g + s (vec4 along k) and broadcasts it: one load
    // per lane per TM/8 rows instead of TM.
    for (let g = 0; g < TM / 8; g++) pre.push(`let al${g} = (aOff + min(row0 + ${u(8 * g)} + sid, ${u(m - 1)}) * ${u(k)}) / 4u;`);
    for (let g = 0; g < TM / 8; g++) body.push(`let av${g} = ${A(`al${g} + kq`)};`);
    for (let i = 0; i < TM; i++) body.push(`let sa${i} = subgroupBroadcast(av${Math.floor(i / 8)}, ${u(i % 8)});`);
    aval = (i, q) => `sa${i}.${XYZW[q]}`;
  } else if (subgroup && transA) {
    // Aᵀ: the quad's 4·TM/4 vec4 (4 rows at one k each) are spread over the lanes, TM/8 apiece.
    const per = TM / 4;
    for (let g = 0; g < TM / 8; g++) {
      pre.push(`let atk${g} = (${u(8 * g)} + sid) / ${u(per)};`);
      pre.push(`let atr${g} = min(row0 / 4u + (${u(8 * g)} + sid) % ${u(per)}, ${u(m / 4 - 1)});`);
      body.push(`let av${g} = ${A(`(aOff + (k0 + atk${g}) * ${u(m)}) / 4u + atr${g}`)};`);
    }
    for (let v = 0; v < TM; v++) body.push(`let sa${v} = subgroupBroadcast(av${Math.floor(v / 8)}, ${u(v % 8)});`);
    // element (row0 + i, k0 + q) is component i % 4 of vec4 number q·TM/4 + i/4
    aval = (i, q) => `sa${q * per + Math.floor(i / 4)}.${XYZW[i % 4]}`;
  } else if (aVec && !transA) {
    for (let i = 0; i < TM; i++) pre.push(`let ab${i} = (aOff + r${i} * ${u(k)}) / 4u;`);
    for (let i = 0; i < TM; i++) body.push(`let a${i} = ${A(`ab${i} + kq`)};`);
    aval = (i, q) => `a${i}.${XYZW[q]}`;
  } else if (aVec && transA) {
    // Aᵀ stored [k, m]: 4 consecutive rows of op(A) are one vec4 (row0 and m are multiples of 4).
    for (let g = 0; g < TM / 4; g++) pre.push(`let ag${g} = min(row0 / 4u + ${u(g)}, ${u(m / 4 - 1)});`);
    for (let q = 0; q < 4; q++) for (let g = 0; g < TM / 4; g++) body.push(`let a${g}_${q} = ${A(`(aOff + (k0 + ${u(q)}) * ${u(m)}) / 4u + ag${g}`)};`);
    aval = (i, q) => `a${Math.floor(i / 4)}_${q}.${XYZW[i % 4]}`;
  } else {
    for (let q = 0; q < 4; q++) for (let i = 0; i < TM; i++) body.push(`let a${i}_${q} = ${A(`${aIndex(`r${i}`, `k0 + ${u(q)}`)}`)};`);
    aval = (i, q) => `a${i}_${q}`;
  }
  // bvec(q, j): op(B)[k0 + q, col0 + 4j … col0 + 4j + 3] inside the loop.
  let bvec: (q: number, j: number) => string;
  if (bVec && !transB) {
    for (let j = 0; j < nv; j++) pre.push(`let cv${j} = min(col0 / 4u + ${u(j)}, ${u(n / 4 - 1)});`);
    for (let q = 0; q < 4; q++) for (let j = 0; j < nv; j++) body.push(`let b${q}_${j} = ${B(`(bOff + (k0 + ${u(q)}) * ${u(n)}) / 4u + cv${j}`)};`);
    bvec = (q, j) => `b${q}_${j}`;
  } else if (bVec && transB) {
    // Bᵀ stored [n, k]: one vec4 along k per column; the vec4 across columns is a register shuffle.
    for (let c = 0; c < TN; c++) pre.push(`let bb${c} = (bOff + c${c} * ${u(k)}) / 4u;`);
    for (let c = 0; c < TN; c++) body.push(`let bt${c} = ${B(`bb${c} + kq`)};`);
    bvec = (q, j) => `vec4<f32>(${[0, 1, 2, 3].map((c) => `bt${4 * j + c}.${XYZW[q]}`).join(', ')})`;
  } else {
    for (let q = 0; q < 4; q++) for (let c = 0; c < TN; c++) body.push(`let b${q}_${c} = ${B(`${bIndex(`k0 + ${u(q)}`, `c${c}`)}`)};`);
    bvec = (q, j) => `vec4<f32>(${[0, 1, 2, 3].map((c) => `b${q}_${4 * j + c}`).join(', ')})`;
  }
  for (let q = 0; q < 4; q++) {
    for (let i = 0; i < TM; i++) for (let j = 0; j < nv; j++) body.push(`acc${i}_${j} = fma(vec4<f32>(${aval(i, q)}), ${bvec(q, j)}, acc${i}_${j});`);
  }
  // The k steps after the last quad (all of k in the scalar case): one step per iteration.
  if (K4 * 4 < k) {
    tailBody.push(`for (var kt = ${u(K4 * 4)}; kt < ${u(k)}; kt++) {`);
    for (let i = 0; i < TM; i++) tailBody.push(`  let ta${i} = ${scalarAt(accA, aIndex(`r${i}`, 'kt'))};`);
    for (let c = 0; c < TN; c++) tailBody.push(`  let tb${c} = ${scalarAt(accB, bIndex('kt', `c${c}`))};`);
    for (let i = 0; i < TM; i++) {
      for (let j = 0; j < nv; j++) tailBody.push(`  acc${i}_${j} = fma(vec4<f32>(ta${i}), vec4<f32>(${[0, 1, 2, 3].map((c) => `tb${4 * j + c}`).join(', ')}), acc${i}_${j});`);
    }
    tailBody.push('}');
  }

  const accs: string[] = [];
  for (let i = 0; i < TM; i++) for (let j = 0; j < nv; j++) accs.push(`var acc${i}_${j} = vec4<f32>(0.0);`);
  const stores: string[] = [];
  const gx = Math.ceil(Math.ceil(n / TN) / WGX);
  const gy = Math.ceil(Math.ceil(m / TM) / WGY);
  const gz = Math.max(1, nb);
  // The portable kernel returns early from blocks wholly outside C; the subgroup one cannot (its
  // broadcasts need every lane), so its stores also guard against blocks past the edge.
  const rowsExact = subgroup ? gy * WGY * TM === m : m % TM === 0;
  const colsExact = subgroup ? gx * WGX * TN === n : n % TN === 0;
  for (let i = 0; i < TM; i++) {
    const rowOk = rowsExact ? '' : `row0 + ${u(i)} < ${u(m)}`;
    for (let j = 0; j < nv; j++) {
      if (cVec) {
        const colOk = colsExact ? '' : `col0 / 4u + ${u(j)} < ${u(n / 4)}`;
        const cond = [rowOk, colOk].filter(Boolean).join(' && ');
        const st = accC.st4(`(cOff + (row0 + ${u(i)}) * ${u(n)}) / 4u + col0 / 4u + ${u(j)}`, `acc${i}_${j}`);
        stores.push(cond ? `if (${cond}) { ${st} }` : st);
      } else {
        for (let c = 0; c < 4; c++) {
          const col = `col0 + ${u(4 * j + c)}`;
          const cond = [rowOk, `${col} < ${u(n)}`].filter(Boolean).join(' && ');
          stores.push(`if (${cond}) { ${accC.st(`cOff + (row0 + ${u(i)}) * ${u(n)} + ${col}`, `acc${i}_${j}.${XYZW[c]}`)} }`);
        }
      }
    }
  }

  if (gx > ctx.maxWorkgroupsPerDimension || gy > ctx.maxWorkgroupsPerDimension || gz > ctx.maxWorkgroupsPerDimension) {
    throw new Error(`matmul ${node.out.name}: grid ${gx}×${gy}×${gz} exceeds ${ctx.maxWorkgroupsPerDimension} workgroups per dimension`);
  }
  const loop = K4
    ? `for (var kq = 0u; kq < ${u(K4)}; kq++) {
    let k0 = kq * 4u;
    ${body.join('\n    ')}
  }`
    : '';
  return {
    bound,
    workgroups: [gx, gy, gz],
    wgsl: `${subgroup ? 'enable subgroups;\n' : ''}${decls.join('\n')}
@compute @workgroup_size(${WGX}, ${WGY})
fn main(@builtin(global_invocation_id) gid: vec3<u32>${subgroup ? ', @builtin(subgroup_invocation_id) sid: u32' : ''}) {
  let col0 = gid.x * ${u(TN)};
  let row0 = gid.y * ${u(TM)};
  ${subgroup ? '' : `if (col0 >= ${u(n)} || row0 >= ${u(m)}) { return; }`}
  let bi = gid.z;
  ${batchOffset('aOff', 'bi', batch, aStr)}
  ${batchOffset('bOff', 'bi', batch, bStr)}
  let cOff = bi * ${u(m * n)};
  ${pre.join('\n  ')}
  ${accs.join(' ')}
  ${loop}
  ${tailBody.join('\n  ')}
  ${stores.join('\n  ')}
}
`,
  };
}
