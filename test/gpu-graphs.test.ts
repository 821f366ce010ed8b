// Whole graphs on the GPU: the memory plan, the kernel plan and the step runner against the
// float64 reference interpreter.
//
// 1. Random DAGs built from the op registry (any op, views and constants included, a new op joins
//    automatically), some with in-place write-backs into parameters, planned under random small
//    alignments and buffer limits so arenas split; every output, every parameter after the step
//    and every input (which nothing may overwrite) is compared.
// 2. Random Builder models (linear layers, norms, residuals, views) trained one step in every mode
//    and optimizer under random limits.
// 3. Every model in models/ at toy size, in full, LoRA and LoRA-FA modes, one SGD step: the loss
//    and every parameter after the step.
// For every plan: the runner allocates exactly the plan's peak, and every binding of every
// dispatch lies inside its buffer, at an aligned offset, not overlapping another binding.
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildKernelPlan, type KernelPlan, type Slice } from '../src/codegen/kernel-plan.ts';
import { Builder } from '../src/ir/builder.ts';
import { OP_NAMES, OPS, type CaseGen, type Domain, type OpDef, type OpName } from '../src/ir/ops.ts';
import { broadcastsTo, type Tensor } from '../src/ir/shape.ts';
import { fmtType, numel, type Graph, type TensorType, type Value } from '../src/ir/types.ts';
import { verify } from '../src/ir/verify.ts';
import type { ModelConfig } from '../src/model/define.ts';
import { compileTraining, MODES, type Mode } from '../src/passes/compile.ts';
import { alignUp, LIMIT_PRESETS, planMemory, type Limits, type MemoryPlan } from '../src/passes/memory-plan.ts';
import { optimizerFeeds, type OptimizerOptions } from '../src/passes/optimizer.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { acquireGpu, type Gpu } from '../src/runtime/gpu.ts';
import { referenceStep, runReference } from '../src/runtime/reference.ts';
import {
  caseGen,
  deviceValues,
  feedsFor,
  intBoundsFor,
  modelFiles,
  paramsWithRandomB,
  propertyAsync,
  sample,
  toyConfigName,
  toyModel,
} from './helpers.ts';
import { FC_RUNS } from './setup.ts';

const RUNS = Math.max(5, Math.round(FC_RUNS / 3));
const FEW = Math.max(3, Math.round(FC_RUNS / 8));
const TIMEOUT = Math.max(120_000, FC_RUNS * 3_000);

let gpu: Gpu;
/** The device's minStorageBufferOffsetAlignment: plans use a multiple of it. */
let ALIGN: number;
beforeAll(async () => {
  gpu = await acquireGpu();
  ALIGN = gpu.limits.minStorageBufferOffsetAlignment;
});

const anyDef = (op: OpName) => OPS[op] as OpDef<any>;

// ---------------------------------------------------------------------------------------------
// Plan checks shared by every section

/** Id of the value whose storage holds `v` (views and write-backs alias), -1 for an inlined constant. */
function rootId(plan: MemoryPlan, v: Value): number {
  let id = v.id;
  for (let a = plan.aliases.get(id); a !== undefined; a = plan.aliases.get(id)) {
    if (a < 0) return -1;
    id = a;
  }
  return id;
}

/** Where the plan stores value `v`, or undefined for an inlined constant. */
function sliceOf(plan: MemoryPlan, v: Value): Slice | undefined {
  const id = rootId(plan, v);
  if (id < 0) return undefined;
  const t = plan.tensors.find((x) => x.id === id);
  if (!t) throw new Error(`value %${v.id} "${v.name}" has no storage in the plan`);
  return { buffer: t.buffer, offset: t.offset, size: t.bytes };
}

/**
 * Bindings inside their buffers, aligned, 4-byte sized, disjoint within a dispatch; bytes = peak.
 * (Plain checks, not expect(): a plan has thousands of bindings.)
 */
