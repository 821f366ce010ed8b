// Seeded, reproducible parameter initialisation. Each parameter draws from its own stream, keyed
// by (seed, name), so adding a layer never changes another layer's initial values.
import { dirname, isAbsolute, resolve } from 'node:path';
import { LorafaError } from '../ir/errors.ts';
import type { Tensor } from '../ir/shape.ts';
import { fmtLoc, numel, sameShape, type Graph, type Init, type Param } from '../ir/types.ts';
import { readSafetensors, type SafeTensor } from '../io/safetensors.ts';

/** FNV-1a over the name, mixed with the seed. */
function streamSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ (seed >>> 0);
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** mulberry32: small, fast, good enough for weights; returns uniforms in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function streamFor(seed: number, name: string): () => number {
  return rng(streamSeed(seed, name));
}

function normals(n: number, u: () => number, std: number, mean: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - u()));
    const t = 2 * Math.PI * u();
    out[i] = mean + std * r * Math.cos(t);
    if (i + 1 < n) out[i + 1] = mean + std * r * Math.sin(t);
  }
  return out;
}

export interface InitContext {
  readonly seed: number;
  /** Directory that relative `file` inits resolve against (the model file's). */
  readonly baseDir?: string;
}

/**
 * scale·(AᵀA)⁻¹ for A [d, r] (row-major), in float64: Gauss–Jordan elimination with partial
 * pivoting on the r×r Gram matrix. A is frozen under LoRA-FA, so this runs once per run.
 */
export function gramInverse(A: ArrayLike<number>, d: number, r: number, scale: number, where = 'lora_A'): Float64Array {
  const m = new Float64Array(r * 2 * r);
  const w = 2 * r;
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += A[k * r + i] * A[k * r + j];
      m[i * w + j] = s;
    }
    m[i * w + r + i] = 1;
  }
  for (let c = 0; c < r; c++) {
    let p = c;
    for (let i = c + 1; i < r; i++) if (Math.abs(m[i * w + c]) > Math.abs(m[p * w + c])) p = i;
    if (!(Math.abs(m[p * w + c]) > 1e-300)) {
      throw new LorafaError(where, `AᵀA is singular (column ${c}): the gradient correction needs A of full column rank`, 'initialise A randomly (kaiming-uniform, the default) or train without --grad-correction');
    }
    if (p !== c) for (let j = 0; j < w; j++) [m[c * w + j], m[p * w + j]] = [m[p * w + j], m[c * w + j]];
    const piv = m[c * w + c];
    for (let j = 0; j < w; j++) m[c * w + j] /= piv;
    for (let i = 0; i < r; i++) {
      if (i === c) continue;
      const f = m[i * w + c];
      if (f !== 0) for (let j = 0; j < w; j++) m[i * w + j] -= f * m[c * w + j];
    }
  }
  const out = new Float64Array(r * r);
  for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) out[i * r + j] = scale * m[i * w + r + j];
  return out;
}

/**
 * Values of derived parameters (init `gram_inverse`) from the values of what they derive from;
 * call after every other parameter has its value (from its init, a checkpoint or an adapter file).
 */
export function resolveDerived(
  params: readonly { readonly name: string; readonly shape: readonly number[]; readonly init: Init }[],
  get: (name: string) => ArrayLike<number> | undefined,
  set: (name: string, data: Float64Array) => void,
): void {
  for (const p of params) {
    const init = p.init;
    if (init.kind !== 'gram_inverse') continue;
    const src = params.find((q) => q.name === init.of);
    const a = get(init.of);
    if (!src || !a) throw new LorafaError(p.name, `derives from "${init.of}", which has no value`, 'this is a lorafa bug: report it');
    const [d, r] = src.shape;
    set(p.name, gramInverse(a, d, r, init.scale, init.of));
  }
}

