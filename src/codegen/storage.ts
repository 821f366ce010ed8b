// How a kernel reads and writes one storage binding, whatever the tensor's storage dtype.
//
// Arithmetic is always f32 (i32 for integer tensors); only storage varies (--dtype f16|bf16 keeps
// frozen weights and activations in 2 bytes, see memory-plan.ts storageBytes):
//   f32   array<f32> (or vec4<f32>)              read and written as is: the text of an f32 kernel
//                                                  is exactly what it was before half storage
//   f16   array<f16> (or vec4<f16>), `enable f16`  the adapter's shader-f16 feature; each read
//                                                  widens to f32, each write rounds to f16
//   f16p  array<u32>, two halves per word         f16 without shader-f16: unpack2x16float /
//                                                  pack2x16float
//   bf16  array<u32>, two halves per word         bf16 is the top half of an f32: widening is a
//                                                  shift, narrowing rounds to nearest even
// A packed output cannot be written one half at a time with plain stores (two invocations that
// write the two halves of one word would race), so a packed output is array<atomic<u32>>: a
// single half is written with atomicAnd (clear) + atomicOr (set), which touch disjoint bits and
// commute; a vec4 (two whole words) with two atomicStores.
import type { Value } from '../ir/types.ts';

export type ElemKind = 'f32' | 'i32' | 'f16' | 'f16p' | 'bf16';

export const PACKED: ReadonlySet<ElemKind> = new Set(['f16p', 'bf16']);

/** One binding: its declaration, helper functions, and expressions for loads and stores. */
export interface Access {
  readonly kind: ElemKind;
  readonly decl: string;
  /** Helper functions this binding needs (empty for f32 / i32 / f16). */
  readonly funcs: readonly string[];
  /** The f32 (i32) element at flat index `e` (on a vec4 binding: element e of the flat array). */
  ld(e: string): string;
  /** vec4 number `q` (elements 4q … 4q+3) of a vec4 binding. */
  ld4(q: string): string;
  /** Statement storing f32 `v` at element `e` (on a vec4 binding: vec4 number e, see st4). */
  st(e: string, v: string): string;
  st4(q: string, v: string): string;
}

const CONVERT: Record<'f16p' | 'bf16', { widen: (h: string) => string; narrow: string }> = {
  // pack2x16float rounds one f32 into the low half; the high half (0.0) is discarded.
  f16p: { widen: (h) => `unpack2x16float(${h}).x`, narrow: 'pack2x16float(vec2<f32>(v, 0.0)) & 0xffffu' },
  bf16: { widen: (h) => `bitcast<f32>((${h}) << 16u)`, narrow: 'lorafa_bf16(v)' },
};

/** Round to nearest even into bf16 bits; a NaN stays a (quiet) NaN, overflow rounds to ±inf. */
export const BF16_NARROW = `fn lorafa_bf16(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return (b >> 16u) | 0x40u; }
  return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}`;

/**
 * `vec`: declared as vec4 (the caller guarantees the bound slice holds whole vec4s);
 * `written`: the kernel stores into it (a packed binding then is atomic).
 */