function checkKernelPlan(kp: KernelPlan, plan: MemoryPlan, runner: StepRunner): void {
  const align = plan.limits.alignment;
  const fail = (what: string) => {
    throw new Error(`kernel plan: ${what}`);
  };
  expect(kp.bytes, 'kernel plan bytes').toBe(plan.peak);
  // The runner's 4-byte readback buffer is not a plan buffer and is not counted.
  expect(runner.allocatedBytes, 'bytes the runner allocated').toBe(plan.peak);
  expect(kp.buffers.map((b) => b.bytes)).toEqual(plan.buffers.map((b) => b.bytes));
  const maxWg = gpu.limits.maxComputeWorkgroupsPerDimension;
  for (const d of kp.dispatches) {
    if (d.bindings.length !== kp.kernels[d.kernel].bindings) fail(`${d.label}: ${d.bindings.length} bindings, its kernel declares ${kp.kernels[d.kernel].bindings}`);
    d.bindings.forEach((s, i) => {
      const what = `${d.label} binding ${i} (buffer ${s.buffer} @${s.offset} +${s.size})`;
      if (s.offset % align !== 0) fail(`${what}: offset not a multiple of ${align}`);
      if (s.size % 4 !== 0 || s.size < 4) fail(`${what}: size not a positive multiple of 4`);
      if (s.offset + s.size > kp.buffers[s.buffer].bytes) fail(`${what}: ends past its ${kp.buffers[s.buffer].bytes}-byte buffer`);
      if (s.size > alignUp(plan.limits.maxBindingSize, 4)) fail(`${what}: over the binding limit ${plan.limits.maxBindingSize}`);
      for (let j = 0; j < i; j++) {
        const o = d.bindings[j];
        if (o.buffer === s.buffer && o.offset < s.offset + s.size && s.offset < o.offset + o.size) fail(`${what} overlaps binding ${j} (@${o.offset} +${o.size})`);
      }
    });
    if (!d.workgroups.every((w) => Number.isInteger(w) && w >= 1 && w <= maxWg)) fail(`${d.label}: workgroups [${d.workgroups}]`);
  }
  for (const t of plan.tensors) if (t.offset % align !== 0) fail(`${t.name} at offset ${t.offset}, not a multiple of ${align}`);
}

/**
 * |gpu − ref| ≤ tol·(1 + |ref|), element by element. Composed graphs have no per-op bound: each
 * stored intermediate is rounded to f32 (2^-24 relative) and the errors propagate through up to
 * a dozen ops, sums of a few hundred terms and values bounded by `tame`. GRAPH_TOL = 1e-5: the
 * worst measured over 450 random graphs and 150 random models was 5.8e-7 (17× below).
 * Plumbing bugs (a wrong offset, a clobbered or stale slot, a missed write) are off by O(1) of
 * the values, far above it.
 */
const GRAPH_TOL = 1e-5;

/**
 * One training step of `step` (laid out by `plan`) on the GPU and in referenceStep, from the same
 * seeded parameters (f32-rounded, random B) and feeds; the kernel plan checked against the memory
 * plan on the way.
 */
async function stepBoth(step: Graph, plan: MemoryPlan, seed: number, intBound: (name: string) => number, optimizer: OptimizerOptions, lr: number) {
  const kp = buildKernelPlan(step, plan);
  const feeds = { ...feedsFor(step, seed, intBound), ...optimizerFeeds(optimizer, lr, 1) };
  const params = new Map([...paramsWithRandomB(step, seed)].map(([k, v]) => [k, { shape: v.shape, data: deviceValues(v.data, 'f32') }]));
  const ref = referenceStep(step, { feeds, params });
  const runner = await StepRunner.create(kp, gpu);
  try {
    checkKernelPlan(kp, plan, runner);
    runner.writeParams(params);
    const loss = await runner.step(feeds);
    return { loss, ref, params, after: await runner.readParams(), updated: new Set(step.updates.map((u) => u.target)) };
  } finally {
    runner.destroy();
  }
}

