// Shared test machinery: seeded data, finite differences, model loading.
import type { OptimizerOptions } from '../src/passes/optimizer.ts';
import type { AttentionImpl } from '../src/ir/builder.ts';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { expect } from 'vitest';
import type { Dispatch, KernelPlan } from '../src/codegen/kernel-plan.ts';
import { alignUp, type MemoryPlan } from '../src/passes/memory-plan.ts';
import { LorafaError } from '../src/ir/errors.ts';
import type fc from 'fast-check';
import { IGNORE_INDEX, type CaseGen, type Domain } from '../src/ir/ops.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { numel, type DType, type Graph } from '../src/ir/types.ts';
import { roundTo } from '../src/ir/half.ts';
import { loadModel, trace } from '../src/model/load.ts';
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
  if (domain.kind === 'mask') {
    // Rows of 0/1, each with at least one 1; a third of them exactly one (every key but one padding).
    const m = new Float64Array(n);
    for (let r = 0; r < n; r += domain.row) {
      const one = r + Math.floor(u() * domain.row);
      const sparse = u() < 1 / 3;
      for (let j = r; j < r + domain.row; j++) m[j] = j === one || (!sparse && u() < 0.5) ? 1 : 0;
    }
    return m;
  }
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
        if (domain.ignoreFrac !== undefined && u() < domain.ignoreFrac) return IGNORE_INDEX;
        return domain.lo + Math.floor(u() * (domain.hi - domain.lo + 1));
      default:
        throw new Error(`sample: no elementwise draw for domain ${(domain as Domain).kind}`);
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
    if (i.value.name === 'attention_mask') {
      // Real tokens then padding, as a tokenizer pads on the right: each row 1…seq real tokens.
      const [rows, seq] = i.value.type.shape;
      const m = new Float64Array(n);
      for (let r = 0; r < rows; r++) m.fill(1, r * seq, r * seq + 1 + Math.floor(u() * seq));
      feeds[i.value.name] = m;
      continue;
    }
    feeds[i.value.name] =
      i.value.type.dtype === 'i32'
        ? new Float64Array(n).map(() => Math.floor(u() * intBound(i.value.name)))
        : new Float64Array(n).map(() => 2 * u() - 1);
  }
  return feeds;
}

export const MODEL_FILES = ['mlp', 'encoder', 'llama'] as const;

export async function toyModel(name: string, config?: string, opts: { attention?: AttentionImpl } = {}) {
  const m = await loadModel(resolve(ROOT, 'models', `${name}.ts`));
  return { model: m, graph: trace(m, config, undefined, opts) };
}

export function tensor(shape: readonly number[], data: Float64Array): Tensor {
  return { shape, data };
}

// ---------------------------------------------------------------------------------------------
// Named properties. Every property test goes through `property`, so `scripts/fuzz.ts` can count
// the cases each one ran: with LORAFA_FUZZ_LOG set, one JSON line {property, runs, failed, seed}
// is appended per property. Without it, `property` behaves exactly like fc.assert.
import { appendFileSync } from 'node:fs';
import {
  asyncProperty as fcAsyncProperty,
  check as fcCheck,
  defaultReportMessage as fcReport,
  property as fcProperty,
  type Arbitrary,
  type Parameters as FcParameters,
  type RunDetails,
} from 'fast-check';

export interface FuzzLogLine {
  readonly property: string;
  readonly runs: number;
  readonly failed: boolean;
  readonly seed: number;
}

function logRuns<T>(name: string, details: RunDetails<T>): void {
  const file = process.env.LORAFA_FUZZ_LOG;
  if (file) {
    const line: FuzzLogLine = { property: name, runs: details.numRuns, failed: details.failed, seed: details.seed };
    appendFileSync(file, JSON.stringify(line) + '\n');
  }
}

function failure<T>(name: string, details: RunDetails<T>): Error {
  const report = (fcReport as (d: RunDetails<T>) => string | undefined)(details);
  return new Error(`property "${name}": ${report ?? 'failed'}`, {
    cause: details.errorInstance ?? undefined,
  });
}

