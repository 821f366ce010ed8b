// Gradient accumulation (src/passes/grad-accum.ts): K micro-steps of batch b, updating only on the
// last, must be one optimizer step on batch K·b (the loss is a mean over the batch).
// - float64: the toy MLP (b = 8, K·b = 32) and the toy LLaMA (b = 2, K·b = 8, labels [batch·seq])
//   in full, LoRA and LoRA-FA, SGD (momentum, weight decay) and AdamW: 3 optimizer steps of K = 4
//   micro-steps through referenceStep equal 3 plain steps at K·b on the same rows, every parameter
//   and optimizer state within 1e-12 of its largest magnitude; fast-check varies K, b, seeds.
//   Teeth: a wrong grad_scale, summing without accum_first, and a NaN left in an accumulator.
// - The IR: accumulators, inputs, phases and write-backs; without gradAccum nothing changes.
// - The memory plan: the same as without accumulators at the peak (saved activations, workspace),
//   gradients grow by exactly the accumulators' aligned bytes, the inputs by the two scalars.
// - GPU (lavapipe): the MLP and the toy LLaMA, LoRA-FA + AdamW, through StepRunner against the
//   float64 big-batch steps; micro-steps without the update leave parameters and state bit for
//   bit; the allocated bytes are the plan's peak.
import fc from 'fast-check';
import { beforeAll, describe, expect, it, test } from 'vitest';
import { buildKernelPlan } from '../src/codegen/kernel-plan.ts';
import { planFusion } from '../src/codegen/fuse.ts';
import { Builder } from '../src/ir/builder.ts';
import { printGraph } from '../src/ir/print.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { numel, type Graph } from '../src/ir/types.ts';
import { trace, type LoadedModel } from '../src/model/load.ts';
import { compileTraining, MODES, type Compiled, type Mode } from '../src/passes/compile.ts';
import { alignUp, LIMIT_PRESETS, planMemory, type MemoryPlan } from '../src/passes/memory-plan.ts';
import {
  ACCUM_FIRST_INPUT,
  accumFeeds,
  accumulatorName,
  GRAD_SCALE_INPUT,
  optimizerFeeds,
  type OptimizerOptions,
} from '../src/passes/optimizer.ts';
import { isInlineConstant, isView } from '../src/passes/schedule.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { acquireGpu, type Gpu } from '../src/runtime/gpu.ts';
import { referenceStep, runReference } from '../src/runtime/reference.ts';
import { deviceValues, feedsFor, intBoundsFor, OPT_CASES, paramsWithRandomB, property, relErr, toyModel, type OptCase } from './helpers.ts';
import { FC_RUNS } from './setup.ts';

const K = 4;
const STEPS = 3;
/** Micro-batch size b of each toy model (the big batch is K·b). */
const MICRO = { mlp: 8, llama: 2 } as const;
type Toy = keyof typeof MICRO;

/** A learning-rate schedule, so the fed lr matters. */
const lrAt = (base: number, t: number) => base * (1 - 0.2 * (t - 1));

const models = new Map<Toy, LoadedModel>();
beforeAll(async () => {
  for (const name of Object.keys(MICRO) as Toy[]) models.set(name, (await toyModel(name, 'toy')).model);
});

function compileAt(name: Toy, batch: number, mode: Mode, optimizer: OptimizerOptions, gradAccum: boolean): Compiled {
  const m = models.get(name)!;
  return compileTraining(trace(m, 'toy', { batch }), {
    mode,
    optimizer,
    gradAccum,
    verify: true,
    lora: { rank: 2, alpha: 4, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave },
  });
}

/** The data inputs (not optim.*) of a step graph: seeded rows of the big batch. */
function bigData(step: Graph, name: Toy, seed: number): Record<string, Float64Array> {
  const all = feedsFor(step, seed, intBoundsFor(models.get(name)!.def.configs.toy));
  return Object.fromEntries(Object.entries(all).filter(([k]) => !k.startsWith('optim.')));
}

/**
 * Rows [j·n/K, (j+1)·n/K) of every input: every input's leading dimension is the batch (x [B, d],
 * labels [B], input_ids [B, s]) or batch·seq (labels [B·s], sequence-major), so a contiguous slice
 * is micro-batch j.
 */