function expectCloseAll(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= tol * (1 + Math.abs(want[i])))) throw new Error(`${what}[${i}]: gpu ${got[i]}, ref ${want[i]}, |Δ| ${d} > ${tol}·(1 + |ref|)`);
  }
}

function expectExact(what: string, got: ArrayLike<number>, want: ArrayLike<number>): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) throw new Error(`${what}[${i}]: ${got[i]}, expected exactly ${want[i]}`);
}

// ---------------------------------------------------------------------------------------------
// 1. Random registry DAGs

const f32 = (shape: readonly number[]): TensorType => ({ dtype: 'f32', shape });

interface RandomGraph {
  readonly graph: Graph;
  /** Domain of every input and parameter, by name (values are sampled from it). */
  readonly domains: ReadonlyMap<string, { readonly type: TensorType; readonly domain: Domain }>;
  /** Non-loss outputs. */
  readonly outputs: readonly string[];
  /** Parameters written back in place. */
  readonly updated: readonly string[];
  readonly ops: readonly string[];
}

/** Ops whose output jumps: fed only fresh inputs, whose values are far from the jumps. */
const discontinuous = (op: OpName) => anyDef(op).vjp === 'nondiff' && anyDef(op).wgsl.kind === 'map';

/**
 * The ops random graphs draw from: every op but the backward-only kernels. Those only ever read
 * what their forward op's VJP hands them (the row's own log-sum-exp L, its D); from arbitrary
 * operands P = exp(s − L) is unbounded and the result a cancellation of terms up to `tame`'s
 * 1e3, which GRAPH_TOL is not meant for (a causal attention_dq fed a random L was off by 4e-5).
 * Their kernels are checked on random operands against their own error bounds in gpu-ops.test.ts,
 * and with their forward ops in every model's step (models.test.ts, attention.test.ts).
 */
const GRAPH_OPS = OP_NAMES.filter((op) => anyDef(op).vjp !== 'backward-only');

/** Ops normalising rows of their first operand (see randomGraph). */
const NORM_ROWS = new Set<OpName>(['rms_norm', 'rms_norm_grad', 'layer_norm', 'layer_norm_grad']);

function randomShape(g: CaseGen): number[] {
  return Array.from({ length: g.int(0, 3) }, () => g.int(1, 4));
}

/**
 * 1–3 inputs (or parameters) and maybe a scalar constant, then 3–10 ops drawn from the
 * registry, each from its own testCase. An operand is an existing value of the wanted type
 * when one can be made to fit (as is, reshaped, broadcast, sliced, or summed to a scalar and
 * broadcast; often through a stop_gradient view), otherwise a fresh input or parameter. Discrete operands (indices, where's condition, step/eq) are always fresh.
 * Then 0–2 parameters are updated in place by an elementwise op of themselves.
 */
