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

  const loadA: string[] = [];
  if (aVec && !transA) {
    // A [m, k]: a vec4 is 4 steps of k in one row; item e = (row r, quad q).
    loadA.push(
      ...shares((BM * BK) / 4, (e) => [
        `let r = ${e} / ${u(BK / 4)};`,
        `let q = ${e} % ${u(BK / 4)};`,
        `let gr = row0 + r;`,
        `let gk = k0 + q * 4u;`,
        `var v = vec4<f32>(0.0);`,
        `if (gr < ${u(m)} && gk < ${u(k)}) { v = ${accA.ld4(`(aOff + gr * ${u(k)} + gk) / 4u`)}; }`,
        ...[0, 1, 2, 3].map((c) => `${aSlot(`q * 4u + ${u(c)}`, 'r')} = v.${XYZW[c]};`),
      ]),
    );
  } else if (aVec && transA) {
    // Aᵀ stored [k, m]: a vec4 is 4 rows at one k, one vec4 of the tile; item e = (kk, rows 4r4…).
    loadA.push(
      ...shares((BM * BK) / 4, (e) => [
        `let kk = ${e} / ${u(BM / 4)};`,
        `let r4 = ${e} % ${u(BM / 4)};`,
        `let gk = k0 + kk;`,
        `let gr = row0 + r4 * 4u;`,
        `var v = vec4<f32>(0.0);`,
        `if (gr < ${u(m)} && gk < ${u(k)}) { v = ${accA.ld4(`(aOff + gk * ${u(m)} + gr) / 4u`)}; }`,
        `As[kk * ${u(BM / 4)} + r4] = v;`,
      ]),
    );
  } else {
    // Element by element, consecutive items along the stored contiguous dimension.
    loadA.push(
      ...shares(BM * BK, (e) => [
        transA ? `let kk = ${e} / ${u(BM)};` : `let r = ${e} / ${u(BK)};`,
        transA ? `let r = ${e} % ${u(BM)};` : `let kk = ${e} % ${u(BK)};`,
        `let gr = row0 + r;`,
        `let gk = k0 + kk;`,
        `var v = 0.0;`,
        `if (gr < ${u(m)} && gk < ${u(k)}) { v = ${accA.ld(transA ? `aOff + gk * ${u(m)} + gr` : `aOff + gr * ${u(k)} + gk`)}; }`,
        `${aSlot('kk', 'r')} = v;`,
      ]),
    );
  }
  const loadB: string[] = [];
  if (bVec && !transB) {
    // B [k, n]: a vec4 is 4 columns at one k, one vec4 of the tile.
    loadB.push(
      ...shares((BK * BN) / 4, (e) => [
        `let kk = ${e} / ${u(BN / 4)};`,
        `let c4 = ${e} % ${u(BN / 4)};`,
        `let gk = k0 + kk;`,
        `let gc = col0 + c4 * 4u;`,
        `var v = vec4<f32>(0.0);`,
        `if (gc < ${u(n)} && gk < ${u(k)}) { v = ${accB.ld4(`(bOff + gk * ${u(n)} + gc) / 4u`)}; }`,
        `Bs[kk * ${u(BN / 4)} + c4] = v;`,
      ]),
    );
  } else if (bVec && transB) {
    // Bᵀ stored [n, k]: a vec4 is 4 steps of k in one column.
    loadB.push(
      ...shares((BK * BN) / 4, (e) => [
        `let c = ${e} / ${u(BK / 4)};`,
        `let q = ${e} % ${u(BK / 4)};`,
        `let gc = col0 + c;`,
        `let gk = k0 + q * 4u;`,
        `var v = vec4<f32>(0.0);`,
        `if (gc < ${u(n)} && gk < ${u(k)}) { v = ${accB.ld4(`(bOff + gc * ${u(k)} + gk) / 4u`)}; }`,
        ...[0, 1, 2, 3].map((x) => `${bSlot(`q * 4u + ${u(x)}`, 'c')} = v.${XYZW[x]};`),
      ]),
    );
  } else {
    loadB.push(
      ...shares(BK * BN, (e) => [
        transB ? `let c = ${e} / ${u(BK)};` : `let kk = ${e} / ${u(BN)};`,
        transB ? `let kk = ${e} % ${u(BK)};` : `let c = ${e} % ${u(BN)};`,
        `let gc = col0 + c;`,
        `let gk = k0 + kk;`,
        `var v = 0.0;`,
        `if (gc < ${u(n)} && gk < ${u(k)}) { v = ${accB.ld(transB ? `bOff + gc * ${u(k)} + gk` : `bOff + gk * ${u(n)} + gc`)}; }`,
        `${bSlot('kk', 'c')} = v;`,
      ]),
    );
  }

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
