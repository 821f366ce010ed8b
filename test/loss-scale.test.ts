// Loss scaling (src/passes/loss-scale.ts, src/train/loss-scale.ts).
// - float64: with the seed S = 2¹⁰ and the unscale, 4 steps of the toy MLP (full, LoRA-FA; SGD
//   with momentum and weight decay, AdamW; with and without gradient accumulation) give the
//   unscaled run's losses and parameters within 1e-12. Teeth: no unscale, or accumFeeds without S.
// - Overflow: a non-finite seed (Inf, NaN) gives overflow > 0 and leaves every parameter and
//   optimizer state bit for bit; a LossScaler starting far too high skips steps, halving S each
//   time with everything unchanged, then trains exactly as a run that started at the scale it
//   reached (AdamW's step count t − skipped included).
// - The IR: the seed is the input, gradients unscaled and counted in the update phase, every
//   parameter / state write-back gated, accumulators not; the scale scalars stay f32 in an f16 plan.
// - GPU (lavapipe): count_nonfinite on Inf/NaN/subnormal bits; through StepRunner, skipped steps
//   leave the parameters read back unchanged, and clean steps grow the scale and match float64.
// - LossScaler: growth, backoff, static, the state round trip through a checkpoint.
// - The loop (finetune, a compiled trainer): skipped steps and growth in the result, the report
//   and the progress lines; a run resumed from a checkpoint ends bit for bit as the straight one
//   (the scaler's state is in the checkpoint); --loss-scale against what the program compiled.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, test, vi } from 'vitest';
import { buildKernelPlan } from '../src/codegen/kernel-plan.ts';
import { Builder } from '../src/ir/builder.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { trace, type LoadedModel } from '../src/model/load.ts';
import { compileTraining, type Compiled, type Mode } from '../src/passes/compile.ts';
import { INV_LOSS_SCALE_INPUT, LOSS_SCALE_INPUT, lossScaleFeeds, OVERFLOW_OUTPUT } from '../src/passes/loss-scale.ts';
import { LIMIT_PRESETS, planMemory } from '../src/passes/memory-plan.ts';
import { accumFeeds, optimizerFeeds, type OptimizerOptions } from '../src/passes/optimizer.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { acquireGpu, type Gpu } from '../src/runtime/gpu.ts';
import { referenceStep } from '../src/runtime/reference.ts';
import { runNodeOnGpu } from '../src/runtime/single.ts';
import { readCheckpoint, writeCheckpoint } from '../src/train/checkpoint.ts';
import { defaultLossScale, LossScaler, parseLossScale, type LossScalerState } from '../src/train/loss-scale.ts';
import { main } from '../src/cli/main.ts';
import { listCheckpoints } from '../src/train/checkpoint.ts';
import { finetune, type FinetuneOptions } from '../src/train/finetune.ts';
import { runTrainer } from '../src/train/trainer.ts';
import type { PlanFile } from '../src/train/trainer-files.ts';
import { feedsFor, intBoundsFor, OPT_CASES, paramsWithRandomB, relErr, ROOT, toyModel, type OptCase } from './helpers.ts';

const K = 4;
const STEPS = 4;
const S = 2 ** 10;
const F64_TOL = 1e-12;


let mlp: LoadedModel;
beforeAll(async () => {
  mlp = (await toyModel('mlp', 'toy')).model;
});

function compileMlp(mode: Mode, optimizer: OptimizerOptions, o: { accumulate?: boolean; lossScaling?: boolean; batch?: number } = {}): Compiled {
  return compileTraining(trace(mlp, 'toy', o.batch ? { batch: o.batch } : {}), {
    mode,
    optimizer,
    gradAccum: o.accumulate,
    lossScaling: o.lossScaling,
    verify: true,
    lora: { rank: 2, alpha: 4, targets: mlp.def.defaultTargets ?? [], modulesToSave: mlp.def.modulesToSave },
  });
}

/** A seeded batch of `rows` rows (x and labels); x times `xScale`. */
function dataFor(rows: number, seed: number, xScale = 1): Record<string, Float64Array> {
  const data = feedsFor(trace(mlp, 'toy', { batch: rows }), seed, intBoundsFor(mlp.def.configs.toy));
  data.x = data.x.map((v) => v * xScale);
  return data;
}

/** Rows of an optimizer step's batch; with accumulation each micro-batch is a K-th of it. */
const ROWS = 8;
const microBatch = (acc: boolean) => (acc ? ROWS / K : ROWS);