function randomGraph(g: CaseGen): RandomGraph {
  const b = new Builder({ name: 'random' });
  const domains = new Map<string, { type: TensorType; domain: Domain }>();
  const pool: Value[] = [];
  const params: Value[] = [];
  /** Parameters each value reads (transitively), so no write-back reads another's target. */
  const reads = new Map<number, Set<number>>();
  const ops: string[] = [];
  let count = 0;
  const fresh = (type: TensorType, domain: Domain, param = g.int(0, 3) === 0 && type.dtype === 'f32'): Value => {
    const name = `${param ? 'p' : 'x'}${count++}`;
    const v = param ? b.param(name, type.shape, { init: { kind: 'zeros' } }) : b.input(name, type.shape, type.dtype);
    domains.set(name, { type, domain });
    reads.set(v.id, new Set(param ? [v.id] : []));
    if (param) params.push(v);
    if (type.dtype === 'f32') pool.push(v);
    return v;
  };
  const emit = (op: OpName, ins: readonly Value[], attrs: any): Value => {
    const v = b.emit(op, ins, attrs);
    reads.set(v.id, new Set(ins.flatMap((x) => [...(reads.get(x.id) ?? [])])));
    ops.push(op);
    return v;
  };
  /** The value the previous operand came from: the next one often comes from it too. */
  let previous: Value | undefined;
  /** An existing value reshaped / broadcast / sliced / reduced to `shape`, if one fits. */
  const fit = (shape: readonly number[], avoid: ReadonlySet<number>): Value | undefined => {
    const ok = pool.filter((v) => ![...(reads.get(v.id) ?? [])].some((p) => avoid.has(p)));
    if (!ok.length || g.int(0, 4) === 0) return undefined;
    let v = previous && ok.includes(previous) && g.bool() ? previous : ok[g.int(0, ok.length - 1)];
    previous = v;
    // Often through a view: one storage under several ids (operands sharing a binding).
    if (g.int(0, 2) === 0) v = emit('stop_gradient', [v], {});
    const s = v.type.shape;
    if (s.length === shape.length && s.every((d, i) => d === shape[i])) return v;
    if (numel(s) === numel(shape) && shape.length) return emit('reshape', [v], { shape: [...shape] });
    if (broadcastsTo(s, shape)) return emit('broadcast', [v], { shape: [...shape] });
    if (s.length === shape.length && s.every((d, i) => d >= shape[i])) {
      const starts = shape.map((d, i) => g.int(0, s[i] - d));
      return emit('slice', [v], { starts, ends: starts.map((st, i) => st + shape[i]) });
    }
    const scalar = s.length ? emit('sum', [v], { axes: s.map((_, i) => i), keepdims: false }) : v;
    return shape.length ? emit('broadcast', [scalar], { shape: [...shape] }) : scalar;
  };
  const operand = (op: OpName, x: { type: TensorType; domain: Domain }, avoid: ReadonlySet<number> = new Set()): Value => {
    if (x.type.dtype === 'i32' || x.domain.kind === 'int' || x.domain.kind === 'mask' || discontinuous(op)) return fresh(x.type, x.domain, false);
    const v = fit(x.type.shape, avoid);
    if (!v) return fresh(x.type, x.domain);
    // log, sqrt, rsqrt, pow and div's denominator want positive or non-zero operands: v² + ½.
    if (x.domain.kind === 'positive' || x.domain.kind === 'awayFromZero') {
      return emit('add', [emit('mul', [v, v], {}), b.scalar(0.5)], {});
    }
    return v;
  };

  for (let i = g.int(1, 3); i > 0; i--) fresh(f32(randomShape(g)), { kind: 'real' });
  let last = pool[pool.length - 1];
  // A scalar constant operands may pick: inlined into the kernels that read it, never stored.
  if (g.bool()) pool.push(emit('fill', [], { value: g.int(-3, 3) / 2, shape: [], dtype: 'f32' }));
  for (let step = g.int(3, 10); step > 0; step--) {
    const op = GRAPH_OPS[g.int(0, GRAPH_OPS.length - 1)];
    const oc = anyDef(op).testCase(g);
    // A norm's rows come fresh: a row made from a broadcast scalar has equal elements, where
    // LayerNorm's output is rounding noise times rstd = 1/√eps and RMSNorm's gradient cancels to
    // eps/(x² + eps) of its terms, ill-conditioned in any f32 implementation (PyTorch's too); the
    // norm kernels' own error bounds are checked element by element in gpu-ops.test.ts.
    const ins = oc.inputs.map((x, i) => (i === 0 && NORM_ROWS.has(op) ? fresh(x.type, x.domain) : operand(op, x)));
    last = emit(op, ins, oc.attrs);
    if (last.type.dtype === 'f32') pool.push(last);
  }
  b.loss(emit('sum', [last], { axes: last.type.shape.map((_, i) => i), keepdims: false }));

  // Write-backs: p ← op(p, …) with an elementwise op, operands not reading another target.
  const targets = params.filter(() => g.bool()).slice(0, 2);
  const updates: { target: string; value: Value }[] = [];
  const maps = OP_NAMES.filter((op) => anyDef(op).wgsl.kind === 'map' && !discontinuous(op));
  for (const p of targets) {
    const op = maps[g.int(0, maps.length - 1)];
    const oc = anyDef(op).testCase(g);
    // p itself goes where any real is allowed (p's values are arbitrary reals).
    const real = oc.inputs.flatMap((x, i) => (x.domain.kind === 'real' ? [i] : []));
    if (!real.length) continue;
    const at = real[g.int(0, real.length - 1)];
    const avoid = new Set(targets.filter((t) => t !== p).map((t) => t.id));
    const ins = oc.inputs.map((x, i) =>
      i === at ? p : operand(op, { type: f32(x.domain.kind === 'int' ? [] : p.type.shape), domain: x.domain }, avoid),
    );
    const value = emit(op, ins, oc.attrs);
    if (!(value.type.shape.length === p.type.shape.length && value.type.shape.every((d, i) => d === p.type.shape[i]))) continue;
    updates.push({ target: p.name, value });
  }
  // A few more outputs: computed values (a view of a parameter that is written back is read
  // back after the write, so those are skipped when read).
  const built = b.build();
  const candidates = built.nodes.filter((n) => !updates.some((u) => u.value === n.out) && n.out.type.dtype === 'f32');
  const outputs: string[] = [];
  for (let k = g.int(0, 3); k > 0 && candidates.length; k--) {
    const n = candidates[g.int(0, candidates.length - 1)];
    if (Object.values(built.outputs).includes(n.out)) continue;
    const name = `out${outputs.length}`;
    (built.outputs as Record<string, Value>)[name] = n.out;
    outputs.push(name);
  }
  const graph = verify({ ...built, updates }, 'random graph');
  return { graph, domains, outputs, updated: updates.map((u) => u.target), ops };
}

