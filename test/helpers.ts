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
import { readdirSync } from 'node:fs';
import type { ModelConfig } from '../src/model.ts';
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
import type { KernelSource } from '../src/codegen/kernel.ts';
import type { Node } from '../src/ir/types.ts';
import { acquireGpu, checked, PipelineCache, readBuffer } from '../src/runtime/gpu.ts';

/** `data` as the device holds it: f32-rounded, or whole numbers for i32. */
export function deviceValues(data: ArrayLike<number>, dtype: string): Float64Array {
  return Float64Array.from(data, dtype === 'i32' ? (v) => Math.trunc(v) : Math.fround);
}

let helperCache: PipelineCache | undefined;

export interface KernelRunOptions {
  /**
   * Initial contents of the output buffer. An operand whose storage is the output's (an in-place
   * update) is not bound: the kernel reads it from `out`, so the buffer must start as that operand.
   * Default: NaN (i32: −2³¹), so an element the kernel never writes cannot pass for a zero.
   */
  readonly outInit?: ArrayLike<number>;
}

/**
 * Runs kernel `k` (emitted for `node`) once: binding i < k.bound.length holds `inputs` of
 * k.bound[i], the last binding the output. Returns the output as float64.
 *
 * The output binding is followed by a guard region as long again, inside the binding (so WebGPU's
 * robust access does not clamp or drop a stray store): a kernel that writes past the end of its
 * output (a missing bounds check) throws. In an arena such a write would clobber the next tensor.
 */
export async function runKernelOnGpu(
  node: Node,
  k: KernelSource,
  inputs: ReadonlyMap<number, Tensor>,
  opts: KernelRunOptions = {},
): Promise<Float64Array> {
  const gpu = await acquireGpu();
  const device = gpu.device;
  helperCache ??= new PipelineCache(device);
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const upload = (data: ArrayLike<number>, dtype: string) => {
    const buf = device.createBuffer({ size: Math.max(4, data.length * 4), usage });
    if (data.length) device.queue.writeBuffer(buf, 0, dtype === 'i32' ? Int32Array.from(data) : Float32Array.from(data));
    return buf;
  };
  const bound = k.bound.map((v) => {
    const t = inputs.get(v.id);
    if (!t) throw new Error(`runKernelOnGpu: no data for bound value %${v.id} "${v.name}"`);
    return upload(t.data, v.type.dtype);
  });
  const n = numel(node.out.type.shape);
  const guard = Math.max(64, n);
  const sentinel = node.out.type.dtype === 'i32' ? -(2 ** 31) : NaN;
  const init = new Float64Array(n + guard).fill(sentinel);
  if (opts.outInit) init.set(opts.outInit);
  const out = upload(init, node.out.type.dtype);
  const compiled = await helperCache.get(k.wgsl, k.bound.length + 1, `${node.op} ${node.out.name}`);
  await checked(device, `kernel ${node.op} (${node.out.name})`, () => {
    const bind = device.createBindGroup({
      layout: compiled.layout,
      entries: [...bound, out].map((buffer, i) => ({ binding: i, resource: { buffer } })),
    });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(compiled.pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(...k.workgroups);
    pass.end();
    device.queue.submit([enc.finish()]);
  });
  const raw = await readBuffer(device, out, 0, (n + guard) * 4);
  for (const b of [...bound, out]) b.destroy();
  const all = Float64Array.from(node.out.type.dtype === 'i32' ? new Int32Array(raw) : new Float32Array(raw));
  for (let j = n; j < n + guard; j++) {
    if (!Object.is(all[j], sentinel)) throw new Error(`kernel ${node.op} (${node.out.name}) wrote ${all[j]} at element ${j}, past its ${n}-element output`);
  }
  return all.subarray(0, n);
}