const microSlice = (data: Record<string, Float64Array>, j: number, k: number) =>
  Object.fromEntries(Object.entries(data).map(([name, d]) => [name, d.slice((j * d.length) / k, ((j + 1) * d.length) / k)]));

const copyParams = (m: ReadonlyMap<string, Tensor>) => new Map([...m].map(([k, t]) => [k, { shape: t.shape, data: Float64Array.from(t.data) }]));

/**
 * The worst relErr over the tensors of `want`: parameters and optimizer state. Accumulators are
 * left out: under loss scaling they hold S times the sum, by design.
 */
function worst(got: ReadonlyMap<string, Tensor>, want: ReadonlyMap<string, Tensor>): { err: number; at: string } {
  let err = 0;
  let at = '';
  for (const [k, t] of want) {
    if (k.startsWith('optim.grad_acc.')) continue;
    const e = relErr(got.get(k)!.data, t.data);
    if (!(e <= err)) [err, at] = [e, k];
  }
  return { err, at };
}

const sameBits = (a: ReadonlyMap<string, Tensor>, b: ReadonlyMap<string, Tensor>, names: Iterable<string>) =>
  [...names].filter((k) => !a.get(k)!.data.every((x, i) => Object.is(x, b.get(k)!.data[i])));

interface Run {
  readonly params: Map<string, Tensor>;
  readonly losses: number[];
  readonly overflows: number[];
  /** The parameters after each step. */
  readonly history: Map<string, Tensor>[];
}

/**
 * The training loop's use of a step, in float64: step t reads data[t − 1], the optimizer's own
 * count is LossScaler.optimizerStep(t) = t − skipped (as loop.ts feeds it), K micro-steps when k > 1. `scale`: the scaler, or
 * a fixed S fed as is (or undefined: a plain step). `feeds` overrides feeds (teeth).
 */
function train(c: Compiled, data: readonly Record<string, Float64Array>[], init: ReadonlyMap<string, Tensor>, oc: OptCase, k: number, scale?: LossScaler | number, feeds: (j: number) => Record<string, number[]> = () => ({})): Run {
  let params: Map<string, Tensor> = copyParams(init);
  const run: Run = { params, losses: [], overflows: [], history: [] };
  for (let t = 1; t <= data.length; t++) {
    const s = typeof scale === 'number' ? scale : scale?.scale;

    let loss = 0;
    let overflow = 0;
    for (let j = 0; j < k; j++) {
      const f = {
        ...(k > 1 ? microSlice(data[t - 1], j, k) : data[t - 1]),
        ...optimizerFeeds(oc.opts, oc.lr, scale instanceof LossScaler ? scale.optimizerStep(t) : t),
        ...(c.reports.gradAccum ? accumFeeds(j, k, s ?? 1) : {}),
        ...(s !== undefined ? { [LOSS_SCALE_INPUT]: [s], ...(c.reports.gradAccum ? {} : { [INV_LOSS_SCALE_INPUT]: [1 / s] }) } : {}),
        ...feeds(j),
      };
      const r = referenceStep(c.step!, { feeds: f, params }, { update: j === k - 1 });
      params = r.params;
      loss += r.outputs.loss.data[0] / k;
      if (j === k - 1 && r.outputs[OVERFLOW_OUTPUT]) overflow = r.outputs[OVERFLOW_OUTPUT].data[0];
    }
    run.losses.push(loss);
    run.overflows.push(overflow);
    run.history.push(params);
    if (scale instanceof LossScaler) scale.update(overflow);
  }
  return { ...run, params };
}

const trainableOf = (c: Compiled) => c.forward.params.filter((p) => p.trainable).map((p) => p.value.name);
/** Parameters and optimizer state (what the update writes), accumulators excluded. */
const updatedOf = (c: Compiled) => c.step!.updates.map((u) => u.target).filter((n) => !n.startsWith('optim.grad_acc.'));

// ---------------------------------------------------------------------------------------------