/** Alignment a multiple of the device's; buffers a few of the largest tensor, so arenas split. */
function randomLimits(g: CaseGen, graph: Graph): Limits {
  const alignment = ALIGN * 2 ** g.int(0, 2);
  const values = [...graph.inputs.map((i) => i.value), ...graph.params.map((p) => p.value), ...graph.nodes.map((n) => n.out)];
  const largest = Math.max(4, ...values.map((v) => 4 * numel(v.type.shape)));
  const maxBindingSize = largest + 4 * g.int(0, 16);
  return { alignment, maxBindingSize, maxBufferSize: alignUp(maxBindingSize, alignment) * g.int(1, 4) + 4 * g.int(0, 8) };
}

/** No value of the reference run is non-finite or huge (exp of exp…): such graphs are redrawn. */
function tame(values: ReadonlyMap<number, Tensor>): boolean {
  for (const t of values.values()) for (const x of t.data) if (!(Math.abs(x) <= 1e3)) return false;
  return true;
}

describe('random registry graphs through planMemory → buildKernelPlan → StepRunner', () => {
  const arb = fc.tuple(fc.gen(), fc.integer({ min: 0, max: 0x7fffffff })).map(([gen, seed]) => {
    const g = caseGen(gen, fc);
    const rg = randomGraph(g);
    const limits = randomLimits(g, rg.graph);
    return { rg, limits, seed, toString: () => `graph [${rg.ops.join(' ')}] updates [${rg.updated}] limits ${JSON.stringify(limits)} seed ${seed}` };
  });

  it('match the reference: every output, the loss, every parameter after its write-back, inputs untouched', async () => {
    const seen = { splitArena: 0, writeBacks: 0, views: 0, constants: 0, ran: 0 };
    await propertyAsync(
      'gpu/graphs/random',
      arb,
      async ({ rg, limits, seed }) => {
        const { graph } = rg;
        const feeds: Record<string, Float64Array> = {};
        const params = new Map<string, Tensor>();
        let k = 0;
        for (const [name, { type, domain }] of rg.domains) {
          const data = deviceValues(sample(numel(type.shape), domain, (seed + 7919 * ++k) >>> 0), type.dtype);
          if (graph.params.some((p) => p.value.name === name)) params.set(name, { shape: type.shape, data });
          else feeds[name] = data;
        }
        const ref = referenceStep(graph, { feeds, params });
        fc.pre(tame(runReference(graph, { feeds, params }).values));

        const plan = planMemory(graph, { limits });
        const kp = buildKernelPlan(graph, plan);
        const runner = await StepRunner.create(kp, gpu);
        try {
          checkKernelPlan(kp, plan, runner);
          runner.writeParams(params);
          const loss = await runner.step(feeds);
          expectCloseAll('loss', [loss], ref.outputs.loss.data, GRAPH_TOL);
          for (const name of rg.outputs) {
            const v = graph.outputs[name];
            const s = sliceOf(plan, v);
            // An inlined scalar constant has no storage to read; a view of a parameter that was
            // written back holds the new value.
            if (!s || graph.params.some((p) => rg.updated.includes(p.value.name) && p.value.id === rootId(plan, v))) continue;
            const got = await runner.read(s, v.type.dtype, numel(v.type.shape));
            expectCloseAll(`output ${name} (${fmtType(v.type)})`, got, ref.outputs[name].data, GRAPH_TOL);
          }
          const after = await runner.readParams();
          for (const p of graph.params) {
            const name = p.value.name;
            if (rg.updated.includes(name)) expectCloseAll(`parameter ${name} after its write-back`, after.get(name)!, ref.params.get(name)!.data, GRAPH_TOL);
            else expectExact(`parameter ${name} (not written back)`, after.get(name)!, params.get(name)!.data);
          }
          for (const i of kp.inputs) {
            expectExact(`input ${i.name} after the step`, await runner.read(i.slice, i.dtype, numel(i.shape)), feeds[i.name]);
          }
        } finally {
          runner.destroy();
        }
        seen.ran++;
        if (plan.buffers.filter((b) => b.region === 'arena').length > 1) seen.splitArena++;
        if (graph.updates.length) seen.writeBacks++;
        if (graph.nodes.some((n) => OPS[n.op as OpName].wgsl.kind === 'view')) seen.views++;
        if ([...plan.aliases.values()].includes(-1)) seen.constants++;
      },
      { numRuns: RUNS },
    );
    // The generator really reaches what this test is for.
    if (RUNS >= 20) for (const [what, n] of Object.entries(seen)) expect(n, `cases with ${what}`).toBeGreaterThan(0);
  }, TIMEOUT);
});

