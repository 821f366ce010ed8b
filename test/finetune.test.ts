// Fine-tuning on real data (src/train: finetune() and the one training loop, `lorafa finetune`), on
// the GPU (Dawn on lavapipe here):
// - the learning-rate schedule;
// - the shipped MNIST base, loaded and evaluated, reproduces the accuracy it recorded;
// - Fashion-MNIST runs in lora / lora-fa / lora-fa + gradient correction: bytes measured at
//   createBuffer are the plan's (+4 B loss readback), LoRA − LoRA-FA is the plan's difference, A and
//   the base weights stay bit-identical, training helps, runs are deterministic;
// - one step and the evaluation agree with the float64 reference (with the correction, started from
//   a PEFT adapter whose A is not the seed's);
// - the CLI: its files, a PEFT adapter round trip, the merged weights, and bad input that names
//   the place and the fix without damaging what an earlier run wrote.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, copyFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { gunzipSync } from 'node:zlib';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { loadModel, trace } from '../src/model/load.ts';
import { finetune, type FinetuneOptions, type FinetuneResult } from '../src/train/finetune.ts';
import { PRESETS } from '../src/train/presets.ts';
import { defaultWarmup, lrAt, type LrSchedule } from '../src/train/schedule.ts';
import { openTrainingData } from '../src/train/data.ts';
import { layoutGraph } from '../src/train/program.ts';
import { openImageDataset } from '../src/data/images.ts';
import type { Tensor } from '../src/ir/shape.ts';
import type { Graph } from '../src/ir/types.ts';
import { exportPeftAdapter } from '../src/io/peft.ts';
import { readSafetensors, writeSafetensors, type SafeTensor, type TensorToWrite } from '../src/io/safetensors.ts';
import { compileTraining } from '../src/passes/compile.ts';
import { applyLora } from '../src/passes/lora.ts';
import { optimizerFeeds } from '../src/passes/optimizer.ts';
import { initParams, rng } from '../src/runtime/init.ts';
import { referenceStep, runReference } from '../src/runtime/reference.ts';
import { property, ROOT } from './helpers.ts';

const FASHION = PRESETS['fashion-mnist'];