describe('float64: loss scaling at S = 2¹⁰ trains exactly as without it', () => {
  const cases = (['full', 'lora-fa'] as const).flatMap((mode) => OPT_CASES.flatMap((oc) => [false, true].map((acc) => [mode, oc.label, acc ? `K = ${K}` : 'K = 1', oc, acc] as const)));
  test.each(cases)('%s, %s, %s: losses and parameters within 1e-12, overflow 0', (mode, _l, _k, oc, acc) => {
    const k = acc ? K : 1;
        const plain = compileMlp(mode, oc.opts, { accumulate: acc, batch: microBatch(acc) });
    const scaled = compileMlp(mode, oc.opts, { accumulate: acc, lossScaling: true, batch: microBatch(acc) });
    const data = Array.from({ length: STEPS }, (_, t) => dataFor(ROWS, 10 * t + 1));
    const init = paramsWithRandomB(plain.forward, 5);
    const want = train(plain, data, init, oc, k);
    const got = train(scaled, data, init, oc, k, S);
    expect(got.overflows).toEqual(new Array(STEPS).fill(0));
    for (let t = 0; t < STEPS; t++) expect(relErr([got.losses[t]], [want.losses[t]]), `loss ${t + 1}`).toBeLessThanOrEqual(F64_TOL);
    const { err, at } = worst(got.params, want.params);
    expect(err, at).toBeLessThanOrEqual(F64_TOL);
    // The parameters moved, and the optimizer state is the same too (it is in want.params).
    for (const p of trainableOf(plain)) expect(relErr(want.params.get(p)!.data, init.get(p)!.data), `${p} moved`).toBeGreaterThan(1e-4);
    expect([...want.params.keys()].filter((n) => n.startsWith('optim.')).length).toBeGreaterThan(0);
  });

  test('teeth: no unscale (1/S fed as 1), or accumulation weights without S, would be caught', () => {
    const oc = OPT_CASES[0];
    for (const acc of [false, true]) {
      const k = acc ? K : 1;
      const plain = compileMlp('lora-fa', oc.opts, { accumulate: acc, batch: microBatch(acc) });
      const scaled = compileMlp('lora-fa', oc.opts, { accumulate: acc, lossScaling: true, batch: microBatch(acc) });
      const data = Array.from({ length: 2 }, (_, t) => dataFor(ROWS, 3 + t));
      const init = paramsWithRandomB(plain.forward, 2);
      const want = train(plain, data, init, oc, k).params;
      const wrong = acc ? (j: number) => accumFeeds(j, k) : () => ({ [INV_LOSS_SCALE_INPUT]: [1] });
      expect(worst(train(scaled, data, init, oc, k, S).params, want).err).toBeLessThanOrEqual(F64_TOL);
      expect(worst(train(scaled, data, init, oc, k, S, wrong).params, want).err).toBeGreaterThan(1e-3);
    }
  });
});