/** fc.assert(fc.property(arb, predicate)) under a name that the fuzz log records. */
export function property<T>(
  name: string,
  arb: Arbitrary<T>,
  predicate: (value: T) => boolean | void,
  params?: FcParameters<[T]>,
): void {
  const details = fcCheck(fcProperty(arb, predicate), params ?? {});
  logRuns(name, details);
  if (details.failed) throw failure(name, details);
}

/** The async form of `property`. */
export async function propertyAsync<T>(
  name: string,
  arb: Arbitrary<T>,
  predicate: (value: T) => Promise<boolean | void>,
  params?: FcParameters<[T]>,
): Promise<void> {
  const details = await fcCheck(fcAsyncProperty(arb, predicate), params ?? {});
  logRuns(name, details);
  if (details.failed) throw failure(name, details);
}

// ---------------------------------------------------------------------------------------------
// Whole-model helpers (models, lora, lorafa tests). Imports sit here so this block stays appendable.
import type { ModelConfig } from '../src/model/define.ts';
import { initParams } from '../src/runtime/init.ts';

export const MODELS_DIR = resolve(ROOT, 'models');

/** Every model file in models/ (without .ts), so a new model is covered without a new test row. */
export function modelFiles(): string[] {
  return readdirSync(MODELS_DIR)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
    .map((f) => f.slice(0, -3))
    .sort();
}

/** Bounds for a config's integer inputs: labels below `classes` (else `vocab`), other ids below `vocab`. */
export function intBoundsFor(cfg: ModelConfig): (input: string) => number {
  const num = (k: string) => (typeof cfg[k] === 'number' ? (cfg[k] as number) : undefined);
  return (input) => {
    const bound = /label/.test(input) ? (num('classes') ?? num('vocab')) : (num('vocab') ?? num('classes'));
    if (bound === undefined) throw new Error(`no integer bound for input "${input}": the config has neither vocab nor classes`);
    return bound;
  };
}

/**
 * Initial parameters (seeded) with every lora_B replaced by seeded uniform(−scale, scale) values:
 * the zero init of B makes dA ≡ 0, which would hide any bug on the A path.
 */
export function paramsWithRandomB(g: Graph, seed: number, scale = 0.5): Map<string, Tensor> {
  const params = initParams(g, { seed });
  for (const p of g.params) {
    if (p.role !== 'lora_B') continue;
    const u = rng(seed * 7919 + p.value.id + 1);
    const n = numel(p.value.type.shape);
    params.set(p.value.name, { shape: p.value.type.shape, data: new Float64Array(n).map(() => scale * (2 * u() - 1)) });
  }
  return params;
}

/** The config whole-model tests run: `toy` where a model has one, else its default. */
export function toyConfigName(def: { readonly configs: Readonly<Record<string, unknown>>; readonly defaultConfig: string }): string {
  return 'toy' in def.configs ? 'toy' : def.defaultConfig;
}

// ---------------------------------------------------------------------------------------------
// GPU helpers (gpu-ops, gpu-graphs tests): values as the device stores them, and one emitted
// kernel run on fresh buffers, for kernels emitted with a context runNodeOnGpu does not build
// (a folded grid, scalars bound as buffers, shared or in-place storage).
export { runKernelOnGpu, type KernelRunOptions } from '../src/runtime/single.ts';

/** `data` as the device holds it: f32-rounded, or whole numbers for i32. */
export function deviceValues(data: ArrayLike<number>, dtype: string): Float64Array {
  return Float64Array.from(data, (v) => roundTo(dtype as DType, v));
}


/** Runs `f`, which must throw a LorafaError; returns it. */
export function thrown(f: () => unknown): LorafaError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(LorafaError);
    return e as LorafaError;
  }
  throw new Error('expected an error, none was thrown');
}