function microSlice(data: Record<string, Float64Array>, j: number, k: number): Record<string, Float64Array> {
  return Object.fromEntries(
    Object.entries(data).map(([name, d]) => {
      const n = d.length / k;
      return [name, d.slice(j * n, (j + 1) * n)];
    }),
  );
}

const copyParams = (m: ReadonlyMap<string, Tensor>): Map<string, Tensor> => new Map([...m].map(([k, t]) => [k, { shape: t.shape, data: Float64Array.from(t.data) }]));

interface RunOptions {
  /** Overrides of the accumulation feeds (a wrong scale, no accum_first…), for the teeth. */
  readonly feeds?: (j: number, k: number) => Record<string, number[]>;
}

/** `steps` optimizer steps of k micro-steps each, in float64; the data of step t is data[t − 1]. */
function accumulated(c: Compiled, data: readonly Record<string, Float64Array>[], init: ReadonlyMap<string, Tensor>, oc: OptCase, k: number, run: RunOptions = {}) {
  let params = copyParams(init);
  for (let t = 1; t <= data.length; t++) {
    for (let j = 0; j < k; j++) {
      const feeds = { ...microSlice(data[t - 1], j, k), ...optimizerFeeds(oc.opts, lrAt(oc.lr, t), t), ...(run.feeds ?? accumFeeds)(j, k) };
      params = referenceStep(c.step!, { feeds, params }, { update: j === k - 1 }).params;
    }
  }
  return params;
}

/** The same optimizer steps on the whole batch at once, without accumulation. */
function bigSteps(c: Compiled, data: readonly Record<string, Float64Array>[], init: ReadonlyMap<string, Tensor>, oc: OptCase) {
  let params = copyParams(init);
  for (let t = 1; t <= data.length; t++) {
    params = referenceStep(c.step!, { feeds: { ...data[t - 1], ...optimizerFeeds(oc.opts, lrAt(oc.lr, t), t) }, params }).params;
  }
  return params;
}

/** The worst relErr over every tensor of `want` (parameters and optimizer state), and where. */
function worstOver(got: ReadonlyMap<string, Tensor>, want: ReadonlyMap<string, Tensor>): { err: number; at: string } {
  let err = 0;
  let at = '';
  for (const [k, t] of want) {
    const g = got.get(k);
    const e = g ? relErr(g.data, t.data) : Infinity;
    if (!(e <= err)) [err, at] = [e, k];
  }
  return { err, at };
}

// ---------------------------------------------------------------------------------------------
// float64: exact to rounding

const F64_TOL = 1e-12;