describe('float64: an overflow is caught and the step skipped', () => {
  test.each(OPT_CASES.flatMap((oc) => [false, true].map((acc) => [oc.label, acc ? `K = ${K}` : 'K = 1', oc, acc] as const)))(
    '%s, %s: a seed of Inf or NaN counts non-finite gradients; parameters and state keep their bits',
    (_l, _k, oc, acc) => {
      const k = acc ? K : 1;
      const c = compileMlp('full', oc.opts, { accumulate: acc, lossScaling: true, batch: microBatch(acc) });
      const data = Array.from({ length: 2 }, (_, t) => dataFor(ROWS, 40 + t));
      // One clean step first, so the optimizer state is not zeros.
      const before = train(c, [data[0]], paramsWithRandomB(c.forward, 1), oc, k, S).params;
      for (const bad of [Infinity, NaN, -Infinity]) {
        const r = train(c, [data[1]], before, oc, k, S, () => ({ [LOSS_SCALE_INPUT]: [bad] }));
        expect(r.overflows[0], `seed ${bad}`).toBeGreaterThan(0);
        expect(sameBits(r.params, before, updatedOf(c)), `seed ${bad}: changed`).toEqual([]);
      }
      // Teeth: the same step at a finite scale changes every parameter.
      const clean = train(c, [data[1]], before, oc, k, S);
      expect(clean.overflows[0]).toBe(0);
      for (const p of trainableOf(c)) expect(sameBits(clean.params, before, [p]), p).toEqual([p]);
    },
  );

  test.each(OPT_CASES.flatMap((oc) => [false, true].map((acc) => [oc.label, acc ? `K = ${K}` : 'K = 1', oc, acc] as const)))(
    '%s, %s: a scaler starting at 2¹⁰²³ halves S on each skipped step, then trains exactly as a run started at that scale',
    (_l, _k, oc, acc) => {
      const k = acc ? K : 1;
      const c = compileMlp('lora-fa', oc.opts, { accumulate: acc, lossScaling: true, batch: microBatch(acc) });
      // Inputs of magnitude 2¹⁰: gradients of tens, which overflow float64 at S = 2¹⁰²³ (and a
      // small lr, so that they stay tens and the scale, once found, keeps fitting).
      oc = { ...oc, lr: oc.lr / 100 };
      const data = Array.from({ length: 10 }, (_, t) => dataFor(ROWS, 60 + t, 1024));
      const init = paramsWithRandomB(c.forward, 6);
      const scaler = new LossScaler('dynamic', { init: 2 ** 1023 });
      const a = train(c, data, init, oc, k, scaler);
      const n = a.overflows.findIndex((o) => o === 0);
      expect(n, `overflows ${a.overflows}`).toBeGreaterThanOrEqual(2);
      expect(a.overflows.slice(n).every((o) => o === 0), `overflows ${a.overflows}`).toBe(true);
      // Skipped: the parameters as initialised, the optimizer state still zeros.
      const start = new Map(updatedOf(c).map((k) => [k, init.get(k) ?? { shape: [], data: new Float64Array(a.params.get(k)!.data.length) }]));
      for (let t = 0; t < n; t++) expect(sameBits(a.history[t], start, updatedOf(c)), `step ${t + 1} changed`).toEqual([]);
      expect(sameBits(a.history[n], start, trainableOf(c)), `step ${n + 1} is clean`).toEqual(trainableOf(c));
      expect(scaler.state()).toMatchObject({ scale: 2 ** (1023 - n), skipped: n, backoffs: n, growths: 0 });
      // The run that started at 2^(1023 − n) on the batches after the skipped ones, optimizer step 1.
      const b = train(c, data.slice(n), init, oc, k, new LossScaler('dynamic', { init: 2 ** (1023 - n) }));
      expect(b.overflows.every((o) => o === 0)).toBe(true);
      expect(sameBits(a.params, b.params, updatedOf(c))).toEqual([]);
      expect(a.losses.slice(n)).toEqual(b.losses);
      // Teeth: the optimizer count t (not t − skipped) would change AdamW's bias corrections.
      if (oc.opts.kind === 'adamw') {
        const wrongT = train(c, data, init, oc, k, new LossScaler('dynamic', { init: 2 ** 1023 }), () => optimizerFeeds(oc.opts, oc.lr, 1));
        expect(worst(wrongT.params, b.params).err).toBeGreaterThan(1e-6);
      }
    },
  );
});

describe('the pass', () => {
  test('the seed is optim.loss_scale; gradients unscaled and counted in the update; every parameter and state write-back gated, accumulators not', () => {
    for (const acc of [false, true]) {
      const c = compileMlp('lora-fa', { kind: 'adamw' }, { accumulate: acc, lossScaling: true });
      const step = c.step!;
      const producer = new Map(step.nodes.map((n) => [n.out.id, n]));
      const overflow = step.outputs[OVERFLOW_OUTPUT];
      expect(Object.keys(step.outputs).sort()).toEqual(['loss', OVERFLOW_OUTPUT]);
      expect(producer.get(overflow.id)!.phase).toBe('update');
      const names = step.inputs.map((i) => i.value.name);
      expect(names).toContain(LOSS_SCALE_INPUT);
      expect(names.includes(INV_LOSS_SCALE_INPUT)).toBe(!acc);
      const counts = step.nodes.filter((n) => n.op === 'count_nonfinite');
      expect(counts.length).toBe(trainableOf(c).length);
      for (const n of counts) {
        expect(n.phase).toBe('update');
        // It reads what the optimizer reads: the unscaled (or mean) gradient.
        expect(c.gradients.has(n.inputs[0].id)).toBe(true);
      }
      const params = new Map(step.params.map((p) => [p.value.name, p]));
      for (const u of step.updates) {
        const w = producer.get(u.value.id)!;
        if (params.get(u.target)!.role === 'grad_accumulator') {
          expect(w.phase).toBe('accumulate');
          continue;
        }
        expect([w.op, w.phase, w.inputs[0].id, w.inputs[1].id], u.target).toEqual(['where', 'update', overflow.id, params.get(u.target)!.value.id]);
      }
      expect(c.reports.lossScale?.gated.length).toBe(updatedOf(c).length);
      expect(c.stages.map((s) => s.pass)).toContain('loss-scale');
      // f16 storage: the scale scalars and the update stay f32.
      const plan = planMemory(step, { dtype: 'f16', gradients: c.gradients });
      for (const t of plan.tensors.filter((t) => t.name === LOSS_SCALE_INPUT || t.name === INV_LOSS_SCALE_INPUT)) expect(t.dtype, t.name).toBe('f32');
      const f16Plain = planMemory(compileMlp('lora-fa', { kind: 'adamw' }, { accumulate: acc }).step!, { dtype: 'f16' });
      expect(f16Plain.tensors.some((t) => t.dtype === 'f16')).toBe(true);
    }
  });

  test('without lossScaling the step is unchanged; loss scaling needs an optimizer; feeds', () => {
    const off = compileMlp('lora-fa', { kind: 'adamw' }, { lossScaling: false });
    expect(off.step!.inputs.some((i) => i.value.name.includes('loss_scale'))).toBe(false);
    expect(off.step!.nodes.some((n) => n.op === 'count_nonfinite')).toBe(false);
    expect(() => compileTraining(trace(mlp, 'toy'), { mode: 'full', lossScaling: true })).toThrow(/loss scaling needs an optimizer/);
    expect(lossScaleFeeds(4)).toEqual({ [LOSS_SCALE_INPUT]: [4], [INV_LOSS_SCALE_INPUT]: [0.25] });
    expect(lossScaleFeeds(4, true)).toEqual({ [LOSS_SCALE_INPUT]: [4] });
    expect(accumFeeds(1, 4, 8)).toEqual({ 'optim.accum_first': [0], 'optim.grad_scale': [1 / 32] });
    expect(() => lossScaleFeeds(Infinity)).toThrow(/finite number > 0/);
  });
});

