// LoRA-FA's gradient correction (src/passes/grad-correction.ts): gB ← (1/s²)·(AᵀA)⁻¹·gB.
// - gramInverse really inverts AᵀA (scaled), and refuses a rank-deficient A;
// - on whole toy models the corrected grad.B equals (1/s²)·(AᵀA)⁻¹·gB solved here independently
//   (Cholesky on AᵀA, not the library's Gauss–Jordan), every other output is unchanged, rsLoRA too;
// - the option is refused outside lora-fa; the step graph holds one frozen `lora_gc` buffer per
//   adapter; SGD and AdamW update B from the corrected gradient.
import fc from 'fast-check';
import { beforeAll, describe, expect, test } from 'vitest';
import type { LoadedModel } from '../src/model/load.ts';
import { LorafaError } from '../src/ir/errors.ts';
import type { Tensor } from '../src/ir/shape.ts';
import type { Graph, LoraAdapter } from '../src/ir/types.ts';
import { compileTraining, type Compiled } from '../src/passes/compile.ts';
import { applyGradCorrection } from '../src/passes/grad-correction.ts';
import type { LoraOptions } from '../src/passes/lora.ts';
import { optimizerFeeds, stateName, type OptimizerOptions } from '../src/passes/optimizer.ts';
import { gramInverse, rng } from '../src/runtime/init.ts';
import { referenceStep, runReference } from '../src/runtime/reference.ts';
import { feedsFor, intBoundsFor, paramsWithRandomB, property, toyConfigName, toyModel } from './helpers.ts';

// ---------------------------------------------------------------------------------------------
// Independent linear algebra (row-major, float64)

/** AᵀA for A [d, r]. */
function gram(A: ArrayLike<number>, d: number, r: number): Float64Array {
  const m = new Float64Array(r * r);
  for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) for (let k = 0; k < d; k++) m[i * r + j] += A[k * r + i] * A[k * r + j];
  return m;
}

/** X with M·X = Y, M [r, r] symmetric positive definite (Cholesky: M = L·Lᵀ), Y [r, o]. */
function solveSpd(M: Float64Array, r: number, Y: ArrayLike<number>, o: number): Float64Array {
  const L = new Float64Array(r * r);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j <= i; j++) {
      let s = M[i * r + j];
      for (let k = 0; k < j; k++) s -= L[i * r + k] * L[j * r + k];
      L[i * r + j] = i === j ? Math.sqrt(s) : s / L[j * r + j];
    }
  }
  const X = new Float64Array(r * o);
  for (let c = 0; c < o; c++) {
    const z = new Float64Array(r);
    for (let i = 0; i < r; i++) {
      let s = Y[i * o + c];
      for (let k = 0; k < i; k++) s -= L[i * r + k] * z[k];
      z[i] = s / L[i * r + i];
    }
    for (let i = r - 1; i >= 0; i--) {
      let s = z[i];
      for (let k = i + 1; k < r; k++) s -= L[k * r + i] * X[k * o + c];
      X[i * o + c] = s / L[i * r + i];
    }
  }
  return X;
}

/** (1/s²)·(AᵀA)⁻¹·gB for adapter `a`, from the values actually used. */
function expectedCorrected(a: LoraAdapter, A: Tensor, gB: Tensor): Float64Array {
  const [d, r] = A.shape;
  const o = gB.shape[1];
  const X = solveSpd(gram(A.data, d, r), r, gB.data, o);
  return X.map((v) => v / (a.scale * a.scale));
}

/** max |x − y| ≤ tol·max(1, max |y|): a relative bound that does not blow up on tiny entries. */
function expectClose(x: ArrayLike<number>, y: ArrayLike<number>, tol: number, what: string) {
  expect(x.length, what).toBe(y.length);
  let err = 0;
  let mag = 0;
  for (let i = 0; i < y.length; i++) {
    err = Math.max(err, Math.abs(x[i] - y[i]));
    mag = Math.max(mag, Math.abs(y[i]));
  }
  expect(err, `${what}: max error ${err} against max magnitude ${mag}`).toBeLessThanOrEqual(tol * Math.max(1e-300, mag));
}

// ---------------------------------------------------------------------------------------------
// (a) gramInverse

