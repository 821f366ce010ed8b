// The workgroup-memory tiled matmul, for real GPUs: C[.., m, n] = op(A)[.., m, k] · op(B)[.., k, n].
//
// A workgroup computes a BM×BN block of C. For each BK-deep slice of k it copies op(A)'s BM×BK
// block and op(B)'s BK×BN block into workgroup memory (every invocation a share of each, read as
// vec4 along the operand's contiguous dimension — k for A and Bᵀ, m for Aᵀ, n for B — where that
// dimension is a multiple of 4, else element by element; a load past m, n or k writes 0, so the
// ragged last blocks need no other test), waits at a barrier, and then each of its
// (BM/4)·(BN/4) invocations multiplies a 4×4 block of C out of the tiles: per k step one vec4 of
// op(A)'s tile (4 rows at one k) and one of op(B)'s (4 columns), 16 multiply-adds. Both tiles are
// stored k-major ([BK][BM] and [BK][BN]), so those two reads are single 16-byte loads, and the
// 16 invocations along a row of the workgroup read 16 consecutive vec4 of B's tile (no bank
// conflicts) while sharing A's. Global memory is read once per workgroup per element of its
// blocks: BM·BN·BK multiply-adds for (BM + BN)·BK loads, against the register-blocked kernel's
// one load per 4×8/(4+8) multiply-adds through the caches.
//
// Two tile shapes, both 4×4 per invocation and BK = 16:
//   tiled        64×64, 16×16 invocations, 8 KiB of workgroup memory: the big products;
//   tiled-small  32×32,  8×8 invocations, 4 KiB: small or skinny C (the rank-r LoRA products,
//                [512,768]·[768,8] and [8,512]·[512,768]), where 64×64 blocks would leave most
//                of a workgroup idle and give a GPU too few workgroups to fill it.
// Both stay within WebGPU's default limits (16 KiB of workgroup memory, 256 invocations); a
// variant whose tile an adapter's limits refuse does not fit (tiledFits), and the choice falls
// back. No subgroups: it runs on any adapter.
//
// On lavapipe (a CPU) this is the slow kernel: each barrier is a coroutine switch of every
// invocation and workgroup memory is ordinary memory behind bounds checks, so the tiles buy
// nothing there (docs/performance.md has the figures); the heuristic never picks it on a CPU
// adapter, and `lorafa tune` measures rather than assumes.
import type { Node } from '../ir/types.ts';
import type { EmitContext, KernelSource } from './kernel.ts';
import { batchOffset, matmulBindings, matmulDims } from './matmul.ts';
import type { Access } from './storage.ts';

export interface TileShape {
  /** Rows of C per workgroup: a multiple of 4. */
  readonly bm: number;
  /** Columns of C per workgroup: a multiple of 4. */
  readonly bn: number;
  /** Depth of k per tile: a multiple of 4. */
  readonly bk: number;
}

export const TILED_LARGE: TileShape = { bm: 64, bn: 64, bk: 16 };
export const TILED_SMALL: TileShape = { bm: 32, bn: 32, bk: 16 };

/** WebGPU's default limits, which every adapter offers at least. */
export const DEFAULT_WORKGROUP_STORAGE = 16384;
export const DEFAULT_INVOCATIONS = 256;

/** Bytes of workgroup memory a tile shape takes: op(A)'s and op(B)'s tiles in f32. */
export function tiledWorkgroupBytes(t: TileShape): number {
  return 4 * t.bk * (t.bm + t.bn);
}

/** Invocations per workgroup: one per 4×4 block of C. */
export function tiledInvocations(t: TileShape): number {
  return (t.bm / 4) * (t.bn / 4);
}

/** The grid a tile shape dispatches for this matmul. */
export function tiledGrid(node: Node, t: TileShape): [number, number, number] {
  const { m, n, nb } = matmulDims(node);
  return [Math.ceil(n / t.bn), Math.ceil(m / t.bm), Math.max(1, nb)];
}

/** Whether the device's limits take this tile shape for this node (workgroup memory, invocations, grid). */
export function tiledFits(node: Node, ctx: EmitContext, t: TileShape): boolean {
  return (
    tiledWorkgroupBytes(t) <= (ctx.maxWorkgroupStorageSize ?? DEFAULT_WORKGROUP_STORAGE) &&
    tiledInvocations(t) <= (ctx.maxInvocationsPerWorkgroup ?? DEFAULT_INVOCATIONS) &&
    tiledGrid(node, t).every((g) => g <= ctx.maxWorkgroupsPerDimension)
  );
}

