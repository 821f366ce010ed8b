// Shared test machinery: seeded data, finite differences, model loading.
import { resolve } from 'node:path';
import type fc from 'fast-check';
import type { CaseGen, Domain } from '../src/ir/ops.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { numel, type Graph } from '../src/ir/types.ts';
import { loadModel, trace } from '../src/cli/load.ts';
import { rng } from '../src/runtime/init.ts';

export const ROOT = resolve(import.meta.dirname, '..');

/** A CaseGen backed by fast-check's imperative generator, so shapes shrink. */
export function caseGen(g: fc.GeneratorValue, fcm: typeof fc): CaseGen {
  return {
    int: (min, max) => g(fcm.integer, { min, max }),
    bool: () => g(fcm.boolean),
  };
}

/** Values drawn from a seeded stream, shaped by the op's input domain. */
export function sample(n: number, domain: Domain, seed: number): Float64Array {
  const u = rng(seed);
  return new Float64Array(n).map(() => {
    const x = 2 * u() - 1;
    switch (domain.kind) {
      case 'real':
        return 1.5 * x;
      case 'positive':
        return 0.5 + 1.5 * u();
      case 'awayFromZero':
        return (x < 0 ? -1 : 1) * (0.1 + 1.4 * Math.abs(x));
      case 'int':
        return domain.lo + Math.floor(u() * (domain.hi - domain.lo + 1));
    }
  });
}

/** Central finite difference of a scalar function along direction `t` (one element when t is a unit vector). */
export function directional(f: (x: Float64Array) => number, x: Float64Array, t: Float64Array, eps = 1e-6): number {
  const plus = x.map((v, i) => v + eps * t[i]);
  const minus = x.map((v, i) => v - eps * t[i]);
  return (f(plus) - f(minus)) / (2 * eps);
}

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** |a − b| ≤ atol + rtol·max(|a|, |b|) */
export function close(a: number, b: number, rtol = 1e-5, atol = 1e-7): boolean {
  return Math.abs(a - b) <= atol + rtol * Math.max(Math.abs(a), Math.abs(b));
}

/** Deterministic feeds for a graph's inputs: floats in [-1, 1), integers in [0, bound). */
export function feedsFor(g: Graph, seed: number, intBound: (name: string) => number): Record<string, Float64Array> {
  const u = rng(seed);
  const feeds: Record<string, Float64Array> = {};
  for (const i of g.inputs) {
    const n = numel(i.value.type.shape);
    feeds[i.value.name] =
      i.value.type.dtype === 'i32'
        ? new Float64Array(n).map(() => Math.floor(u() * intBound(i.value.name)))
        : new Float64Array(n).map(() => 2 * u() - 1);
  }
  return feeds;
}

export const MODEL_FILES = ['mlp', 'encoder', 'llama'] as const;

export async function toyModel(name: string, config?: string) {
  const m = await loadModel(resolve(ROOT, 'models', `${name}.ts`));
  return { model: m, graph: trace(m, config) };
}

export function tensor(shape: readonly number[], data: Float64Array): Tensor {
  return { shape, data };
}