/** A preset run in process, no files, no progress. */
const run = (o: Partial<FinetuneOptions> & { model: string }) => finetune({ compare: false, progress: 'none', log: () => {}, ...o });
type RunResult = FinetuneResult;
const MNIST_BASE = join(ROOT, 'models', 'pretrained', 'mlp-mnist');
const SYSTEM_FASHION = '/usr/share/datasets/fashion-mnist';
const tmp = mkdtempSync(join(tmpdir(), 'lorafa-finetune-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The bits of a float32 array, so equality is bit-for-bit (and −0 ≠ +0, NaN = NaN). */
const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
const f32 = (a: ArrayLike<number>) => Float32Array.from(a);

/** The shipped base in lorafa layout (linear weights transposed back to [in, out]), read here. */
function baseValues(dir = MNIST_BASE): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [k, t] of readSafetensors(join(dir, 'model.safetensors'))) {
    if (t.shape.length === 2) {
      const [o, i] = t.shape;
      const w = new Float32Array(o * i);
      for (let r = 0; r < i; r++) for (let c = 0; c < o; c++) w[r * o + c] = t.data[c * i + r];
      out.set(k, w);
    } else out.set(k, f32(t.data));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

describe('lrAt: warm-up, then cosine (or linear) to lr × minRatio, or constant', () => {
  const cosine = (steps: number, lr: number, warmupCap: number): LrSchedule => ({ kind: 'cosine', lr, warmup: defaultWarmup(steps, warmupCap), steps, minRatio: 0.1 });
  test('linear warm-up (by default at most a tenth of the run) to the peak, lr/10 at the last step, non-increasing after the warm-up', () => {
    property(
      'lrAt schedule',
      fc.record({ warmupAsked: fc.integer({ min: 0, max: 60 }), extra: fc.integer({ min: 1, max: 400 }), lr: fc.double({ min: 1e-6, max: 1, noNaN: true }), kind: fc.constantFrom('cosine', 'linear') as fc.Arbitrary<'cosine' | 'linear'> }),
      ({ warmupAsked, extra, lr, kind }) => {
        const steps = warmupAsked + extra;
        // A short run warms up for a tenth of its steps, so it still reaches the peak and decays.
        const warmup = Math.min(warmupAsked, Math.floor(steps / 10));
        const s = { ...cosine(steps, lr, warmupAsked), kind };
        expect(s.warmup).toBe(warmup);
        const at = (t: number) => lrAt(s, t);
        for (let t = 1; t <= warmup; t++) {
          const want = (lr * t) / warmup;
          if (Math.abs(at(t) - want) > 1e-12 * lr) throw new Error(`warm-up: lrAt(${t}) = ${at(t)}, want ${want}`);
        }
        if (warmup > 0 && Math.abs(at(warmup) - lr) > 1e-12 * lr) throw new Error(`peak: lrAt(${warmup}) = ${at(warmup)}, want ${lr}`);
        if (Math.abs(at(steps) - lr / 10) > 1e-12 * lr) throw new Error(`end: lrAt(${steps}) = ${at(steps)}, want ${lr / 10}`);
        for (let t = Math.max(1, warmup); t < steps; t++) {
          if (!(at(t + 1) <= at(t))) throw new Error(`increases after the warm-up: lrAt(${t}) = ${at(t)} < lrAt(${t + 1}) = ${at(t + 1)}`);
        }
        for (let t = 1; t <= steps; t++) if (!(at(t) > 0 && at(t) <= lr * (1 + 1e-15))) throw new Error(`lrAt(${t}) = ${at(t)} outside (0, lr]`);
      },
    );
  });

  test('hand-checked points: halfway through the decay, cosine gives lr·(0.1 + 0.45), linear the same; constant stays at lr', () => {
    expect(lrAt(cosine(110, 1, 10), 60)).toBeCloseTo(0.55, 14);
    expect(lrAt(cosine(110, 1, 10), 5)).toBeCloseTo(0.5, 14);
    expect(lrAt({ ...cosine(110, 1, 10), kind: 'linear' }, 60)).toBeCloseTo(0.55, 14);
    expect(lrAt({ ...cosine(110, 1, 10), kind: 'linear' }, 35)).toBeCloseTo(1 - 0.9 * 0.25, 14);
    expect(lrAt({ ...cosine(110, 1, 10), kind: 'constant' }, 100)).toBe(1);
    expect(lrAt({ ...cosine(110, 1, 10), minRatio: 0 }, 110)).toBeCloseTo(0, 14);
    // 20 steps asked to warm up for 30: two warm-up steps, the peak at step 2, then the decay.
    expect(lrAt(cosine(20, 1, 30), 2)).toBeCloseTo(1, 14);
    expect(lrAt(cosine(20, 1, 30), 20)).toBeCloseTo(0.1, 14);
  });
});

// ---------------------------------------------------------------------------------------------

describe('the shipped MNIST base', () => {
  test('loaded into models/mlp.ts (mnist) and evaluated on the MNIST test set, it scores what metrics.json recorded', async () => {
    const metrics = JSON.parse(readFileSync(join(MNIST_BASE, 'metrics.json'), 'utf8')) as { final: { accuracy: number; loss: number; count: number } };
    const r = await run({ model: 'mnist', mode: 'full', base: MNIST_BASE, steps: 1 });
    expect(r.before!.count).toBe(metrics.final.count);
    expect(Math.abs(r.before!.accuracy! - metrics.final.accuracy)).toBeLessThanOrEqual(1e-9);
    expect(Math.abs(r.before!.loss - metrics.final.loss)).toBeLessThanOrEqual(1e-5 * metrics.final.loss);
    expect(metrics.final.accuracy).toBeGreaterThan(0.9);
  });
});

// ---------------------------------------------------------------------------------------------

describe('fine-tuning fashion-mnist in process: lora, lora-fa, lora-fa + gradient correction', () => {
  const STEPS = 30;
  const SEED = 0;
  let lora: RunResult;
  let fa: RunResult;
  let fa2: RunResult;
  let gc: RunResult;
  beforeAll(async () => {
    const o = { model: 'fashion-mnist', seed: SEED, steps: STEPS } as const;
    lora = await run({ ...o, mode: 'lora' });
    fa = await run({ ...o, mode: 'lora-fa' });
    gc = await run({ ...o, mode: 'lora-fa', gradCorrection: true });
    fa2 = await run({ ...o, mode: 'lora-fa' });
  });
  const measured = (r: RunResult) => r.measuredBytes;
  const planned = (r: RunResult) => r.program.step.bytes;

  test('GPU bytes measured at createBuffer are the plan’s plus the 4-byte loss readback', () => {
    for (const r of [lora, fa, gc, fa2]) {
      expect(measured(r), `${r.program.spec.mode}${r.program.spec.gradCorrection ? ' + gc' : ''}`).toBe(planned(r) + 4);
      expect(planned(r)).toBeGreaterThanOrEqual(r.program.memory.lowerBound);
    }
  });

  test('LoRA − LoRA-FA measured is exactly the plans’ difference, and positive', () => {
    const diff = planned(lora) - planned(fa);
    expect(diff).toBeGreaterThan(0);
    expect(measured(lora) - measured(fa)).toBe(diff);
  });

  test('under lora-fa, A keeps its seeded init and W, biases keep the base’s values, bit for bit; B and the head train', () => {
    const base = baseValues();
    const forward = layoutGraph(fa.program.weights);
    const init = initParams(forward, { seed: SEED });
    const adapters = forward.adapters;
    expect(adapters.map((a) => a.module)).toEqual(['fc1', 'fc2']);
    for (const r of [fa, gc, fa2]) {
      for (const k of ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']) expect(bits(r.forwardValues.get(k)!), k).toEqual(bits(base.get(k)!));
      for (const a of adapters) {
        expect(bits(r.forwardValues.get(a.A)!), a.A).toEqual(bits(f32(init.get(a.A)!.data)));
        expect(r.forwardValues.get(a.B)!.some((v) => v !== 0), `${a.B} trained`).toBe(true);
      }
      expect(bits(r.forwardValues.get('fc3.weight')!)).not.toEqual(bits(base.get('fc3.weight')!));
    }
    // Under LoRA, A does train (so the comparison above can tell the modes apart).
    for (const a of adapters) expect(bits(lora.forwardValues.get(a.A)!)).not.toEqual(bits(f32(init.get(a.A)!.data)));
    for (const k of ['fc1.weight', 'fc2.weight']) expect(bits(lora.forwardValues.get(k)!)).toEqual(bits(base.get(k)!));
  });

  test('the gradient correction changes what B learns (same A, other B)', () => {
    for (const a of fa.program.weights.adapters) {
      expect(bits(gc.forwardValues.get(a.A)!)).toEqual(bits(fa.forwardValues.get(a.A)!));
      expect(bits(gc.forwardValues.get(a.B)!)).not.toEqual(bits(fa.forwardValues.get(a.B)!));
    }
    expect(gc.losses.map((l) => l.loss)).not.toEqual(fa.losses.map((l) => l.loss));
  });

  test('training improves test accuracy from the frozen base, in every mode', () => {
    for (const r of [lora, fa, gc]) {
      expect(r.before!.count).toBe(10000);
      expect(r.after!.accuracy!, `${r.program.spec.mode}: ${r.before!.accuracy} → ${r.after!.accuracy}`).toBeGreaterThan(r.before!.accuracy!);
      expect(r.after!.loss).toBeLessThan(r.before!.loss);
    }
    // Every run starts from the same frozen base.
    expect(fa.before).toEqual(lora.before);
    expect(gc.before).toEqual(lora.before);
  });

  test('same seed, same run: identical losses and final values', () => {
    expect(fa2.losses).toEqual(fa.losses);
    expect(fa.losses.map((l) => l.step)).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
    expect(fa2.after).toEqual(fa.after);
    for (const [k, v] of fa.forwardValues) expect(bits(fa2.forwardValues.get(k)!), k).toEqual(bits(v));
  });
});

// ---------------------------------------------------------------------------------------------

/** A Fashion-MNIST directory whose test set is the first `n` test images (raw IDX), training set linked. */
function smallTestSet(dir: string, n: number): void {
  mkdirSync(dir, { recursive: true });
  for (const f of ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz']) symlinkSync(join(SYSTEM_FASHION, f), join(dir, f));
  const images = gunzipSync(readFileSync(join(SYSTEM_FASHION, 't10k-images-idx3-ubyte.gz')));
  const labels = gunzipSync(readFileSync(join(SYSTEM_FASHION, 't10k-labels-idx1-ubyte.gz')));
  const ih = Buffer.from(images.subarray(0, 16));
  ih.writeUInt32BE(n, 4);
  writeFileSync(join(dir, 't10k-images-idx3-ubyte'), Buffer.concat([ih, images.subarray(16, 16 + n * 784)]));
  const lh = Buffer.from(labels.subarray(0, 8));
  lh.writeUInt32BE(n, 4);
  writeFileSync(join(dir, 't10k-labels-idx1-ubyte'), Buffer.concat([lh, labels.subarray(8, 8 + n)]));
}

function withEnvSync<T>(name: string, value: string, f: () => T): T {
  const old = process.env[name];
  process.env[name] = value;
  try {
    return f();
  } finally {
    if (old === undefined) delete process.env[name];
    else process.env[name] = old;
  }
}

async function withEnv<T>(name: string, value: string, f: () => Promise<T>): Promise<T> {
  const old = process.env[name];
  process.env[name] = value;
  try {
    return await f();
  } finally {
    if (old === undefined) delete process.env[name];
    else process.env[name] = old;
  }
}

describe('against the float64 reference (lora-fa + gradient correction, started from a PEFT adapter)', () => {
  // Seed 1 for the run, an adapter with seed 77's A and random B: (AᵀA)⁻¹ must come from the
  // adapter's A, the one actually trained with, not the seed's.
  const N_TEST = 1000;
  const SGD = { kind: 'sgd' } as const;
  let r: RunResult;
  let start: Map<string, Float64Array>;
  let evalGraph: Graph;
  let data: string;
  beforeAll(async () => {
    data = join(tmp, 'fashion-1000');
    smallTestSet(data, N_TEST);
    const m = await loadModel(join(ROOT, FASHION.model));
    const lora = { rank: 8, alpha: 16, targets: ['fc1', 'fc2'], modulesToSave: ['fc3'] };
    const fwd = compileTraining(trace(m, 'mnist'), { mode: 'lora-fa', lora }).forward;
    const mine = initParams(fwd, { seed: 77 });
    for (const a of fwd.adapters) {
      const u = rng(1000 + fwd.adapters.indexOf(a));
      mine.set(a.B, { shape: mine.get(a.B)!.shape, data: mine.get(a.B)!.data.map(() => 0.02 * (2 * u() - 1)) });
    }
    const base = baseValues();
    for (const k of ['fc3.weight', 'fc3.bias']) mine.set(k, { shape: mine.get(k)!.shape, data: Float64Array.from(base.get(k)!) });
    const adapterDir = join(tmp, 'adapter-77');
    exportPeftAdapter(adapterDir, fwd, mine, { targets: ['fc1', 'fc2'], modulesToSave: ['fc3'] });
    r = await withEnv('LORAFA_FASHION_MNIST_DIR', data, () =>
      run({ model: 'fashion-mnist', seed: 1, mode: 'lora-fa', gradCorrection: true, steps: 1, rank: 8, alpha: 16, initAdapter: adapterDir, optimizer: 'sgd', lr: 3, evalBatch: N_TEST }),
    );
    expect(r.after!.count).toBe(N_TEST);
    // The starting point, assembled here: base weights, then the adapter's (float32) tensors.
    start = new Map([...base].map(([k, v]) => [k, Float64Array.from(v)]));
    for (const a of fwd.adapters) for (const k of [a.A, a.B]) start.set(k, Float64Array.from(f32(mine.get(k)!.data)));
    evalGraph = applyLora(trace(m, 'mnist', { batch: N_TEST }), lora).graph;
    // The seed's A really differs from the adapter's.
    expect(bits(f32(initParams(fwd, { seed: 1 }).get('fc1.lora_A')!.data))).not.toEqual(bits(f32(start.get('fc1.lora_A')!)));
  });

  test('the evaluation (loss and accuracy on the 1000 test images) matches the reference forward of the final values', () => {
    const test = withEnvSync('LORAFA_FASHION_MNIST_DIR', data, () => openImageDataset('fashion-mnist', 'test'));
    const b = test.batch(Array.from({ length: N_TEST }, (_, i) => i));
    const batch = [{ feeds: { x: b.x, labels: b.labels }, labels: b.labels }];
    const params = new Map<string, Tensor>(evalGraph.params.map((p) => [p.value.name, { shape: p.value.type.shape, data: Float64Array.from(r.forwardValues.get(p.value.name)!) }]));
    const out = runReference(evalGraph, { feeds: batch[0].feeds, params }).outputs;
    const logits = out.logits.data;
    const labels = batch[0].labels!;
    let correct = 0;
    let nearTies = 0;
    let loss = 0;
    for (let i = 0; i < N_TEST; i++) {
      const row = [...logits.subarray(i * 10, i * 10 + 10)];
      const sorted = [...row].sort((a, b) => b - a);
      if (sorted[0] - sorted[1] < 1e-3) nearTies++;
      if (row.indexOf(sorted[0]) === labels[i]) correct++;
      const max = sorted[0];
      loss += Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) + max - row[labels[i]];
    }
    loss /= N_TEST;
    expect(r.after!.count).toBe(N_TEST);
    expect(Math.abs(r.after!.loss - loss)).toBeLessThanOrEqual(1e-6 * loss);
    expect(Math.abs(out.loss.data[0] - loss)).toBeLessThanOrEqual(1e-9 * loss);
    expect(Math.abs(r.after!.accuracy! * N_TEST - correct)).toBeLessThanOrEqual(nearTies);
    // And the before-evaluation saw the starting point (the adapter), not the seed's adapters.
    const p0 = new Map<string, Tensor>(evalGraph.params.map((p) => [p.value.name, { shape: p.value.type.shape, data: start.get(p.value.name)! }]));
    const out0 = runReference(evalGraph, { feeds: batch[0].feeds, params: p0 }).outputs;
    expect(Math.abs(r.before!.loss - out0.loss.data[0])).toBeLessThanOrEqual(1e-6 * out0.loss.data[0]);
  });

  test('one GPU step (SGD) equals the reference step: B moves by lr·(1/s²)(AᵀA)⁻¹·gB, A and W stay', async () => {
    const graph = trace(r.model, 'mnist');
    const lr1 = lrAt(r.schedule, 1);
    const ds = await withEnv('LORAFA_FASHION_MNIST_DIR', data, () => openTrainingData(r.program, { data: 'fashion-mnist' }, { seed: 1 }));
    const feeds = { ...(await ds.batch(1, 64)), ...optimizerFeeds(SGD, lr1, 1) };
    const run = (gradCorrection: boolean) => {
      const step = compileTraining(graph, { mode: 'lora-fa', lora: { rank: 8, alpha: 16, targets: ['fc1', 'fc2'], modulesToSave: ['fc3'] }, optimizer: SGD, gradCorrection }).step!;
      // lora_gc is left to the reference: (AᵀA)⁻¹ of the A given.
      const params = new Map<string, Tensor>(step.params.filter((p) => start.has(p.value.name)).map((p) => [p.value.name, { shape: p.value.type.shape, data: start.get(p.value.name)! }]));
      expect(params.size).toBe(10);
      return referenceStep(step, { feeds, params }).params;
    };
    const ref = run(true);
    const uncorrected = run(false);
    for (const name of ['fc1.lora_B', 'fc2.lora_B', 'fc3.weight', 'fc3.bias']) {
      const got = r.forwardValues.get(name)!;
      const want = ref.get(name)!.data;
      const before = start.get(name)!;
      let move = 0;
      let err = 0;
      let off = 0;
      for (let i = 0; i < want.length; i++) {
        move = Math.max(move, Math.abs(want[i] - before[i]));
        err = Math.max(err, Math.abs(got[i] - want[i]));
        off = Math.max(off, Math.abs(uncorrected.get(name)!.data[i] - want[i]));
      }
      expect(move, `${name} moves`).toBeGreaterThan(1e-4);
      expect(err, `${name}: GPU against reference, largest move ${move}`).toBeLessThanOrEqual(2e-5 * move);
      // The correction matters for B (so the check above would catch a missing or wrong one), not for the head.
      if (name.endsWith('lora_B')) expect(off, name).toBeGreaterThan(0.1 * move);
      else expect(off, name).toBe(0);
    }
    for (const k of ['fc1.lora_A', 'fc2.lora_A', 'fc1.weight', 'fc2.bias']) expect(bits(r.forwardValues.get(k)!), k).toEqual(bits(f32(start.get(k)!)));
  });
});

// ---------------------------------------------------------------------------------------------

const bin = join(ROOT, 'bin', 'lorafa.mjs');

function lorafa(args: readonly string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [bin, 'finetune', ...args, '--progress', 'none'], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, error: r.error };
}

/** Every file under `dir` (recursive) → its bytes. */
function snapshot(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(relative(dir, p), readFileSync(p));
    }
  };
  walk(dir);
  return out;
}