const u = (x: number) => `${x}u`;
const XYZW = ['x', 'y', 'z', 'w'];

export function emitMatmulTiled(node: Node, ctx: EmitContext, t: TileShape, name: string): KernelSource {
  const { bm: BM, bn: BN, bk: BK } = t;
  if (BM % 4 || BN % 4 || BK % 4) throw new Error(`matmul tile ${BM}×${BN}×${BK}: every side must be a multiple of 4`);
  const { transA, transB, m, n, k, batch, aStr, bStr } = matmulDims(node);
  const { bound, aVec, bVec, cVec, accA, accB, accC, decl: decls } = matmulBindings(node, ctx);

  const WX = BN / 4;
  const WY = BM / 4;
  const INV = WX * WY;
  const [gx, gy, gz] = tiledGrid(node, t);
  if (Math.max(gx, gy, gz) > ctx.maxWorkgroupsPerDimension) {
    throw new Error(`matmul ${node.out.name}: grid ${gx}×${gy}×${gz} exceeds ${ctx.maxWorkgroupsPerDimension} workgroups per dimension`);
  }

  // Tiles, k-major: As[kk·BM/4 + r/4][r % 4] = op(A)[row0 + r, k0 + kk]; Bs likewise along n.
  const aSlot = (kk: string, r: string) => `As[(${kk}) * ${u(BM / 4)} + (${r}) / 4u][(${r}) % 4u]`;
  const bSlot = (kk: string, c: string) => `Bs[(${kk}) * ${u(BN / 4)} + (${c}) / 4u][(${c}) % 4u]`;

  // Each invocation's share of a tile's loads: `count` items, item e = li + j·INV.
  const shares = (count: number, body: (e: string) => string[]): string[] => {
    const out: string[] = [];
    for (let j = 0; j < Math.ceil(count / INV); j++) {
      const e = `li + ${u(j * INV)}`;
      const inner = body('e').map((l) => `  ${l}`);
      // The last round may run past the tile when count is not a multiple of INV.
      out.push((j + 1) * INV > count ? `if (${e} < ${u(count)}) {` : '{', `  let e = ${e};`, ...inner, '}');
    }
    return out;
  };

  // One operand's tile, op(A) [BM rows × BK] or op(B)ᵀ [BN columns × BK], from storage that is
  // either outer-major (A, Bᵀ: contiguous along k) or k-major (Aᵀ, B: contiguous along the outer
  // dimension). `x` names the outer index (r for A's rows, c for B's columns).
  const loadTile = (o: { x: 'r' | 'c'; start: string; dim: number; BX: number; kMajor: boolean; vec: boolean; acc: Access; off: string; tile: string; slot: (kk: string, x: string) => string }): string[] => {
    const { x, start, dim, BX, kMajor, vec, acc, off } = o;
    const gx = `g${x}`;
    const inside = `if (${gx} < ${u(dim)} && gk < ${u(k)})`;
    if (vec && !kMajor) {
      // A vec4 is 4 steps of k at one outer index; item e = (outer x, quad q).
      return shares((BX * BK) / 4, (e) => [
        `let ${x} = ${e} / ${u(BK / 4)};`,
        `let q = ${e} % ${u(BK / 4)};`,
        `let ${gx} = ${start} + ${x};`,
        `let gk = k0 + q * 4u;`,
        `var v = vec4<f32>(0.0);`,
        `${inside} { v = ${acc.ld4(`(${off} + ${gx} * ${u(k)} + gk) / 4u`)}; }`,
        ...[0, 1, 2, 3].map((c) => `${o.slot(`q * 4u + ${u(c)}`, x)} = v.${XYZW[c]};`),
      ]);
    }
    if (vec) {
      // A vec4 is 4 outer indices at one k: one vec4 of the tile; item e = (kk, outer 4·x4 …).
      return shares((BX * BK) / 4, (e) => [
        `let kk = ${e} / ${u(BX / 4)};`,
        `let ${x}4 = ${e} % ${u(BX / 4)};`,
        `let gk = k0 + kk;`,
        `let ${gx} = ${start} + ${x}4 * 4u;`,
        `var v = vec4<f32>(0.0);`,
        `${inside} { v = ${acc.ld4(`(${off} + gk * ${u(dim)} + ${gx}) / 4u`)}; }`,
        `${o.tile}[kk * ${u(BX / 4)} + ${x}4] = v;`,
      ]);
    }
    // Element by element, consecutive items along the stored contiguous dimension.
    return shares(BX * BK, (e) => [
      kMajor ? `let kk = ${e} / ${u(BX)};` : `let ${x} = ${e} / ${u(BK)};`,
      kMajor ? `let ${x} = ${e} % ${u(BX)};` : `let kk = ${e} % ${u(BK)};`,
      `let ${gx} = ${start} + ${x};`,
      `let gk = k0 + kk;`,
      `var v = 0.0;`,
      `${inside} { v = ${acc.ld(kMajor ? `${off} + gk * ${u(dim)} + ${gx}` : `${off} + ${gx} * ${u(k)} + gk`)}; }`,
      `${o.slot('kk', x)} = v;`,
    ]);
  };
  const loadA = loadTile({ x: 'r', start: 'row0', dim: m, BX: BM, kMajor: transA, vec: aVec, acc: accA, off: 'aOff', tile: 'As', slot: aSlot });
  const loadB = loadTile({ x: 'c', start: 'col0', dim: n, BX: BN, kMajor: !transB, vec: bVec, acc: accB, off: 'bOff', tile: 'Bs', slot: bSlot });

  // Stores: this invocation's 4×4 block, rows r0 + i, columns c0 … c0 + 3.
  const rowsExact = m % BM === 0;
  const colsExact = n % BN === 0;
  const stores: string[] = [];
  for (let i = 0; i < 4; i++) {
    const rowOk = rowsExact ? '' : `r0 + ${u(i)} < ${u(m)}`;
    if (cVec) {
      const cond = [rowOk, colsExact ? '' : `c0 < ${u(n)}`].filter(Boolean).join(' && ');
      const st = accC.st4(`(cOff + (r0 + ${u(i)}) * ${u(n)} + c0) / 4u`, `acc${i}`);
      stores.push(cond ? `if (${cond}) { ${st} }` : st);
    } else {
      for (let c = 0; c < 4; c++) {
        const cond = [rowOk, `c0 + ${u(c)} < ${u(n)}`].filter(Boolean).join(' && ');
        stores.push(`if (${cond}) { ${accC.st(`cOff + (r0 + ${u(i)}) * ${u(n)} + c0 + ${u(c)}`, `acc${i}.${XYZW[c]}`)} }`);
      }
    }
  }

  const fmas = [0, 1, 2, 3].map((i) => `acc${i} = fma(vec4<f32>(a.${XYZW[i]}), b, acc${i});`);
  return {
    bound,
    workgroups: [gx, gy, gz],
    wgsl: `// lorafa matmul: ${name} ${BM}×${BN}×${BK}
${decls}
var<workgroup> As: array<vec4<f32>, ${(BK * BM) / 4}>;
var<workgroup> Bs: array<vec4<f32>, ${(BK * BN) / 4}>;
@compute @workgroup_size(${WX}, ${WY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let row0 = wid.y * ${u(BM)};
  let col0 = wid.x * ${u(BN)};
  let r0 = row0 + lid.y * 4u;
  let c0 = col0 + lid.x * 4u;
  let bi = wid.z;
  ${batchOffset('aOff', 'bi', batch, aStr)}
  ${batchOffset('bOff', 'bi', batch, bStr)}
  let cOff = bi * ${u(m * n)};
  var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0); var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
  for (var k0 = 0u; k0 < ${u(k)}; k0 += ${u(BK)}) {
    ${loadA.join('\n    ')}
    ${loadB.join('\n    ')}
    workgroupBarrier();
    for (var kk = 0u; kk < ${u(BK)}; kk++) {
      let a = As[kk * ${u(BM / 4)} + lid.y];
      let b = Bs[kk * ${u(BN / 4)} + lid.x];
      ${fmas.join('\n      ')}
    }
    workgroupBarrier();
  }
  ${stores.join('\n  ')}
}
`,
  };
}