describe('gramInverse', () => {
  test('(AᵀA)·G = scale·I for random full-rank A [d, r], d ≥ r', () => {
    property(
      'gramInverse inverts the scaled Gram matrix',
      fc.record({ r: fc.integer({ min: 1, max: 8 }), extra: fc.integer({ min: 0, max: 39 }), seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }), exp: fc.integer({ min: -6, max: 6 }) }),
      ({ r, extra, seed, exp }) => {
        const d = Math.min(40, r + extra);
        const u = rng(seed);
        const A = new Float64Array(d * r).map(() => 2 * u() - 1);
        const scale = 2 ** exp * 1.3;
        const G = gramInverse(A, d, r, scale);
        expect(G.length).toBe(r * r);
        const M = gram(A, d, r);
        for (let i = 0; i < r; i++) {
          for (let j = 0; j < r; j++) {
            let s = 0;
            for (let k = 0; k < r; k++) s += M[i * r + k] * G[k * r + j];
            const want = i === j ? scale : 0;
            if (!(Math.abs(s - want) <= 1e-9 * scale)) throw new Error(`(AᵀA·G)[${i},${j}] = ${s}, want ${want} (d ${d}, r ${r})`);
          }
        }
      },
    );
  });

  test('a known case: A = [[1,0],[0,2],[0,0]] → (AᵀA)⁻¹ = diag(1, 1/4)', () => {
    expect([...gramInverse([1, 0, 0, 2, 0, 0], 3, 2, 3)]).toEqual([3, 0, 0, 0.75]);
  });

  test('a rank-deficient A (a duplicate or a zero column) is a LorafaError that says singular', () => {
    property(
      'gramInverse refuses singular A',
      fc.record({ r: fc.integer({ min: 2, max: 8 }), extra: fc.integer({ min: 0, max: 30 }), seed: fc.nat(), zero: fc.boolean(), pick: fc.nat() }),
      ({ r, extra, seed, zero, pick }) => {
        const d = r + extra;
        const u = rng(seed);
        const A = new Float64Array(d * r).map(() => 2 * u() - 1);
        const c1 = pick % r;
        const c2 = (c1 + 1 + ((pick >> 3) % (r - 1))) % r;
        for (let k = 0; k < d; k++) A[k * r + c2] = zero ? 0 : A[k * r + c1];
        let err: unknown;
        try {
          gramInverse(A, d, r, 1, 'fc1.lora_A');
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(LorafaError);
        expect((err as LorafaError).where).toBe('fc1.lora_A');
        expect((err as LorafaError).message).toMatch(/singular/);
      },
    );
    // d < r: AᵀA has rank ≤ d < r.
    expect(() => gramInverse([1, 2, 3], 1, 3, 1)).toThrow(/singular/);
  });
});

// ---------------------------------------------------------------------------------------------
// (b) whole models, reference-run

interface Setup {
  readonly m: LoadedModel;
  readonly graph: Graph;
  readonly intBound: (input: string) => number;
}
const setups = new Map<string, Setup>();

beforeAll(async () => {
  for (const name of ['mlp', 'llama']) {
    const { model: m, graph } = await toyModel(name);
    setups.set(name, { m, graph, intBound: intBoundsFor(m.def.configs[toyConfigName(m.def)]) });
  }
});

function loraFor(s: Setup, extra: Partial<LoraOptions> = {}): LoraOptions {
  return { rank: 4, alpha: 8, targets: s.m.def.defaultTargets ?? [], modulesToSave: s.m.def.modulesToSave, ...extra };
}

const CASES = [
  { model: 'mlp', rslora: false },
  { model: 'llama', rslora: false },
  { model: 'mlp', rslora: true },
  { model: 'llama', rslora: true },
] as const;