function expectUnchanged(dir: string, before: Map<string, Buffer>) {
  const now = snapshot(dir);
  expect([...now.keys()].sort()).toEqual([...before.keys()].sort());
  for (const [k, v] of before) expect(now.get(k)!.equals(v), `${k} unchanged`).toBe(true);
}

interface Report {
  mode: string;
  steps: number;
  before: { loss: number; accuracy: number; count: number };
  after: { loss: number; accuracy: number; count: number };
  gpuBytes: { measured: number; planned: number };
  plans: Record<string, { peak: number; lowerBound: number }>;
  losses: { step: number; loss: number }[];
  lora: { rank: number; alpha: number; targets: string[]; rslora: boolean; modulesToSave: string[] } | null;
}
const readReport = (dir: string) => JSON.parse(readFileSync(join(dir, 'report.json'), 'utf8')) as Report;

describe('lorafa finetune (CLI)', () => {
  const out = join(tmp, 'cli-run');
  const rerun = join(tmp, 'cli-rerun');
  const rank4 = join(tmp, 'cli-rank4');
  let first: ReturnType<typeof lorafa>;
  let good: Map<string, Buffer>;
  beforeAll(() => {
    first = lorafa(['fashion-mnist', '--rank', '8', '--alpha', '16', '--steps', '20', '--merged', '--out', out]);
    expect(first.status, first.stderr).toBe(0);
    good = snapshot(out);
  });

  test('writes the report, the charts, the PEFT adapter and the merged weights, and nothing else', () => {
    expect([...good.keys()].sort()).toEqual(
      ['adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'checkpoints/step-000020.safetensors', 'loss.svg', 'memory.svg', 'merged.safetensors', 'report.json', 'report.md'].sort(),
    );
    for (const svg of ['loss.svg', 'memory.svg']) expect(good.get(svg)!.toString()).toMatch(/^<svg[\s\S]*<\/svg>\s*$/);
    expect(first.stdout).toMatch(/wrote .*cli-run/);
  });

  test('report.json: measured = planned + 4, the plan’s lora-fa peak, 20 losses, accuracies in [0, 1]', () => {
    const r = readReport(out);
    expect(r.mode).toBe('lora-fa');
    expect(r.steps).toBe(20);
    expect(r.gpuBytes.measured).toBe(r.gpuBytes.planned + 4);
    expect(r.gpuBytes.planned).toBe(r.plans['lora-fa'].peak);
    expect(r.plans.lora.peak).toBeGreaterThan(r.plans['lora-fa'].peak);
    expect(r.plans.full.peak).toBeGreaterThan(r.plans.lora.peak);
    for (const m of [r.before, r.after]) {
      expect(m.accuracy).toBeGreaterThanOrEqual(0);
      expect(m.accuracy).toBeLessThanOrEqual(1);
      expect(m.count).toBe(10000);
      expect(Number.isFinite(m.loss) && m.loss > 0).toBe(true);
    }
    expect(r.losses.map((l) => l.step)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(r.losses.every((l) => Number.isFinite(l.loss))).toBe(true);
    expect(r.lora).toEqual({ rank: 8, alpha: 16, targets: ['fc1', 'fc2'], rslora: false, modulesToSave: ['fc3'] });
    const md = good.get('report.md')!.toString();
    expect(md).toContain(`${(100 * r.after.accuracy).toFixed(2)}%`);
    expect(md).toContain(`${r.gpuBytes.measured} measured at createBuffer, ${r.gpuBytes.planned} planned`);
  });

  test('adapter_config.json is PEFT’s: LORA, r 8, alpha 16, targets fc1, fc2, head fc3 saved whole', () => {
    const c = JSON.parse(good.get('adapter/adapter_config.json')!.toString()) as Record<string, unknown>;
    expect(c.peft_type).toBe('LORA');
    expect(c.r).toBe(8);
    expect(c.lora_alpha).toBe(16);
    expect(c.target_modules).toEqual(['fc1', 'fc2']);
    expect(c.modules_to_save).toEqual(['fc3']);
    expect(c.use_rslora).toBe(false);
  });

  test('--merged: fc1.weight, fc2.weight = W + s·A·B (torch layout), fc3 the trained head, no adapter keys', () => {
    const merged = readSafetensors(join(out, 'merged.safetensors'));
    const base = readSafetensors(join(MNIST_BASE, 'model.safetensors'));
    const ad = readSafetensors(join(out, 'adapter', 'adapter_model.safetensors'));
    expect([...merged.keys()].sort()).toEqual([...base.keys()].sort());
    const s = 16 / 8;
    for (const mod of ['fc1', 'fc2']) {
      const W = base.get(`${mod}.weight`)!;
      const A = ad.get(`base_model.model.${mod}.lora_A.weight`)! as SafeTensor; // [r, in]
      const B = ad.get(`base_model.model.${mod}.lora_B.weight`)! as SafeTensor; // [out, r]
      const [o, i] = W.shape;
      expect(A.shape).toEqual([8, i]);
      expect(B.shape).toEqual([o, 8]);
      const M = merged.get(`${mod}.weight`)!;
      expect(M.shape).toEqual([o, i]);
      let moved = 0;
      for (let a = 0; a < o; a++) {
        for (let b = 0; b < i; b++) {
          let d = 0;
          for (let k = 0; k < 8; k++) d += A.data[k * i + b] * B.data[a * 8 + k];
          const want = W.data[a * i + b] + s * d;
          const got = M.data[a * i + b];
          if (Math.abs(got - want) > 2 ** -23 * Math.abs(want) + 1e-30) throw new Error(`${mod}.weight[${a},${b}]: merged ${got}, W + s·A·B = ${want}`);
          if (got !== W.data[a * i + b]) moved++;
        }
      }
      expect(moved).toBeGreaterThan(o * i * 0.5);
    }
    for (const k of ['fc3.weight', 'fc3.bias']) expect(bits(f32(merged.get(k)!.data))).toEqual(bits(f32(ad.get(`base_model.model.${k}`)!.data)));
    for (const k of ['fc1.bias', 'fc2.bias']) expect(bits(f32(merged.get(k)!.data))).toEqual(bits(f32(base.get(k)!.data)));
  });

  test('--init-adapter <the adapter just written>: the new run starts exactly where the first ended', () => {
    const r = lorafa(['fashion-mnist', '--rank', '8', '--alpha', '16', '--init-adapter', join(out, 'adapter'), '--steps', '1', '--lr', '1e-12', '--out', rerun]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/adapter: \d+ tensors from/);
    const a = readReport(out);
    const b = readReport(rerun);
    expect(b.before.accuracy).toBe(a.after.accuracy);
    expect(b.before.loss).toBe(a.after.loss);
  });

  describe('bad input: a clear message, exit 1, and the earlier run’s files untouched', () => {
    function fails(args: string[], env: Record<string, string> = {}) {
      const r = lorafa([...args, '--out', out], env);
      expect(r.error).toBeUndefined();
      expect(r.status, r.stdout + r.stderr).toBe(1);
      expectUnchanged(out, good);
      const msg = r.stderr.split('\n').filter((l) => !/^Warning: /.test(l)).join('\n');
      expect(msg).toMatch(/^lorafa: /m);
      expect(msg).toMatch(/\n {2}fix: \S/);
      return msg;
    }

    test('(i) a truncated Fashion-MNIST training-image file is named', () => {
      const dir = join(tmp, 'fashion-truncated');
      mkdirSync(dir);
      for (const f of readdirSync(SYSTEM_FASHION)) copyFileSync(join(SYSTEM_FASHION, f), join(dir, f));
      const victim = join(dir, 'train-images-idx3-ubyte.gz');
      truncateSync(victim, Math.floor(statSync(victim).size / 2));
      const msg = fails(['fashion-mnist', '--steps', '2'], { LORAFA_FASHION_MNIST_DIR: dir });
      expect(msg).toContain(`lorafa: ${victim}: `);
      expect(msg).toMatch(/corrupt gzip|truncated/);
      expect(msg).toMatch(/fix: .*LORAFA_FASHION_MNIST_DIR/);
    });

    test('(ii) --base with a wrong-shape fc1.weight: the key and both shapes', () => {
      const dir = join(tmp, 'base-bad-shape');
      mkdirSync(dir);
      const t = readSafetensors(join(MNIST_BASE, 'model.safetensors'));
      const tensors = new Map<string, TensorToWrite>([...t].map(([k, v]) => [k, { dtype: 'F32', shape: v.shape, data: v.data }]));
      tensors.set('fc1.weight', { dtype: 'F32', shape: [256, 700], data: new Float32Array(256 * 700) });
      writeSafetensors(join(dir, 'model.safetensors'), tensors);
      const msg = fails(['fashion-mnist', '--steps', '2', '--base', dir]);
      expect(msg).toContain(join(dir, 'model.safetensors'));
      expect(msg).toContain('"fc1.weight"');
      expect(msg).toContain('[256,700]');
      expect(msg).toContain('[256,784]');
    });

    test('(iii) --init-adapter exported at another rank: names r and both values', () => {
      const r = lorafa(['fashion-mnist', '--rank', '4', '--steps', '1', '--out', rank4]);
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(readFileSync(join(rank4, 'adapter', 'adapter_config.json'), 'utf8')).r).toBe(4);
      const msg = fails(['fashion-mnist', '--rank', '8', '--steps', '2', '--init-adapter', join(rank4, 'adapter')]);
      expect(msg).toContain(join(rank4, 'adapter'));
      expect(msg).toMatch(/\br 4\b.*\b8\b/);
      expect(msg).toMatch(/fix: .*--rank 4/);
    });

    test('(iv) --base pointing at a directory without model.safetensors', () => {
      const dir = join(tmp, 'base-empty');
      mkdirSync(dir);
      const msg = fails(['fashion-mnist', '--steps', '2', '--base', dir]);
      expect(msg).toContain(`lorafa: ${dir}: holds neither model.safetensors nor model.safetensors.index.json`);
      expect(msg).toMatch(/fix: pass --base a folder \(or file\) whose model\.safetensors holds mlp's weights/);
    });

    test('(v) an unknown preset (and no such file) lists the presets; a fresh --out is not even created', () => {
      const msg = fails(['fashion-mnst', '--steps', '2']);
      expect(msg).toMatch(/fashion-mnst: no model file, checkpoint folder or preset of that name/);
      expect(msg).toMatch(/fix: pass a model file \(\.ts\), a Hugging Face checkpoint folder, or one of the presets: mnist, fashion-mnist, brown, email, spam/);
      const fresh = join(tmp, 'never');
      const r = lorafa(['fashion-mnst', '--out', fresh]);
      expect(r.status).toBe(1);
      expect(existsSync(fresh)).toBe(false);
    });

    test('(vi) --grad-correction with --mode lora', () => {
      const msg = fails(['fashion-mnist', '--steps', '2', '--mode', 'lora', '--grad-correction']);
      expect(msg).toMatch(/--grad-correction: .*mode is lora/);
      expect(msg).toMatch(/fix: use --mode lora-fa/);
    });
  });
});