describe.each(Object.keys(MICRO) as Toy[])('toy %s, float64: K = 4 micro-steps of b = one step of K·b', (name) => {
  describe.each(MODES)('mode %s', (mode) => {
    test.each(OPT_CASES)('$label: 3 optimizer steps, every parameter and optimizer state within 1e-12', (oc) => {
      const b = MICRO[name];
      const small = compileAt(name, b, mode, oc.opts, true);
      const big = compileAt(name, K * b, mode, oc.opts, false);
      const data = [1, 2, 3].map((t) => bigData(big.step!, name, 100 * t + MODES.indexOf(mode)));
      const init = paramsWithRandomB(small.forward, 7);
      const got = accumulated(small, data, init, oc, K);
      const want = bigSteps(big, data, init, oc);
      // The same persistent tensors, plus exactly one accumulator per trainable parameter.
      const trainable = small.forward.params.filter((p) => p.trainable).map((p) => p.value.name);
      expect([...got.keys()].sort()).toEqual([...want.keys(), ...trainable.map(accumulatorName)].sort());
      const { err, at } = worstOver(got, want);
      expect(err, `worst: ${at}`).toBeLessThanOrEqual(F64_TOL);
      if (process.env.LORAFA_REPORT) console.log(`float64 ${name} ${mode} ${oc.opts.kind}: ${err.toExponential(2)} (${at})`);
      // Teeth: every trainable parameter moved by far more than the tolerance.
      for (const p of trainable) expect(relErr(want.get(p)!.data, init.get(p)!.data), `${p} moved`).toBeGreaterThan(1e-4);
    });
  });

  test('teeth: a wrong grad_scale (the sum, not the mean), summing without accum_first, or a NaN left in an accumulator would be caught', () => {
    const oc = OPT_CASES[0];
    const b = MICRO[name];
    const small = compileAt(name, b, 'lora-fa', oc.opts, true);
    const big = compileAt(name, K * b, 'lora-fa', oc.opts, false);
    const data = [bigData(big.step!, name, 5), bigData(big.step!, name, 6)];
    const init = paramsWithRandomB(small.forward, 3);
    const want = bigSteps(big, data, init, oc);
    const errWith = (feeds: RunOptions['feeds'], start = init) => worstOver(accumulated(small, data, start, oc, K, { feeds }), want).err;
    expect(errWith(undefined)).toBeLessThanOrEqual(F64_TOL);
    // Dropping grad_scale: the optimizer would see K times the gradient.
    expect(errWith((j, k) => ({ ...accumFeeds(j, k), [GRAD_SCALE_INPUT]: [1] }))).toBeGreaterThan(1e-3);
    // Never starting over: step 2 would add step 1's gradients in.
    expect(errWith((j, k) => ({ ...accumFeeds(j, k), [ACCUM_FIRST_INPUT]: [0] }))).toBeGreaterThan(1e-3);
    // Starting over on every micro-step (what acc·0 + g computes): only the last micro-batch counts.
    expect(errWith((j, k) => ({ ...accumFeeds(j, k), [ACCUM_FIRST_INPUT]: [1] }))).toBeGreaterThan(1e-3);
    // Whatever the accumulators held before the first micro-step, NaN included, never reaches the
    // update: `where` selects (an arithmetic reset such as acc·(1 − first) + g would keep the NaN).
    const poisoned = copyParams(init);
    for (const p of small.step!.params.filter((q) => q.role === 'grad_accumulator')) {
      poisoned.set(p.value.name, { shape: p.value.type.shape, data: new Float64Array(numel(p.value.type.shape)).fill(Number.NaN) });
    }
    const fromPoison = accumulated(small, data, poisoned, oc, K);
    for (const [k] of want) expect(fromPoison.get(k)!.data.every(Number.isFinite), k).toBe(true);
    expect(worstOver(fromPoison, want).err).toBeLessThanOrEqual(F64_TOL);
  });

  test('a micro-step without the update: parameters and optimizer state bit for bit unchanged; the accumulator holds the gradient, then the sum', () => {
    const oc = OPT_CASES[1];
    const b = MICRO[name];
    const small = compileAt(name, b, 'full', oc.opts, true);
    const data = bigData(compileAt(name, K * b, 'full', oc.opts, false).step!, name, 9);
    const init = paramsWithRandomB(small.forward, 4);
    const trainable = small.forward.params.filter((p) => p.trainable).map((p) => p.value.name);
    // Some optimizer state that is not zeros, so "unchanged" is not "still zeros".
    const before = referenceStep(small.step!, { feeds: { ...microSlice(data, 0, K), ...optimizerFeeds(oc.opts, 0.01, 1), ...accumFeeds(0, 1) }, params: init }).params;
    let params = copyParams(before);
    const sum = new Map(trainable.map((p) => [p, new Float64Array(before.get(p)!.data.length)]));
    for (let j = 0; j < K - 1; j++) {
      const feeds = microSlice(data, j, K);
      const r = referenceStep(small.step!, { feeds: { ...feeds, ...optimizerFeeds(oc.opts, 0.01, 2), ...accumFeeds(j, K) }, params }, { update: false });
      for (const [k, t] of before) {
        if (k.startsWith('optim.grad_acc.')) continue;
        expect(r.params.get(k)!.data.every((x, i) => Object.is(x, t.data[i])), `${k} changed`).toBe(true);
      }
      // The micro-batch gradient at these parameters, from the joint graph (no optimizer).
      const grads = runReference(small.joint, { feeds, params }).outputs;
      for (const p of trainable) {
        const s = sum.get(p)!;
        grads[`grad.${p}`].data.forEach((g, i) => (s[i] = j === 0 ? g : s[i] + g));
        const acc = r.params.get(accumulatorName(p))!.data;
        expect(acc.every((x, i) => Object.is(x, s[i])), `${accumulatorName(p)} after micro-step ${j}`).toBe(true);
      }
      params = r.params;
    }
    // referenceStep's old signature still runs every write-back.
    const all = referenceStep(small.step!, { feeds: { ...microSlice(data, 0, K), ...optimizerFeeds(oc.opts, 0.01, 2), ...accumFeeds(0, K) }, params });
    for (const p of trainable) expect(all.params.get(p)!.data.some((x, i) => x !== params.get(p)!.data[i]), `${p} updated`).toBe(true);
  });
});