describe('corrected grad.B on whole models (float64 reference)', () => {
  test.each(CASES)('$model (rslora $rslora): grad.B = (1/s²)(AᵀA)⁻¹·gB, everything else unchanged', ({ model, rslora }) => {
    const s = setups.get(model)!;
    const lora = loraFor(s, { rslora });
    const plain = compileTraining(s.graph, { mode: 'lora-fa', lora, verify: true });
    const gc = compileTraining(s.graph, { mode: 'lora-fa', lora, verify: true, gradCorrection: true });
    const adapters = gc.forward.adapters;
    expect(adapters.length).toBeGreaterThan(0);
    const wantScale = rslora ? lora.alpha / Math.sqrt(lora.rank) : lora.alpha / lora.rank;
    for (const a of adapters) expect(a.scale).toBe(wantScale);
    // The report names each B with its factor 1/s² (r/alpha)² — or r/alpha² under rsLoRA.
    expect(gc.reports.gradCorrection!.corrected.map((c) => [c.B, c.factor])).toEqual(adapters.map((a) => [a.B, 1 / (wantScale * wantScale)]));

    for (const seed of [1, 2]) {
      const params = paramsWithRandomB(plain.joint, seed);
      // No lora_gc given: runReference derives it from the A it uses.
      expect([...params.keys()].some((k) => k.endsWith('.lora_gc'))).toBe(false);
      const feeds = feedsFor(plain.joint, seed, s.intBound);
      const p = runReference(plain.joint, { feeds, params }).outputs;
      const q = runReference(gc.joint, { feeds, params }).outputs;
      expect(Object.keys(q).sort()).toEqual(Object.keys(p).sort());
      const corrected = new Set(adapters.map((a) => `grad.${a.B}`));
      for (const [k, v] of Object.entries(p)) {
        if (corrected.has(k)) continue;
        expect(q[k].data, k).toEqual(v.data);
      }
      for (const a of adapters) {
        const gB = p[`grad.${a.B}`];
        expect(gB.data.some((x) => Math.abs(x) > 1e-6), `grad.${a.B} is nonzero`).toBe(true);
        const want = expectedCorrected(a, params.get(a.A)!, gB);
        expectClose(q[`grad.${a.B}`].data, want, 1e-10, `grad.${a.B}`);
        // and the correction is not the identity here
        let diff = 0;
        for (let i = 0; i < want.length; i++) diff = Math.max(diff, Math.abs(want[i] - gB.data[i]));
        expect(diff).toBeGreaterThan(1e-3 * Math.max(...want.map(Math.abs)));
      }
    }
  });

  test('a given lora_gc value is used as given (not recomputed), and a derived one follows the A it is fed', () => {
    const s = setups.get('mlp')!;
    const lora = loraFor(s);
    const gc = compileTraining(s.graph, { mode: 'lora-fa', lora, gradCorrection: true });
    const plain = compileTraining(s.graph, { mode: 'lora-fa', lora });
    const feeds = feedsFor(gc.joint, 3, s.intBound);
    const params = paramsWithRandomB(plain.joint, 3);
    // Another A (seed 9's) fed in: the correction must use it, not the init's.
    const other = paramsWithRandomB(plain.joint, 9);
    const a = gc.forward.adapters[0];
    params.set(a.A, other.get(a.A)!);
    const gB = runReference(plain.joint, { feeds, params }).outputs[`grad.${a.B}`];
    const got = runReference(gc.joint, { feeds, params }).outputs[`grad.${a.B}`];
    expectClose(got.data, expectedCorrected(a, params.get(a.A)!, gB), 1e-10, 'derived from the fed A');
    // An explicit identity buffer turns the correction off for that adapter.
    const r = a.rank;
    const eye = new Float64Array(r * r).map((_, i) => (i % (r + 1) === 0 ? 1 : 0));
    const withEye = new Map(params).set(`${a.module}.lora_gc`, { shape: [r, r], data: eye });
    expect(runReference(gc.joint, { feeds, params: withEye }).outputs[`grad.${a.B}`].data).toEqual(gB.data);
  });
});

// ---------------------------------------------------------------------------------------------
// (c) refused outside lora-fa