/** resolveDerived over a graph's parameters and a map of tensors. */
export function resolveDerivedTensors(params: readonly Param[], values: Map<string, Tensor>): void {
  resolveDerived(
    params.map((p) => ({ name: p.value.name, shape: p.value.type.shape, init: p.init })),
    (n) => values.get(n)?.data,
    (n, data) => values.set(n, { shape: values.get(n)!.shape, data }),
  );
}

export function initParam(p: Param, ctx: InitContext, files = new Map<string, Map<string, SafeTensor>>()): Tensor {
  const shape = p.value.type.shape;
  const n = numel(shape);
  const u = streamFor(ctx.seed, p.value.name);
  const init = p.init;
  let data: Float64Array;
  switch (init.kind) {
    case 'zeros':
      data = new Float64Array(n);
      break;
    case 'ones':
      data = new Float64Array(n).fill(1);
      break;
    case 'constant':
      data = new Float64Array(n).fill(init.value);
      break;
    case 'normal':
      data = normals(n, u, init.std, init.mean ?? 0);
      break;
    case 'uniform':
      data = new Float64Array(n).map(() => init.low + (init.high - init.low) * u());
      break;
    case 'kaiming_uniform': {
      const bound = Math.sqrt(6 / ((1 + init.a * init.a) * init.fanIn));
      data = new Float64Array(n).map(() => (2 * u() - 1) * bound);
      break;
    }
    case 'tril': {
      const [rows, cols] = shape;
      data = new Float64Array(n);
      for (let i = 0; i < rows; i++) for (let j = 0; j <= Math.min(i, cols - 1); j++) data[i * cols + j] = 1;
      break;
    }
    case 'arange': {
      const last = shape[shape.length - 1] ?? 1;
      data = new Float64Array(n).map((_, i) => init.start + (i % last));
      break;
    }
    case 'rope': {
      const [seq, half] = shape;
      data = new Float64Array(n);
      for (let pos = 0; pos < seq; pos++) {
        for (let i = 0; i < half; i++) {
          const angle = pos * Math.pow(init.base, (-2 * i) / init.dim);
          data[pos * half + i] = init.part === 'cos' ? Math.cos(angle) : Math.sin(angle);
        }
      }
      break;
    }
    case 'gram_inverse':
      // Filled in by resolveDerived once A is known; identity-shaped placeholder until then.
      data = new Float64Array(n);
      break;
    case 'file': {
      const path = isAbsolute(init.path) ? init.path : resolve(ctx.baseDir ?? '.', init.path);
      let file = files.get(path);
      if (!file) {
        try {
          file = readSafetensors(path);
        } catch (e) {
          if (!(e instanceof LorafaError)) throw e;
          // The model line that asked for the file, then what is wrong with the file itself.
          throw new LorafaError(fmtLoc(p.src) || p.value.name, `parameter "${p.value.name}" is initialised from ${e.where}: ${e.problem}`, e.fix);
        }
        files.set(path, file);
      }
      const key = init.key ?? p.value.name;
      const t = file.get(key);
      if (!t) {
        throw new LorafaError(fmtLoc(p.src) || p.value.name, `"${key}" is not in ${path}`, `the file holds: ${[...file.keys()].slice(0, 12).join(', ')}`);
      }
      if (!sameShape(t.shape, shape)) {
        throw new LorafaError(
          fmtLoc(p.src) || p.value.name,
          `"${key}" in ${path} has shape [${t.shape.join(',')}], parameter "${p.value.name}" expects [${shape.join(',')}]`,
          `initialise it from a tensor of shape [${shape.join(',')}] (Init key), or give the parameter the file's shape`,
        );
      }
      data = t.data;
      break;
    }
  }
  return { shape, data };
}

/** Initial values of every parameter, by name. */
export function initParams(g: Graph, ctx: InitContext): Map<string, Tensor> {
  const files = new Map<string, Map<string, SafeTensor>>();
  const baseDir = ctx.baseDir ?? (g.file ? dirname(resolve(g.file)) : undefined);
  const values = new Map(g.params.map((p) => [p.value.name, initParam(p, { ...ctx, baseDir }, files)]));
  resolveDerivedTensors(g.params, values);
  return values;
}