/** Every regular file under `dir` and its sha256, keyed by its path relative to `base`. */
export function fileDigests(dir: string, base = dir): Map<string, string> {
  const m = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const f = join(d, e.name);
      if (e.isDirectory()) walk(f);
      else if (e.isFile()) m.set(relative(base, f), createHash('sha256').update(readFileSync(f)).digest('hex'));
    }
  };
  walk(dir);
  return m;
}

// ---------------------------------------------------------------------------------------------
// poison: a VJP reads only what the plan keeps

/**
 * `kp` with dispatches that overwrite with NaN every arena byte no tensor live across the
 * forward/backward boundary holds (dead forward values, and bytes not yet written; also the
 * tensors in `extraPoison`, by id), inserted before the first backward dispatch (`at`); `gaps`
 * are the byte ranges poisoned. A VJP that reads a tensor the plan does not keep then reads NaN.
 */
export function poisoned(
  kp: KernelPlan,
  plan: MemoryPlan,
  align: number,
  extraPoison: ReadonlySet<number> = new Set(),
): { kp: KernelPlan; at: number; gaps: { buffer: number; offset: number; bytes: number }[] } {
  const bStart = plan.backwardStart;
  const backLabels = new Set(plan.schedule.slice(bStart).map((n) => `${n.op} ${n.out.name}`));
  const at = kp.dispatches.findIndex((d) => backLabels.has(d.label));
  expect(at).toBeGreaterThan(0);
  const kernel = kp.kernels.length;
  const wgsl = `@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i < arrayLength(&out)) { out[i] = 0x7fc00000u; }
}
`;
  const extra: Dispatch[] = [];
  const poisonedGaps: { buffer: number; offset: number; bytes: number }[] = [];
  for (const buf of kp.buffers.filter((b) => b.region === 'arena')) {
    const kept = plan.tensors
      .filter((t) => t.buffer === buf.index && t.start < bStart && t.end >= bStart && !extraPoison.has(t.id))
      .map((t) => [t.offset, t.offset + t.bytes] as const)
      .sort((a, b) => a[0] - b[0]);
    let from = 0;
    const gaps: (readonly [number, number])[] = [];
    for (const [s, e] of [...kept, [buf.bytes, buf.bytes] as const]) {
      const a = alignUp(from, align);
      if (s > a) gaps.push([a, s]);
      from = Math.max(from, e);
    }
    for (const [s, e] of gaps) {
      poisonedGaps.push({ buffer: buf.index, offset: s, bytes: e - s });
      const words = (e - s) / 4;
      const groups = Math.ceil(words / 256);
      const x = Math.min(groups, 65535);
      extra.push({ kernel, label: `poison ${buf.index}:${s}`, bindings: [{ buffer: buf.index, offset: s, size: e - s }], workgroups: [x, Math.ceil(groups / x), 1] });
    }
  }
  expect(extra.length).toBeGreaterThan(0);
  return {
    kp: { ...kp, kernels: [...kp.kernels, { wgsl, bindings: 1, label: 'poison' }], dispatches: [...kp.dispatches.slice(0, at), ...extra, ...kp.dispatches.slice(at)] },
    at,
    gaps: poisonedGaps,
  };
}

/** max |a − b| / max |b| over one tensor (0 when both are all zeros; Infinity on NaN or a length mismatch). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return Number.isNaN(d) || a.length !== b.length ? Infinity : m ? d / m : d;
}

/** The optimizers multi-step tests run: SGD with momentum and weight decay, and AdamW. */
export interface OptCase {
  readonly label: string;
  readonly opts: OptimizerOptions;
  readonly lr: number;
}
export const OPT_CASES: readonly OptCase[] = [
  { label: 'sgd momentum=0.9 weight_decay=0.01', opts: { kind: 'sgd', momentum: 0.9, weightDecay: 0.01 }, lr: 0.05 },
  { label: 'adamw', opts: { kind: 'adamw' }, lr: 0.01 },
];