describe('only under lora-fa', () => {
  test.each(['lora', 'full'] as const)('compileTraining(mode %s, gradCorrection) is a LorafaError', (mode) => {
    const s = setups.get('mlp')!;
    let err: unknown;
    try {
      compileTraining(s.graph, { mode, lora: loraFor(s), gradCorrection: true });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(LorafaError);
    expect((err as LorafaError).problem).toMatch(new RegExp(`gradient correction.*mode is ${mode}`));
    expect((err as LorafaError).fix).toMatch(/lora-fa/);
  });

  test('applyGradCorrection on a LoRA joint (A trainable) or a graph without adapters is a LorafaError', () => {
    const s = setups.get('mlp')!;
    const lora = compileTraining(s.graph, { mode: 'lora', lora: loraFor(s) });
    expect(() => applyGradCorrection(lora.joint)).toThrow(LorafaError);
    expect(() => applyGradCorrection(lora.joint)).toThrow(/A is frozen/);
    const full = compileTraining(s.graph, { mode: 'full' });
    expect(() => applyGradCorrection(full.joint)).toThrow(/needs LoRA adapters/);
  });
});

// ---------------------------------------------------------------------------------------------
// (d) the step graph's buffers, (e) the optimizer sees the corrected gradient

function stepOf(s: Setup, optimizer: OptimizerOptions, gradCorrection: boolean): Compiled {
  return compileTraining(s.graph, { mode: 'lora-fa', lora: loraFor(s), verify: true, optimizer, gradCorrection });
}

describe('the training step', () => {
  test.each(['mlp', 'llama'])('%s: one frozen lora_gc buffer per adapter, [r, r], gram_inverse of its A; no optimizer state for it', (model) => {
    const s = setups.get(model)!;
    for (const optimizer of [{ kind: 'adamw' }, { kind: 'sgd' }] as const) {
      const c = stepOf(s, optimizer, true);
      const step = c.step!;
      const gcs = step.params.filter((p) => p.value.name.endsWith('.lora_gc'));
      const adapters = c.forward.adapters;
      expect(gcs.map((p) => p.value.name).sort()).toEqual(adapters.map((a) => `${a.module}.lora_gc`).sort());
      for (const a of adapters) {
        const p = gcs.find((q) => q.value.name === `${a.module}.lora_gc`)!;
        expect(p.trainable).toBe(false);
        expect(p.role).toBe('buffer');
        expect(p.value.type.shape).toEqual([a.rank, a.rank]);
        expect(p.init).toEqual({ kind: 'gram_inverse', of: a.A, scale: 1 / (a.scale * a.scale) });
      }
      expect(step.updates.some((u) => u.target.endsWith('.lora_gc'))).toBe(false);
      expect(step.params.some((p) => p.value.name.startsWith('optim.') && p.value.name.endsWith('.lora_gc'))).toBe(false);
      // Without the option, none.
      expect(stepOf(s, optimizer, false).step!.params.some((p) => p.value.name.endsWith('.lora_gc'))).toBe(false);
    }
  });

  /**
   * One step with the correction (float64 reference) from seeded params and feeds, and the
   * uncorrected LoRA-FA gradients of the same point.
   */
  const correctedStep = (s: Setup, opt: OptimizerOptions, lr: number, seed: number) => {
    const c = stepOf(s, opt, true);
    const plain = compileTraining(s.graph, { mode: 'lora-fa', lora: loraFor(s) });
    const params = paramsWithRandomB(plain.joint, seed);
    const feeds = feedsFor(plain.joint, seed, s.intBound);
    const gB = runReference(plain.joint, { feeds, params }).outputs;
    const r = referenceStep(c.step!, { feeds: { ...feeds, ...optimizerFeeds(opt, lr, 1) }, params });
    return { c, params, gB, r };
  };

  test.each(['mlp', 'llama'])('%s, SGD: B′ = B − lr·(1/s²)(AᵀA)⁻¹·gB', (model) => {
    const s = setups.get(model)!;
    const opt = { kind: 'sgd' } as const;
    const lr = 0.05;
    const { c, params, gB, r } = correctedStep(s, opt, lr, 5);
    for (const a of c.forward.adapters) {
      const B = params.get(a.B)!.data;
      const g = expectedCorrected(a, params.get(a.A)!, gB[`grad.${a.B}`]);
      const want = B.map((b, i) => b - lr * g[i]);
      expectClose(r.params.get(a.B)!.data, want, 1e-12, `${a.B} after one SGD step`);
      // A and W untouched.
      expect(r.params.get(a.A)!.data).toEqual(params.get(a.A)!.data);
    }
  });

  test.each(['mlp', 'llama'])('%s, AdamW: m′ = (1−β1)·g, v′ = (1−β2)·g², B′ from them, with g the corrected gradient', (model) => {
    const s = setups.get(model)!;
    const [b1, b2, eps, wd, lr] = [0.8, 0.95, 1e-3, 0.1, 0.01];
    const opt = { kind: 'adamw', beta1: b1, beta2: b2, eps, weightDecay: wd } as const;
    const { c, params, gB, r } = correctedStep(s, opt, lr, 6);
    const bc1 = 1 / (1 - b1);
    const bc2 = 1 / (1 - b2);
    const adam = (B: Float64Array, g: Float64Array) => B.map((b, i) => b - lr * (((1 - b1) * g[i] * bc1) / (Math.sqrt((1 - b2) * g[i] * g[i] * bc2) + eps) + wd * b));
    for (const a of c.forward.adapters) {
      const B = params.get(a.B)!.data;
      const raw = gB[`grad.${a.B}`].data;
      const g = expectedCorrected(a, params.get(a.A)!, gB[`grad.${a.B}`]);
      expectClose(r.params.get(stateName('m', a.B))!.data, g.map((x) => (1 - b1) * x), 1e-10, `m of ${a.B}`);
      expectClose(r.params.get(stateName('v', a.B))!.data, g.map((x) => (1 - b2) * x * x), 1e-9, `v of ${a.B}`);
      const want = adam(B, g);
      expectClose(r.params.get(a.B)!.data, want, 1e-12, `${a.B} after one AdamW step`);
      // The uncorrected gradient would have given a visibly different B′ (so the check above bites).
      const wrong = adam(B, Float64Array.from(raw));
      let diff = 0;
      for (let i = 0; i < want.length; i++) diff = Math.max(diff, Math.abs(want[i] - wrong[i]));
      expect(diff).toBeGreaterThan(1e-5);
    }
  });
});