// ---------------------------------------------------------------------------------------------
// 2. Random Builder models, trained one step

type Block = 'plain' | 'residual' | 'shared' | 'norm' | 'view' | 'scale';
interface ModelSpec {
  readonly batch: number;
  readonly width: number;
  readonly blocks: readonly { readonly kind: Block; readonly width: number; readonly act: 'relu' | 'tanh' | 'gelu' | 'silu' }[];
  /** Cross-entropy, mean squared error, or a plain sum (autodiff's scalar seed then broadcasts). */
  readonly loss: 'ce' | 'mse' | 'sum';
}

const modelArb: fc.Arbitrary<ModelSpec> = fc.record({
  batch: fc.integer({ min: 1, max: 5 }),
  width: fc.integer({ min: 2, max: 12 }),
  blocks: fc.array(
    fc.record({
      kind: fc.constantFrom<Block>('plain', 'residual', 'shared', 'norm', 'view', 'scale'),
      width: fc.integer({ min: 2, max: 12 }),
      act: fc.constantFrom('relu' as const, 'tanh' as const, 'gelu' as const, 'silu' as const),
    }),
    { minLength: 1, maxLength: 3 },
  ),
  loss: fc.constantFrom('ce' as const, 'mse' as const, 'sum' as const),
});

function buildModel(spec: ModelSpec): Graph {
  const b = new Builder({ name: 'model' });
  let h = b.input('x', [spec.batch, spec.width]);
  let w = spec.width;
  spec.blocks.forEach((blk, i) =>
    b.scope(`b${i}`, () => {
      if (blk.kind === 'plain') [h, w] = [b[blk.act](b.linear(h, 'l', blk.width)), blk.width];
      else if (blk.kind === 'residual') h = b.add(i % 2 ? b.stopGradient(h) : h, b.linear(b[blk.act](b.linear(h, 'up', blk.width)), 'down', w, { bias: false }));
      else if (blk.kind === 'shared') [h, w] = [b.mul(b.linear(h, 'q', blk.width), b[blk.act](b.linear(h, 'g', blk.width, { bias: false }))), blk.width];
      else if (blk.kind === 'norm') h = i % 2 ? b.rmsNorm(h, 'norm') : b.layerNorm(h, 'norm');
      else if (blk.kind === 'view') h = b[blk.act](b.linear(b.reshape(b.reshape(h, [spec.batch * w]), [spec.batch, w]), 'l', w));
      else {
        // The gain is read through a view after its gradient is complete: the in-place update
        // must wait for that read (the write-after-read rule).
        const gain = b.param('gain', [w], { init: { kind: 'uniform', low: 0.5, high: 1.5 } });
        h = b[blk.act](b.mul(gain, b.mul(b.stopGradient(gain), h)));
      }
    }),
  );
  const classes = 2 + (spec.width % 3);
  h = b.linear(h, 'head', classes);
  if (spec.loss === 'ce') b.loss(b.crossEntropy(h, b.input('labels', [spec.batch], 'i32')));
  else if (spec.loss === 'mse') b.loss(b.mse(h, b.input('target', [spec.batch, classes])));
  else b.loss(b.sum(b.mul(h, b.input('target', [spec.batch, classes]))));
  return b.build();
}