export function access(binding: number, name: string, kind: ElemKind, opts: { vec?: boolean; written?: boolean } = {}): Access {
  const vec = opts.vec ?? false;
  const decl = (t: string) => `@group(0) @binding(${binding}) var<storage, read_write> ${name}: array<${t}>;`;
  if (kind === 'f32' || kind === 'i32') {
    return {
      kind,
      decl: decl(vec ? `vec4<${kind}>` : kind),
      funcs: [],
      ld: (e) => (vec ? `${name}[(${e}) / 4u][(${e}) % 4u]` : `${name}[${e}]`),
      ld4: (q) => `${name}[${q}]`,
      st: (e, v) => `${name}[${e}] = ${v};`,
      st4: (q, v) => `${name}[${q}] = ${v};`,
    };
  }
  if (kind === 'f16') {
    return {
      kind,
      decl: decl(vec ? 'vec4<f16>' : 'f16'),
      funcs: [],
      ld: (e) => (vec ? `f32(${name}[(${e}) / 4u][(${e}) % 4u])` : `f32(${name}[${e}])`),
      ld4: (q) => `vec4<f32>(${name}[${q}])`,
      st: (e, v) => (vec ? `${name}[${e}] = vec4<f16>(${v});` : `${name}[${e}] = f16(${v});`),
      st4: (q, v) => `${name}[${q}] = vec4<f16>(${v});`,
    };
  }
  const c = CONVERT[kind];
  const written = opts.written ?? false;
  const word = (w: string) => (written ? `atomicLoad(&${name}[${w}])` : `${name}[${w}]`);
  const funcs = [
    `fn ld_${name}(e: u32) -> f32 {
  let w = ${word('e >> 1u')};
  return ${c.widen('select(w & 0xffffu, w >> 16u, (e & 1u) == 1u)')};
}`,
    `fn ld4_${name}(q: u32) -> vec4<f32> {
  let a = ${word('2u * q')};
  let b = ${word('2u * q + 1u')};
  return vec4<f32>(${c.widen('a & 0xffffu')}, ${c.widen('a >> 16u')}, ${c.widen('b & 0xffffu')}, ${c.widen('b >> 16u')});
}`,
  ];
  if (written) {
    funcs.push(
      `fn h_${name}(v: f32) -> u32 { return ${c.narrow}; }`,
      `fn st_${name}(e: u32, v: f32) {
  let sh = (e & 1u) * 16u;
  atomicAnd(&${name}[e >> 1u], ~(0xffffu << sh));
  atomicOr(&${name}[e >> 1u], h_${name}(v) << sh);
}`,
      `fn st4_${name}(q: u32, v: vec4<f32>) {
  atomicStore(&${name}[2u * q], h_${name}(v.x) | (h_${name}(v.y) << 16u));
  atomicStore(&${name}[2u * q + 1u], h_${name}(v.z) | (h_${name}(v.w) << 16u));
}`,
    );
  }
  return {
    kind,
    decl: decl(written ? 'atomic<u32>' : 'u32'),
    funcs,
    ld: (e) => `ld_${name}(${e})`,
    ld4: (q) => `ld4_${name}(${q})`,
    st: (e, v) => (vec ? `st4_${name}(${e}, ${v});` : `st_${name}(${e}, ${v});`),
    st4: (q, v) => `st4_${name}(${q}, ${v});`,
  };
}

/**
 * WGSL for f32 `x` rounded to what storage `kind` keeps, widened back to f32 (x itself for f32),
 * so that x − rounded is exactly the part a store would lose. bf16 needs lorafa_bf16, which the
 * preamble of a module with a written bf16 binding has.
 */
export function roundedTo(kind: ElemKind, x: string): string {
  // f16: x's mantissa rounded to nearest even at f16's 10 bits, with integer ops. Not f32(f16(x))
  // or an unpack2x16float(pack2x16float(x)) round trip: lavapipe folds both away (measured: the
  // low part came out 0). The result is an f16 value wherever f16 has x's exponent, so a store
  // of it is exact; below 2⁻¹⁴ it may round again on store, by at most 2⁻²⁵.
  if (kind === 'f16' || kind === 'f16p') return `bitcast<f32>((bitcast<u32>(${x}) + 0xfffu + ((bitcast<u32>(${x}) >> 13u) & 1u)) & 0xffffe000u)`;
  if (kind === 'bf16') return `bitcast<f32>(lorafa_bf16(${x}) << 16u)`;
  return x;
}

/** What a module with these bindings needs before its declarations: `enable f16;`, shared helpers. */
export function preamble(accesses: readonly Access[]): string {
  const lines: string[] = [];
  if (accesses.some((a) => a.kind === 'f16')) lines.push('enable f16;');
  if (accesses.some((a) => a.kind === 'bf16' && a.funcs.length > 2)) lines.push(BF16_NARROW);
  return lines.map((l) => `${l}\n`).join('');
}

/** Declarations, helper functions and preamble of a module's bindings, in binding order. */
export function declare(accesses: readonly Access[]): string {
  return `${preamble(accesses)}${accesses.map((a) => a.decl).join('\n')}${accesses.some((a) => a.funcs.length) ? `\n${accesses.flatMap((a) => a.funcs).join('\n')}` : ''}`;
}

/** The default storage of a value: its IR dtype (f32 or i32); half storage comes from the plan. */
export function defaultElem(v: Value): ElemKind {
  return v.type.dtype === 'i32' ? 'i32' : 'f32';
}