describe('float64, fast-check: any K and micro-batch size (toy MLP)', () => {
  test('K micro-steps of b rows equal one step of K·b rows, two optimizer steps', () => {
    property(
      'grad-accum/mlp',
      fc.record({
        k: fc.integer({ min: 1, max: 4 }),
        b: fc.integer({ min: 1, max: 4 }),
        mode: fc.constantFrom(...MODES),
        oc: fc.constantFrom(...OPT_CASES),
        dataSeed: fc.integer({ min: 0, max: 1e6 }),
        paramSeed: fc.integer({ min: 0, max: 1e6 }),
      }),
      ({ k, b, mode, oc, dataSeed, paramSeed }) => {
        const small = compileAt('mlp', b, mode, oc.opts, true);
        const big = compileAt('mlp', k * b, mode, oc.opts, false);
        const data = [bigData(big.step!, 'mlp', dataSeed), bigData(big.step!, 'mlp', dataSeed + 1)];
        const init = paramsWithRandomB(small.forward, paramSeed);
        const { err, at } = worstOver(accumulated(small, data, init, oc, k), bigSteps(big, data, init, oc));
        if (!(err <= F64_TOL)) throw new Error(`${at}: relative error ${err}`);
      },
      { numRuns: Math.max(8, Math.round(FC_RUNS / 6)) },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// the IR

describe('the grad-accum pass', () => {
  test.each(MODES)('%s: one accumulator per trainable parameter, two scalar inputs, acc′ = where(first, g, acc + g) written back, the optimizer reads acc′·scale', (mode) => {
    for (const oc of OPT_CASES) {
      const c = compileAt('mlp', 8, mode, oc.opts, true);
      const step = c.step!;
      const trainable = c.forward.params.filter((p) => p.trainable);
      const accs = step.params.filter((p) => p.role === 'grad_accumulator');
      expect(accs.map((p) => p.value.name).sort()).toEqual(trainable.map((p) => accumulatorName(p.value.name)).sort());
      for (const a of accs) {
        const owner = trainable.find((p) => accumulatorName(p.value.name) === a.value.name)!;
        expect(a.value.type).toEqual(owner.value.type);
        expect(a.trainable).toBe(false);
        expect(a.init).toEqual({ kind: 'zeros' });
      }
      expect(c.reports.gradAccum?.accumulators.slice().sort()).toEqual(accs.map((p) => p.value.name).sort());
      for (const name of [ACCUM_FIRST_INPUT, GRAD_SCALE_INPUT]) {
        expect(step.inputs.filter((i) => i.value.name === name).map((i) => i.value.type)).toEqual([{ dtype: 'f32', shape: [] }]);
      }
      const producer = new Map(step.nodes.map((n) => [n.out.id, n]));
      const first = step.inputs.find((i) => i.value.name === ACCUM_FIRST_INPUT)!.value;
      const scale = step.inputs.find((i) => i.value.name === GRAD_SCALE_INPUT)!.value;
      for (const a of accs) {
        const writes = step.updates.filter((u) => u.target === a.value.name);
        expect(writes).toHaveLength(1);
        const where = producer.get(writes[0].value.id)!;
        expect(where.op).toBe('where');
        expect(where.phase).toBe('accumulate');
        const [cond, g, sum] = where.inputs;
        expect(cond).toBe(first);
        const add = producer.get(sum.id)!;
        expect([add.op, add.phase]).toEqual(['add', 'accumulate']);
        expect(new Set(add.inputs)).toEqual(new Set([a.value, g]));
        // g is the joint graph's gradient: the backward computes it as without accumulation.
        expect(producer.get(g.id)!.phase).toBe('backward');
        expect(c.gradients.has(g.id)).toBe(true);
        // The only reader of acc′ other than the write-back: ĝ = acc′·scale, in the update.
        const readers = step.nodes.filter((n) => n.inputs.includes(where.out));
        expect(readers.map((n) => [n.op, n.phase, n.inputs.includes(scale)])).toEqual([['mul', 'update', true]]);
        expect(c.gradients.has(readers[0].out.id)).toBe(true);
        // Nothing in the update reads g itself.
        expect(step.nodes.filter((n) => n.phase === 'update' && n.inputs.includes(g))).toEqual([]);
      }
      // Every other write-back (parameters, optimizer state) is computed in the update phase.
      for (const u of step.updates) if (!u.target.startsWith('optim.grad_acc.')) expect(producer.get(u.value.id)?.phase, u.target).toBe('update');
      expect(c.stages.map((s) => s.pass).slice(-2)).toEqual(['grad-accum', 'optimizer']);
      // Printed: one accumulate section between the backward and the update.
      expect(printGraph(step).match(/^ {2}-- \w+$/gm)).toEqual(['  -- forward', '  -- backward', '  -- accumulate', '  -- update']);
    }
  });

  test.each(MODES)('%s: without gradAccum (absent or false) the step graph is today\'s, node for node', (mode) => {
    const m = models.get('llama')!;
    const g = trace(m, 'toy');
    const lora = { rank: 2, alpha: 4, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave };
    const plain = compileTraining(g, { mode, lora, optimizer: { kind: 'adamw' } });
    const off = compileTraining(g, { mode, lora, optimizer: { kind: 'adamw' }, gradAccum: false });
    expect(printGraph(off.step!)).toBe(printGraph(plain.step!));
    expect(off.stages.map((s) => s.pass)).toEqual(plain.stages.map((s) => s.pass));
    expect(plain.stages.map((s) => s.pass)).not.toContain('grad-accum');
    expect(plain.step!.nodes.some((n) => n.phase === 'accumulate')).toBe(false);
    // The kernel plan records no phases: plans (and their hashes) are as they were.
    const plan = planMemory(plain.step!, { gradients: plain.gradients });
    expect(buildKernelPlan(plain.step!, plan).dispatches.every((d) => !('update' in d))).toBe(true);
  });

  test('errors: gradient accumulation needs an optimizer; accumFeeds checks j and K', () => {
    const m = models.get('mlp')!;
    expect(() => compileTraining(trace(m, 'toy'), { mode: 'full', gradAccum: true })).toThrow(/gradient accumulation needs an optimizer/);
    expect(accumFeeds(0, 4)).toEqual({ [ACCUM_FIRST_INPUT]: [1], [GRAD_SCALE_INPUT]: [0.25] });
    expect(accumFeeds(3, 4)).toEqual({ [ACCUM_FIRST_INPUT]: [0], [GRAD_SCALE_INPUT]: [0.25] });
    expect(accumFeeds(0, 1)).toEqual({ [ACCUM_FIRST_INPUT]: [1], [GRAD_SCALE_INPUT]: [1] });
    expect(() => accumFeeds(4, 4)).toThrow(/micro-step 4 is not one of 0 … 3/);
    expect(() => accumFeeds(0, 0)).toThrow(/whole number ≥ 1, got 0/);
    expect(() => accumFeeds(0, 2.5)).toThrow(/whole number ≥ 1, got 2\.5/);
  });
});

// ---------------------------------------------------------------------------------------------
// the memory plan

/** Aligned bytes of the planned tensors named by `pick`. */
const alignedBytes = (plan: MemoryPlan, pick: (name: string) => boolean) =>
  plan.tensors.filter((t) => pick(t.name)).reduce((s, t) => s + alignUp(t.bytes, plan.limits.alignment), 0);

describe.each(Object.keys(MICRO) as Toy[])('toy %s: the plan with accumulators is the plan without, plus the accumulators', (name) => {
  test.each(MODES.flatMap((mode) => OPT_CASES.map((oc) => [mode, oc.label, oc] as const)))('%s, %s', (mode, _, oc) => {
    const batch = models.get(name)!.def.configs.toy.batch;
    const without = compileAt(name, batch, mode, oc.opts, false);
    const withAcc = compileAt(name, batch, mode, oc.opts, true);
    const p0 = planMemory(without.step!, { gradients: without.gradients });
    const p1 = planMemory(withAcc.step!, { gradients: withAcc.gradients });
    const step = withAcc.step!;
    const accNames = new Set(step.params.filter((p) => p.role === 'grad_accumulator').map((p) => p.value.name));
    const accBytes = alignedBytes(p1, (n) => accNames.has(n));
    const scalars = alignedBytes(p1, (n) => n === ACCUM_FIRST_INPUT || n === GRAD_SCALE_INPUT);
    expect(accNames.size).toBe(without.forward.params.filter((p) => p.trainable).length);
    expect(accBytes).toBe([...accNames].reduce((s, n) => s + alignUp(4 * numel(step.params.find((p) => p.value.name === n)!.value.type.shape), 256), 0));
    expect(scalars).toBe(2 * 256);
    // At the peak: the same activations and workspace; gradients grow by the accumulators.
    expect(p1.atPeak.saved).toBe(p0.atPeak.saved);
    expect(p1.atPeak.workspace).toBe(p0.atPeak.workspace);
    expect(p1.atPeak.gradients).toBe(p0.atPeak.gradients + accBytes);
    expect(p1.atPeak.inputs).toBe(p0.atPeak.inputs + scalars);
    for (const c of ['frozen', 'trainable', 'optimizer'] as const) expect(p1.atPeak[c], c).toBe(p0.atPeak[c]);
    expect(p1.lowerBound).toBe(p0.lowerBound + accBytes + scalars);
    // The arena packs the same transients (its heuristics may do better, never worse).
    const arena = (p: MemoryPlan) => p.buffers.filter((b) => b.region === 'arena').reduce((s, b) => s + b.bytes, 0);
    expect(arena(p1)).toBeLessThanOrEqual(arena(p0));
    expect(p1.peak).toBeLessThanOrEqual(p0.peak + accBytes + scalars);
    // The accumulators: persistent, in their own region of category gradients, live all step.
    const accTensors = p1.tensors.filter((t) => accNames.has(t.name));
    const region = new Set(accTensors.map((t) => t.buffer));
    for (const t of accTensors) expect([t.category, t.start, t.end], t.name).toEqual(['gradients', 0, p1.schedule.length]);
    for (const i of region) expect([p1.buffers[i].region, p1.buffers[i].category]).toEqual(['persistent', 'gradients']);
    expect(p1.tensors.filter((t) => region.has(t.buffer)).length).toBe(accNames.size);
    // acc + g and acc′ own no bytes: both are computed in place in the accumulator.
    const accIds = new Map(step.params.filter((p) => accNames.has(p.value.name)).map((p) => [p.value.id, p.value.name]));
    const sums = step.nodes.filter((n) => n.phase === 'accumulate');
    expect(sums.length).toBe(2 * accNames.size);
    for (const n of sums) expect(accIds.has(p1.aliases.get(n.out.id)!), n.out.name).toBe(true);
    // No two tensors live at one step share a byte.
    for (const a of p1.tensors) {
      for (const b of p1.tensors) {
        if (a === b || a.buffer !== b.buffer || a.start > b.end || b.start > a.end) continue;
        expect(a.offset + a.bytes <= b.offset || b.offset + b.bytes <= a.offset, `${a.name} and ${b.name}`).toBe(true);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------
// GPU (lavapipe)

/**
 * |gpu − ref| ≤ GPU_TOL·max|ref| per tensor, after 3 AdamW steps of 4 micro-steps. The f32
 * errors: each gradient is rounded at every op (about 2^-24 relative) and summed over 4
 * micro-batches; AdamW's m/√v turns a gradient error into a parameter error of at most lr times
 * its relative size. Measured: 3.1e-7 (MLP) and 6.0e-7 (toy LLaMA), a 16× margin; the pass
 * without grad_scale, or keeping only the last micro-batch (acc·0 + g), fails it.
 */
const GPU_TOL = 1e-5;

describe('GPU: K = 4 micro-steps through StepRunner equal the float64 big-batch steps', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await acquireGpu();
  });

  it.each(Object.keys(MICRO) as Toy[])('%s lora-fa AdamW: parameters and state within 1e-5 of their largest magnitude; no-update micro-steps change nothing but the accumulators', async (name) => {
    const oc = OPT_CASES[1];
    const b = MICRO[name];
    const small = compileAt(name, b, 'lora-fa', oc.opts, true);
    const big = compileAt(name, K * b, 'lora-fa', oc.opts, false);
    const step = small.step!;
    const plan = planMemory(step, { limits: { ...LIMIT_PRESETS.webgpu, alignment: gpu.limits.minStorageBufferOffsetAlignment }, gradients: small.gradients });
    const kp = buildKernelPlan(step, plan, { maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, subgroupSize: gpu.subgroupSize });
    // Every dispatch knows whether it is the update's; each kernel is one or the other.
    expect(kp.dispatches.every((d) => typeof d.update === 'boolean')).toBe(true);
    const nUpdate = kp.dispatches.filter((d) => d.update).length;
    expect(nUpdate).toBeGreaterThan(0);
    expect(nUpdate).toBeLessThan(kp.dispatches.length);

    const data = [1, 2, 3].map((t) => {
      const d = bigData(big.step!, name, 40 + t);
      return Object.fromEntries(Object.entries(d).map(([k, v]) => [k, deviceValues(v, 'f32')]));
    });
    const init = new Map([...paramsWithRandomB(small.forward, 21)].map(([k, v]) => [k, { shape: v.shape, data: deviceValues(v.data, 'f32') }]));
    const want = bigSteps(big, data, init, oc);

    const runner = await StepRunner.create(kp, gpu);
    try {
      // The plan's bytes, exactly (the runner's 4-byte loss readback buffer is not counted).
      expect(kp.bytes).toBe(plan.peak);
      expect(runner.allocatedBytes).toBe(plan.peak);
      runner.writeParams(init);
      // Whatever the accumulators hold at the start never reaches the update.
      const accs = step.params.filter((p) => p.role === 'grad_accumulator');
      runner.writeParams(new Map(accs.map((p) => [p.value.name, { data: new Float64Array(numel(p.value.type.shape)).fill(Number.NaN) }])));
      let gradErr = 0;
      for (let t = 1; t <= STEPS; t++) {
        for (let j = 0; j < K; j++) {
          const update = j === K - 1;
          const before = update ? undefined : await runner.readParams();
          const micro = microSlice(data[t - 1], j, K);
          const loss = await runner.step({ ...micro, ...optimizerFeeds(oc.opts, lrAt(oc.lr, t), t), ...accumFeeds(j, K) }, { update });
          expect(Number.isFinite(loss)).toBe(true);
          if (!before) continue;
          const after = await runner.readParams();
          for (const [k, v] of before) {
            if (k.startsWith('optim.grad_acc.')) continue;
            const a = after.get(k)!;
            if (!v.every((x, i) => Object.is(x, a[i]))) throw new Error(`micro-step ${j} of step ${t} (no update) changed ${k}`);
          }
          if (t === 1 && j === 0) {
            // The accumulator holds this micro-batch's gradient (the NaN is gone).
            const grads = runReference(small.joint, { feeds: micro, params: new Map([...before].map(([k, v]) => [k, { shape: [v.length], data: Float64Array.from(v) }])) }).outputs;
            for (const p of small.forward.params.filter((q) => q.trainable)) {
              gradErr = Math.max(gradErr, relErr(after.get(accumulatorName(p.value.name))!, grads[`grad.${p.value.name}`].data));
            }
            expect(gradErr).toBeLessThanOrEqual(GPU_TOL);
          }
        }
      }
      const got = new Map([...(await runner.readParams())].map(([k, v]) => [k, { shape: [v.length], data: Float64Array.from(v) }]));
      const { err, at } = worstOver(got, want);
      expect(err, `worst: ${at}`).toBeLessThanOrEqual(GPU_TOL);
      // Teeth: the trainable parameters moved by far more than the tolerance.
      for (const p of small.forward.params.filter((q) => q.trainable)) expect(relErr(want.get(p.value.name)!.data, init.get(p.value.name)!.data)).toBeGreaterThan(100 * GPU_TOL);
      if (process.env.LORAFA_REPORT) console.log(`${name}: gpu vs float64 ${err.toExponential(2)} (${at}); accumulator vs gradient ${gradErr.toExponential(2)}`);
    } finally {
      runner.destroy();
    }
  });

  it('fusion keeps the update apart with accumulators (and only then); a step without its update needs them', async () => {
    // A weight used twice: its gradient is an elementwise add of two matmuls, which fuses with the
    // SGD update that reads it (d = g + wd·p …) unless the update is kept apart.
    const tied = new Builder({ name: 'tied' });
    const x = tied.input('x', [4, 6]);
    const w = tied.param('w', [6, 6], { init: { kind: 'uniform', low: -0.5, high: 0.5 } });
    const h = tied.matmul(tied.matmul(x, w), w);
    tied.loss(tied.mean(tied.mul(h, h)));
    const oc = OPT_CASES[0];
    for (const gradAccum of [false, true]) {
      const c = compileTraining(tied.build(), { mode: 'full', optimizer: oc.opts, gradAccum });
      const plan = planMemory(c.step!, { gradients: c.gradients });
      const root = (id: number): number => {
        const a = plan.aliases.get(id);
        return a === undefined || a < 0 ? id : root(a);
      };
      const constants = new Map(plan.schedule.filter(isInlineConstant).map((n) => [n.out.id, 0]));
      const byId = new Map(plan.tensors.map((t) => [t.id, t]));
      const groups = (separateUpdate: boolean) =>
        [
          ...new Set(
            planFusion(plan.schedule, {
              storage: (v) => root(v.id),
              constants,
              dispatched: (n) => !isView(n) && !constants.has(n.out.id),
              bytes: (id) => {
                const t = byId.get(id);
                return t && { buffer: t.buffer, offset: t.offset, size: t.bytes };
              },
              outputs: new Set([root(c.step!.outputs.loss.id)]),
              separateUpdate,
            }).values(),
          ),
        ];
      const mixed = (gs: readonly { nodes: readonly { phase: string }[] }[]) => gs.filter((g) => new Set(g.nodes.map((n) => n.phase === 'update')).size > 1).length;
      expect(mixed(groups(true))).toBe(0);
      expect(groups(true).length).toBeGreaterThan(0);
      const kp = buildKernelPlan(c.step!, plan);
      const runner = await StepRunner.create(kp, gpu);
      try {
        if (gradAccum) {
          // What buildKernelPlan fuses: every dispatch is the update's or not, and with
          // update: false the step changes w by not one bit.
          expect(kp.dispatches.some((d) => d.update) && kp.dispatches.some((d) => !d.update)).toBe(true);
          const w0 = Float32Array.from({ length: 36 }, (_, i) => Math.sin(i) / 2);
          runner.writeParams(new Map([['w', { data: w0 }]]));
          const feeds = { x: Float32Array.from({ length: 24 }, (_, i) => Math.cos(i)), ...optimizerFeeds(oc.opts, 0.1, 1), ...accumFeeds(0, 2) };
          await runner.step(feeds, { update: false });
          const after = await runner.readParams();
          expect(Array.from(after.get('w')!)).toEqual(Array.from(w0));
          expect(after.get(accumulatorName('w'))!.some((v) => v !== 0)).toBe(true);
          await runner.step({ ...feeds, ...accumFeeds(1, 2) });
          expect(Array.from((await runner.readParams()).get('w')!)).not.toEqual(Array.from(w0));
        } else {
          // Today's fusion does put the gradient's add and the update in one kernel.
          expect(mixed(groups(false))).toBeGreaterThan(0);
          expect(kp.dispatches.every((d) => !('update' in d))).toBe(true);
          await expect(runner.step(undefined, { update: false })).rejects.toThrow(/no gradient accumulators/);
        }
      } finally {
        runner.destroy();
      }
    }
  });
});