// ---------------------------------------------------------------------------------------------

describe('LossScaler', () => {
  test('dynamic: backoff ×0.5 on overflow, growth ×2 after the interval of clean steps in a row', () => {
    const s = new LossScaler('dynamic', { growthInterval: 3 });
    expect(s.scale).toBe(65536);
    expect(s.feeds()).toEqual({ [LOSS_SCALE_INPUT]: [65536], [INV_LOSS_SCALE_INPUT]: [1 / 65536] });
    expect(s.update(5)).toBe(true);
    expect(s.scale).toBe(32768);
    expect([s.update(0), s.update(0)]).toEqual([false, false]);
    expect(s.scale).toBe(32768);
    // An overflow resets the count of clean steps.
    expect(s.update(1)).toBe(true);
    expect(s.scale).toBe(16384);
    for (let i = 0; i < 3; i++) s.update(0);
    expect(s.scale).toBe(32768);
    for (let i = 0; i < 3; i++) s.update(0);
    expect(s.state()).toEqual({ kind: 'dynamic', scale: 65536, cleanSteps: 0, skipped: 2, growths: 2, backoffs: 2 });
    expect(s.describe()).toBe('scale 65536, 2 skipped, 2 growths');
    expect(new LossScaler('dynamic').growthInterval).toBe(2000);
    // Growth stops at maxScale, and never lowers a scale above it.
    const capped = new LossScaler('dynamic', { init: 3, growthInterval: 1, maxScale: 4 });
    capped.update(0);
    capped.update(0);
    expect(capped.state()).toMatchObject({ scale: 4, growths: 1 });
    const above = new LossScaler('dynamic', { init: 8, growthInterval: 1, maxScale: 4 });
    above.update(0);
    expect(above.state()).toMatchObject({ scale: 8, growths: 0 });
  });

  test('static: the scale never changes; overflowed steps are still skipped', () => {
    const s = new LossScaler(128, { growthInterval: 1 });
    expect(s.update(0)).toBe(false);
    expect(s.update(3)).toBe(true);
    expect(s.state()).toEqual({ kind: 'static', scale: 128, cleanSteps: 0, skipped: 1, growths: 0, backoffs: 0 });
  });

  test('the state round-trips through a checkpoint, and a restored scaler continues exactly', () => {
    const a = new LossScaler('dynamic', { growthInterval: 4, init: 1024 });
    for (const o of [0, 0, 3, 0, 0, 0]) a.update(o);
    const dir = mkdtempSync(join(tmpdir(), 'lorafa-ls-'));
    try {
      const file = writeCheckpoint(dir, 6, new Map([['w', { shape: [1], data: Float32Array.of(1) }]]), { loss_scaler: JSON.stringify(a.state()) });
      const b = new LossScaler('dynamic', { growthInterval: 4, init: 1024 });
      b.restore(JSON.parse(readCheckpoint(file).meta.loss_scaler) as LossScalerState);
      expect(b.state()).toEqual(a.state());
      for (const o of [0, 0, 7, 0]) expect(b.update(o)).toBe(a.update(o));
      expect(b.state()).toEqual(a.state());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(() => new LossScaler(2).restore(a.state())).toThrow(/dynamic loss scaler; this run's is static/);
    expect(() => a.restore({ ...a.state(), scale: -1 })).toThrow(/not a valid state/);
  });

  test('settings: --loss-scale values, the dtype default, bad factors', () => {
    expect([parseLossScale('dynamic'), parseLossScale('none'), parseLossScale('1024')]).toEqual(['dynamic', 'none', 1024]);
    for (const bad of ['0', '-1', 'x', '1e39', '']) expect(() => parseLossScale(bad), bad).toThrow(/--loss-scale/);
    expect([defaultLossScale('f16'), defaultLossScale('f32'), defaultLossScale(undefined)]).toEqual(['dynamic', 'none', 'none']);
    expect(() => new LossScaler('dynamic', { backoffFactor: 1 })).toThrow(/backoff factor/);
    expect(() => new LossScaler('dynamic', { growthFactor: 1 })).toThrow(/growth factor/);
    expect(() => new LossScaler('dynamic', { growthInterval: 0 })).toThrow(/growth interval/);
  });
});

// ---------------------------------------------------------------------------------------------
// GPU (lavapipe)

describe('GPU', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await acquireGpu();
  });

  it('count_nonfinite tests the bits: ±Inf and NaN count; the largest f32, subnormals and −0 do not (past one 256-term block)', async () => {
    const n = 1000;
    const data = new Float64Array(n).map((_, i) => Math.sin(i) * 1e3);
    const special: [number, number][] = [[3, Infinity], [257, NaN], [511, -Infinity], [999, NaN], [10, 3.4028234663852886e38], [11, -3.4028234663852886e38], [12, 1.4e-45], [13, -0]];
    for (const [i, v] of special) data[i] = v;
    const b = new Builder({ name: 'count' });
    const x = b.input('x', [10, 100]);
    b.output('y', b.emit('count_nonfinite', [x], {}));
    const node = b.build().nodes.at(-1)!;
    expect([...(await runNodeOnGpu(node, new Map([[x.id, { shape: [10, 100], data }]])))]).toEqual([4]);
    expect([...(await runNodeOnGpu(node, new Map([[x.id, { shape: [10, 100], data: data.map((v) => (Number.isFinite(v) ? v : 0)) }]])))]).toEqual([0]);
  });

  function runnerFor(c: Compiled) {
    const plan = planMemory(c.step!, { limits: { ...LIMIT_PRESETS.webgpu, alignment: gpu.limits.minStorageBufferOffsetAlignment }, gradients: c.gradients });
    return StepRunner.create(buildKernelPlan(c.step!, plan, { maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, subgroupSize: gpu.subgroupSize }), gpu);
  }

  it('through StepRunner: steps that overflow f32 are skipped (parameters and state read back unchanged), S halves until a step is clean', async () => {
    const oc = OPT_CASES[1];
    const c = compileMlp('lora-fa', oc.opts, { lossScaling: true, batch: ROWS });
    const runner = await runnerFor(c);
    try {
      const init = paramsWithRandomB(c.forward, 6);
      runner.writeParams(new Map([...init].map(([k, t]) => [k, { data: t.data }])));
      // Gradients of tens overflow f32 at S = 2¹²⁷ (f32's largest power of two).
      const scaler = new LossScaler('dynamic', { init: 2 ** 127 });
      let prev = await runner.readParams();
      const flags: number[] = [];
      for (let t = 1; t <= 12; t++) {
        const s0 = scaler.scale;
        const r = await runner.runStep({ ...dataFor(ROWS, 60 + t, 1024), ...optimizerFeeds(oc.opts, oc.lr, scaler.optimizerStep(t)), ...scaler.feeds() });
        expect(r.overflow, `step ${t}`).toBeDefined();
        expect(Number.isFinite(r.loss)).toBe(true);
        flags.push(r.overflow!);
        const now = await runner.readParams();
        const changed = updatedOf(c).filter((k) => !now.get(k)!.every((v, i) => Object.is(v, prev.get(k)![i])));
        if (scaler.update(r.overflow!)) {
          expect(changed, `step ${t} (S = ${s0}) skipped, yet changed`).toEqual([]);
          expect(scaler.scale).toBe(s0 / 2);
        } else {
          expect(changed.length, `step ${t}: a clean step updates`).toBeGreaterThan(0);
        }
        prev = now;
      }
      expect(flags[0], `overflow flags ${flags}`).toBeGreaterThan(0);
      expect(flags.at(-1), `overflow flags ${flags}`).toBe(0);
      expect(scaler.skipped).toBeGreaterThanOrEqual(2);
    } finally {
      runner.destroy();
    }
  });

  it('through StepRunner: clean steps grow S every growthInterval steps, and losses and parameters match float64 at the same scales', async () => {
    const oc = OPT_CASES[1];
    const c = compileMlp('lora-fa', oc.opts, { lossScaling: true, batch: ROWS });
    const runner = await runnerFor(c);
    try {
      const init = paramsWithRandomB(c.forward, 8);
      runner.writeParams(new Map([...init].map(([k, t]) => [k, { data: t.data }])));
      const data = Array.from({ length: 6 }, (_, t) => dataFor(ROWS, 80 + t));
      const scaler = new LossScaler('dynamic', { init: 2 ** 10, growthInterval: 2 });
      const losses: number[] = [];
      const scales: number[] = [];
      for (let t = 1; t <= data.length; t++) {
        scales.push(scaler.scale);
        const r = await runner.runStep({ ...data[t - 1], ...optimizerFeeds(oc.opts, oc.lr, scaler.optimizerStep(t)), ...scaler.feeds() });
        expect(r.overflow).toBe(0);
        scaler.update(r.overflow!);
        losses.push(r.loss);
      }
      expect(scales).toEqual([1024, 1024, 2048, 2048, 4096, 4096]);
      expect(scaler.state()).toMatchObject({ scale: 8192, growths: 3, skipped: 0 });
      const ref = train(c, data, init, oc, 1, new LossScaler('dynamic', { init: 2 ** 10, growthInterval: 2 }));
      for (let t = 0; t < data.length; t++) expect(relErr([losses[t]], [ref.losses[t]]), `loss ${t + 1}`).toBeLessThan(1e-5);
      const got = await runner.readParams();
      for (const k of updatedOf(c)) expect(relErr(got.get(k)!, ref.params.get(k)!.data), k).toBeLessThan(1e-4);
      // A plan without loss scaling reads back no overflow.
      const plain = await runnerFor(compileMlp('lora-fa', oc.opts, { batch: ROWS }));
      try {
        plain.writeParams(new Map([...init].map(([k, t]) => [k, { data: t.data }])));
        expect(await plain.runStep({ ...data[0], ...optimizerFeeds(oc.opts, oc.lr, 1) })).toEqual({ loss: expect.any(Number) });
      } finally {
        plain.destroy();
      }
    } finally {
      runner.destroy();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// the training loop

describe('the training loop', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'lorafa-loss-scale-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const MLP = join(ROOT, 'models', 'mlp.ts');
  /** models/mlp.ts's 12 features of magnitude up to 2¹⁰ (gradients of tens) and a label. */
  const csv = join(tmp, 'big.csv');
  beforeAll(() => {
    let st = 7;
    const u = () => ((st = (st * 1103515245 + 12345) % 2147483648), st / 2147483648);
    let text = Array.from({ length: 12 }, (_, i) => `x${i}`).join(',') + ',label\n';
    for (let r = 0; r < 200; r++) {
      const x = Array.from({ length: 12 }, () => Number((1024 * (2 * u() - 1)).toFixed(3)));
      const sc = [x[0] + x[1] - x[2], x[3] - x[4] + x[5], x[6] + x[7] + x[8]];
      text += `${x.join(',')},${sc.indexOf(Math.max(...sc))}\n`;
    }
    writeFileSync(csv, text);
  });
  const bits = (a: Float32Array) => [...new Uint32Array(Float32Array.from(a).buffer)];
  const run = (o: Partial<FinetuneOptions>) =>
    finetune({ model: MLP, data: csv, seed: 2, steps: 14, lr: 1e-4, lrSchedule: 'constant', warmup: 0, compare: false, progress: 'none', log: () => {}, lossScale: 'dynamic', lossScaler: { init: 2 ** 127, growthInterval: 3, maxScale: 2 ** 127 }, ...o });

  test('dynamic from 2¹²⁷: the first steps are skipped, S halves, then grows every 3 clean steps; result, report.json, report.md and progress lines say so; a resumed run ends bit for bit as the straight one', async () => {
    const lines: string[] = [];
    const straight = join(tmp, 'straight');
    const a = await run({ out: straight, checkpointEvery: 4, progress: 'lines', logEvery: 1, log: (l) => lines.push(l) });
    const ls = a.lossScale!;
    expect(ls.setting).toBe('dynamic');
    const n = ls.state.backoffs;
    expect(n, JSON.stringify(ls)).toBeGreaterThanOrEqual(2);
    // The first n steps overflowed; the later skips (if any) follow a growth.
    expect(ls.skippedSteps.slice(0, 2)).toEqual([1, 2]);
    expect(ls.state.growths, JSON.stringify(ls)).toBeGreaterThanOrEqual(1);
    expect(ls.state.scale).toBe(2 ** (127 - ls.state.backoffs + ls.state.growths));
    expect(ls.state.skipped).toBe(ls.skippedSteps.length);
    // Every parameter the run trains moved.
    for (const [k, v] of a.params) if (!k.startsWith('optim.') && a.initial.has(k) && a.program.step.params.find((q) => q.name === k)?.trainable) expect(bits(v), k).not.toEqual(bits(a.initial.get(k)!));
    const report = JSON.parse(readFileSync(join(straight, 'report.json'), 'utf8')) as { lossScale: typeof ls };
    expect(report.lossScale).toEqual(JSON.parse(JSON.stringify(ls)));
    expect(readFileSync(join(straight, 'report.md'), 'utf8')).toMatch(/- loss scaling: dynamic loss scaling, final scale 2\^\d+, \d+ skipped, \d+ growths?; steps skipped for overflowed gradients: 1, 2/);
    expect(lines.find((l) => l.startsWith('step 1/14'))).toMatch(/\(loss scale 2\^126, 1 skipped\)/);
    expect(lines.some((l) => /^done: .*loss scale 2\^\d+, \d+ skipped/.test(l))).toBe(true);

    // Stopped at step 8 (a checkpoint), then resumed to 14: the same state, tensors and losses.
    const resumed = join(tmp, 'resumed');
    await run({ out: resumed, steps: 8, checkpointEvery: 4 });
    const b = await run({ out: resumed, resume: true, checkpointEvery: 4 });
    expect(b.startStep).toBe(8);
    expect(b.lossScale!.state).toEqual(ls.state);
    expect(b.lossScale!.skippedSteps).toEqual(ls.skippedSteps.filter((t) => t > 8));
    expect(b.losses).toEqual(a.losses.filter((l) => l.step > 8));
    for (const [k, v] of a.params) expect(bits(b.params.get(k)!), k).toEqual(bits(v));
    // (Without the scaler's state in the checkpoint, the resumed run would restart from 2¹²⁷ and skip
    // steps 9 and 10: neither the state nor the losses would match.)
    expect(listCheckpoints(join(resumed, 'checkpoints')).map((x) => x.step)).toContain(14);
  }, 120_000);

  test('a compiled trainer: --loss-scale must match what was compiled; a static scale compiled in is the default', async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    const withLs = join(tmp, 'trainer-static');
    const without = join(tmp, 'trainer-plain');
    try {
      expect(await main(['compile', MLP, '--seed', '2', '--loss-scale', '1024', '-o', withLs])).toBe(0);
      expect(await main(['compile', MLP, '--seed', '2', '-o', without])).toBe(0);
      expect(await main(['compile', MLP, '--loss-scale', 'sometimes', '-o', join(tmp, 'x')])).toBe(2);
    } finally {
      log.mockRestore();
    }
    const spec = (dir: string) => (JSON.parse(readFileSync(join(dir, 'plan.json'), 'utf8')) as PlanFile).spec;
    expect(spec(withLs).lossScale).toBe(1024);
    expect(spec(without).lossScale).toBeUndefined();
    const flags = { data: csv, steps: 3, lr: 1e-4, progress: 'none' as const };
    const r = await runTrainer(withLs, spec(withLs), flags);
    expect(r.lossScale).toMatchObject({ setting: 1024, state: { kind: 'static', scale: 1024, skipped: 0 } });
    await expect(runTrainer(withLs, spec(withLs), { ...flags, lossScale: 'none', out: join(tmp, 'o1') })).rejects.toThrow(/compiled with loss scaling/);
    await expect(runTrainer(without, spec(without), { ...flags, lossScale: 'dynamic', out: join(tmp, 'o2') })).rejects.toThrow(/compiled without loss scaling.*\n.*--loss-scale dynamic/);
    const plain = await runTrainer(without, spec(without), { ...flags, out: join(tmp, 'o3') });
    expect(plain.lossScale).toBeUndefined();
  }, 120_000);
});