const OPTIMIZERS: readonly OptimizerOptions[] = [{ kind: 'sgd' }, { kind: 'sgd', momentum: 0.9, weightDecay: 0.01 }, { kind: 'adamw' }];

describe('random Builder models: one training step under random limits', () => {
  it('loss and every parameter and optimizer state after the step match referenceStep', async () => {
    await propertyAsync(
      'gpu/graphs/models',
      fc.tuple(modelArb, fc.constantFrom(...MODES), fc.constantFrom(...OPTIMIZERS), fc.gen(), fc.integer({ min: 1, max: 1000 })).map(
        ([spec, mode, optimizer, gen, seed]) => ({ spec, mode, optimizer, gen, seed, toString: () => JSON.stringify({ spec, mode, optimizer, seed }) }),
      ),
      async ({ spec, mode, optimizer, gen, seed }) => {
        const model = buildModel(spec);
        const targets = model.linears.map((l) => l.name);
        const c = compileTraining(model, { mode, optimizer, lora: { rank: 1, alpha: 2, targets } });
        const step = c.step!;
        const limits = randomLimits(caseGen(gen, fc), step);
        const plan = planMemory(step, { limits, gradients: c.gradients });
        const { loss, ref, params, after, updated } = await stepBoth(step, plan, seed, () => 2 + (spec.width % 3), optimizer, 0.05);
        expectCloseAll('loss', [loss], ref.outputs.loss.data, GRAPH_TOL);
        for (const p of step.params) {
          const name = p.value.name;
          if (updated.has(name)) expectCloseAll(`${mode} ${optimizer.kind}: ${name}`, after.get(name)!, ref.params.get(name)!.data, GRAPH_TOL);
          else expectExact(`${mode}: frozen ${name}`, after.get(name)!, params.get(name)!.data);
        }
      },
      { numRuns: FEW },
    );
  }, TIMEOUT);
});

// ---------------------------------------------------------------------------------------------
// 3. The shipped models

describe.each(modelFiles())('model %s (toy size), one SGD step on the GPU', (name) => {
  let graph: Graph;
  let cfg: ModelConfig;
  let targets: readonly string[];
  let modulesToSave: readonly string[] | undefined;
  beforeAll(async () => {
    const loaded = await toyModel(name);
    const config = toyConfigName(loaded.model.def);
    graph = config === loaded.model.def.defaultConfig ? loaded.graph : (await toyModel(name, config)).graph;
    cfg = loaded.model.def.configs[config];
    targets = loaded.model.def.defaultTargets ?? [];
    modulesToSave = loaded.model.def.modulesToSave;
  });

  it.each(MODES)('%s: loss and every parameter after the step match referenceStep', async (mode: Mode) => {
    const optimizer: OptimizerOptions = { kind: 'sgd' };
    // A large rate, so a gradient error shows in the parameters (|Δp| = lr·|g|).
    const lr = 0.5;
    const c = compileTraining(graph, { mode, optimizer, lora: { rank: 2, alpha: 4, targets, modulesToSave } });
    const step = c.step!;
    const plan = planMemory(step, { limits: { ...LIMIT_PRESETS.webgpu, alignment: ALIGN }, gradients: c.gradients });
    const seed = 11 + MODES.indexOf(mode);
    const { loss, ref, params, after, updated } = await stepBoth(step, plan, seed, intBoundsFor(cfg), optimizer, lr);
    // The loss: a forward pass of a few hundred f32 ops. 1e-6·(1 + |loss|): measured ≤ 7.5e-8.
    expectCloseAll(`${name} ${mode}: loss`, [loss], ref.outputs.loss.data, 1e-6);
    expect(updated.size).toBeGreaterThan(0);
    // The model's largest reference step, for parameters whose gradient is zero analytically (a
    // key's bias: softmax ignores a constant added to a whole row of scores). Both sides are
    // rounding noise there, and the fused attention's backward leaves more of it than the
    // composition did (D = rowsum(dO∘O) from the forward's O while P is recomputed from L, as in
    // FlashAttention-2, so Σ_j dS_ij cancels only to f32 rounding): such a parameter's steps are
    // held to 1e-8 of the model's largest step instead of to a fraction of their own (measured:
    // BERT's key bias 3.5e-10 against a largest step of 1.08, a 30× margin).
    let globalStep = 0;
    for (const pname of updated) {
      const want = ref.params.get(pname)!.data;
      const before = params.get(pname)!.data;
      for (let i = 0; i < want.length; i++) globalStep = Math.max(globalStep, Math.abs(want[i] - before[i]));
    }
    for (const p of step.params) {
      const pname = p.value.name;
      const got = after.get(pname)!;
      const before = params.get(pname)!.data;
      if (!updated.has(pname)) {
        expectExact(`${name} ${mode}: frozen ${pname}`, got, before);
        continue;
      }
      // p' = p − lr·g: compare the steps taken, Δ = p' − p, against the reference's, scaled by
      // the parameter's largest step: |Δgpu − Δref| ≤ 1e-5·max|Δref| + 2^-23·|p'| (the
      // rounding of p' itself). Measured ≤ 8.5e-7·max|Δref|; a gradient off by 0.001% of its
      // largest entry fails.
      const want = ref.params.get(pname)!.data;
      // A parameter whose gradient is zero in exact arithmetic (a key bias: softmax is invariant
      // to the q·b_k it adds to every score of a row) takes a step of pure f32 rounding noise from
      // the attention and loss backward kernels: it is held to 1e-8 of the model's largest step.
      let maxStep = 0;
      for (let i = 0; i < want.length; i++) maxStep = Math.max(maxStep, Math.abs(want[i] - before[i]));
      const zero = maxStep <= 1e-6 * globalStep ? 1e-8 * globalStep : 0;
      for (let i = 0; i < want.length; i++) {
        const d = Math.abs(got[i] - before[i] - (want[i] - before[i]));
        const bound = 1e-5 * maxStep + zero + 2 ** -23 * Math.abs(want[i]);
        if (!(d <= bound)) {
          throw new Error(`${name} ${mode}: ${pname}[${i}] after the step: gpu ${got[i]}, ref ${want[i]} (before ${before[i]}), |Δ| ${d} > ${bound} (largest step of the model ${globalStep})`);
        }
      }
    }
  });
});
