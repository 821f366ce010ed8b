// The optimizer step as IR, against hand-written float64 optimizers that follow torch.optim:
// - SGD: L2 weight decay added to the gradient, momentum buffer buf ← μ·buf + d (buf = d on
//   step 1), p ← p − lr·buf;
// - AdamW: decoupled weight decay p ← p·(1 − lr·wd), m and v moving averages, bias correction
//   1 − β^t, p ← p − (lr / bc1)·m / (√v / √bc2 + eps).
// For the toy MLP and the toy llama in every mode, 5 steps of `referenceStep` on the compiled
// `step` graph (with a learning-rate schedule fed each step) must track the hand-written optimizer
// applied to the gradients `runReference` computes on the joint graph, parameters and state alike.
import { beforeAll, describe, expect, test } from 'vitest';
import type { LoadedModel } from '../src/model/load.ts';
import type { Tensor } from '../src/ir/shape.ts';
import type { Graph } from '../src/ir/types.ts';
import { compileTraining, MODES, type Compiled, type Mode } from '../src/passes/compile.ts';
import { optimizerFeeds, stateName, type OptimizerOptions } from '../src/passes/optimizer.ts';
import { referenceStep, runReference } from '../src/runtime/reference.ts';
import { feedsFor, intBoundsFor, paramsWithRandomB, toyModel } from './helpers.ts';

// ---------------------------------------------------------------------------------------------
// hand-written optimizers (plain JS, float64, torch.optim semantics)

interface HandOptimizer {
  /** One step on every trainable parameter, in place on `params` and the optimizer's own state. */
  step(params: Map<string, Float64Array>, grads: Map<string, Float64Array>, lr: number): void;
  /** The state tensors, under the names the IR gives them. */
  state(): Map<string, Float64Array>;
}

function handSgd(momentum = 0, weightDecay = 0): HandOptimizer {
  const bufs = new Map<string, Float64Array>();
  return {
    step(params, grads, lr) {
      for (const [name, g] of grads) {
        const p = params.get(name)!;
        const d = g.map((gi, i) => (weightDecay !== 0 ? gi + weightDecay * p[i] : gi));
        let dir = d;
        if (momentum !== 0) {
          const buf = bufs.get(name);
          // torch: the first step clones d into the buffer; later, buf ← μ·buf + (1 − dampening)·d.
          const next = buf ? buf.map((b, i) => momentum * b + d[i]) : Float64Array.from(d);
          bufs.set(name, next);
          dir = next;
        }
        for (let i = 0; i < p.length; i++) p[i] -= lr * dir[i];
      }
    },
    state: () => new Map([...bufs].map(([k, v]) => [stateName('momentum', k), v])),
  };
}

function handAdamW(beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 0.01): HandOptimizer {
  const m = new Map<string, Float64Array>();
  const v = new Map<string, Float64Array>();
  let t = 0;
  return {
    step(params, grads, lr) {
      t++;
      for (const [name, g] of grads) {
        const p = params.get(name)!;
        const mt = m.get(name) ?? new Float64Array(g.length);
        const vt = v.get(name) ?? new Float64Array(g.length);
        const bc1 = 1 - beta1 ** t;
        const bc2 = 1 - beta2 ** t;
        const stepSize = lr / bc1;
        for (let i = 0; i < p.length; i++) {
          p[i] *= 1 - lr * weightDecay;
          mt[i] = beta1 * mt[i] + (1 - beta1) * g[i];
          vt[i] = beta2 * vt[i] + (1 - beta2) * g[i] * g[i];
          const denom = Math.sqrt(vt[i]) / Math.sqrt(bc2) + eps;
          p[i] -= (stepSize * mt[i]) / denom;
        }
        m.set(name, mt);
        v.set(name, vt);
      }
    },
    state: () =>
      new Map([
        ...[...m].map(([k, x]) => [stateName('m', k), x] as const),
        ...[...v].map(([k, x]) => [stateName('v', k), x] as const),
      ]),
  };
}

interface OptCase {
  readonly label: string;
  readonly opts: OptimizerOptions;
  readonly hand: () => HandOptimizer;
  readonly lr: number;
}

const OPT_CASES: readonly OptCase[] = [
  { label: 'sgd', opts: { kind: 'sgd' }, hand: () => handSgd(), lr: 0.1 },
  { label: 'sgd momentum=0.9 weight_decay=0.05', opts: { kind: 'sgd', momentum: 0.9, weightDecay: 0.05 }, hand: () => handSgd(0.9, 0.05), lr: 0.05 },
  { label: 'adamw (defaults)', opts: { kind: 'adamw' }, hand: () => handAdamW(), lr: 0.01 },
  {
    label: 'adamw beta1=0.8 beta2=0.95 eps=1e-6 weight_decay=0.1',
    opts: { kind: 'adamw', beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.1 },
    hand: () => handAdamW(0.8, 0.95, 1e-6, 0.1),
    lr: 0.02,
  },
];

/** A learning-rate schedule, so a step graph that ignored the fed lr would be caught. */
const lrAt = (base: number, t: number) => base * (1 - 0.15 * (t - 1));

const STEPS = 5;

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string) {
  expect(actual.length, what).toBe(expected.length);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i] - expected[i]) / (1e-12 + 1e-9 * Math.max(Math.abs(actual[i]), Math.abs(expected[i])));
    if (!(err <= worst)) {
      worst = err;
      at = i;
    }
  }
  expect(worst <= 1, `${what}[${at}]: IR ${actual[at]} vs hand-written ${expected[at]}`).toBe(true);
}

const copyParams = (m: ReadonlyMap<string, Tensor>): Map<string, Tensor> => new Map([...m].map(([k, t]) => [k, { shape: t.shape, data: Float64Array.from(t.data) }]));

// ---------------------------------------------------------------------------------------------

const TOYS = ['mlp', 'llama'] as const;

describe.each(TOYS)('toy %s', (name) => {
  let model: LoadedModel;
  let graph: Graph;
  beforeAll(async () => {
    ({ model, graph } = await toyModel(name, 'toy'));
  });

  const compile = (mode: Mode, opts: OptimizerOptions): Compiled =>
    compileTraining(graph, {
      mode,
      lora: { rank: 2, alpha: 4, targets: model.def.defaultTargets ?? [], modulesToSave: model.def.modulesToSave },
      optimizer: opts,
      verify: true,
    });

  describe.each(MODES)('mode %s', (mode) => {
    test.each(OPT_CASES)('$label: 5 steps of the step graph equal the hand-written optimizer on the joint graph\'s gradients', (oc) => {
      const c = compile(mode, oc.opts);
      const step = c.step!;
      const trainable = c.joint.params.filter((p) => p.trainable).map((p) => p.value.name);
      expect(trainable.length).toBeGreaterThan(0);
      const data = feedsFor(c.joint, 11, intBoundsFor(model.def.configs.toy));
      // Random B (not zeros), so dA ≠ 0 under LoRA and every path of the update is exercised.
      const init = paramsWithRandomB(c.forward, 5);

      let ir = copyParams(init);
      const hand = new Map([...init].map(([k, t]) => [k, Float64Array.from(t.data)]));
      const opt = oc.hand();
      for (let t = 1; t <= STEPS; t++) {
        const lr = lrAt(oc.lr, t);
        // Gradients at the hand-written optimizer's current parameters, from the joint graph.
        const handTensors = new Map([...hand].map(([k, d]) => [k, { shape: init.get(k)!.shape, data: d }]));
        const joint = runReference(c.joint, { feeds: data, params: handTensors }).outputs;
        const grads = new Map(trainable.map((p) => [p, Float64Array.from(joint[`grad.${p}`].data)]));

        const r = referenceStep(step, { feeds: { ...data, ...optimizerFeeds(oc.opts, lr, t) }, params: ir });
        // Same parameters going in, same forward: the step graph's loss is the joint graph's.
        if (t === 1) expect(r.outputs.loss.data[0]).toBe(joint.loss.data[0]);
        else expect(Math.abs(r.outputs.loss.data[0] - joint.loss.data[0])).toBeLessThanOrEqual(1e-9 * Math.abs(joint.loss.data[0]));
        opt.step(hand, grads, lr);
        ir = r.params;

        for (const [k, want] of hand) expectClose(ir.get(k)!.data, want, `step ${t}: ${k}`);
        const state = opt.state();
        for (const [k, want] of state) {
          expect(ir.has(k), `step ${t}: state ${k}`).toBe(true);
          expectClose(ir.get(k)!.data, want, `step ${t}: ${k}`);
        }
        // Nothing else persists: the IR's parameters are the model's plus exactly this state.
        expect([...ir.keys()].sort()).toEqual([...hand.keys(), ...state.keys()].sort());
      }
      // The comparison has teeth: every trainable parameter moved, by far more than the tolerance.
      for (const p of trainable) {
        const a = ir.get(p)!.data;
        const b = init.get(p)!.data;
        expect(Math.max(...a.map((x, i) => Math.abs(x - b[i]))), `${p} moved`).toBeGreaterThan(1e-4);
      }
    });
  });

  test('LoRA-FA: after 5 AdamW steps every A and every W is bit-for-bit unchanged, every B moved', () => {
    const opts: OptimizerOptions = { kind: 'adamw', weightDecay: 0.1 };
    const c = compile('lora-fa', opts);
    const data = feedsFor(c.joint, 2, intBoundsFor(model.def.configs.toy));
    const init = paramsWithRandomB(c.forward, 9);
    let params = copyParams(init);
    for (let t = 1; t <= STEPS; t++) params = referenceStep(c.step!, { feeds: { ...data, ...optimizerFeeds(opts, 0.05, t) }, params }).params;
    const frozen = c.forward.params.filter((p) => !p.trainable);
    expect(frozen.filter((p) => p.role === 'lora_A').length).toBe(c.forward.adapters.length);
    for (const p of frozen) {
      const before = init.get(p.value.name)!.data;
      const after = params.get(p.value.name)!.data;
      expect(after.every((x, i) => Object.is(x, before[i])), `${p.value.name} (${p.role}) changed`).toBe(true);
    }
    // No write-back targets a frozen tensor at all.
    const frozenNames = new Set(frozen.map((p) => p.value.name));
    expect(c.step!.updates.filter((u) => frozenNames.has(u.target)).map((u) => u.target)).toEqual([]);
    for (const a of c.forward.adapters) {
      const before = init.get(a.B)!.data;
      const after = params.get(a.B)!.data;
      expect(after.some((x, i) => x !== before[i]), `${a.B} moved`).toBe(true);
    }
  });

  test.each([
    ['adamw', { kind: 'adamw' }, ['m', 'v']],
    ['sgd momentum', { kind: 'sgd', momentum: 0.9 }, ['momentum']],
    ['plain sgd', { kind: 'sgd', weightDecay: 0.1 }, []],
  ] as const)('%s: state tensors exist exactly for the trainable parameters; write-backs exactly for them and their state', (_, opts, slots) => {
    for (const mode of MODES) {
      const c = compile(mode, opts);
      const step = c.step!;
      const trainable = c.joint.params.filter((p) => p.trainable);
      const expectedState = trainable.flatMap((p) => slots.map((s) => stateName(s, p.value.name))).sort();
      const state = step.params.filter((p) => p.role === 'optimizer_state');
      expect(state.map((p) => p.value.name).sort(), mode).toEqual(expectedState);
      expect(step.params.filter((p) => /^optim\./.test(p.value.name)).length, mode).toBe(state.length);
      for (const s of state) {
        const owner = step.params.find((p) => p.value.name === s.value.name.replace(/^optim\.(m|v|momentum)\./, ''))!;
        expect(owner?.trainable, s.value.name).toBe(true);
        expect(s.value.type, s.value.name).toEqual({ dtype: 'f32', shape: owner.value.type.shape });
        expect(s.trainable).toBe(false);
        expect(s.init).toEqual({ kind: 'zeros' });
      }
      expect(step.updates.map((u) => u.target).sort(), mode).toEqual([...trainable.map((p) => p.value.name), ...expectedState].sort());
      for (const u of step.updates) {
        const target = step.params.find((p) => p.value.name === u.target)!;
        expect(u.value.type, u.target).toEqual(target.value.type);
      }
      // The data inputs the trainer feeds each step.
      const optimInputs = step.inputs.map((i) => i.value.name).filter((n) => n.startsWith('optim.'));
      expect(optimInputs.sort()).toEqual(opts.kind === 'adamw' ? ['optim.bias_correction1', 'optim.bias_correction2', 'optim.lr'] : ['optim.lr']);
      expect(Object.keys(optimizerFeeds(opts, 0.1, 1)).sort()).toEqual(optimInputs);
    }
  });

  test('the gradients are not outputs of the step graph, but each is computed in it', () => {
    for (const mode of MODES) {
      const c = compile(mode, { kind: 'adamw' });
      const step = c.step!;
      expect(Object.keys(step.outputs), mode).toEqual(['loss']);
      const outIds = new Set(Object.values(step.outputs).map((v) => v.id));
      expect(c.gradients.size).toBe(c.joint.params.filter((p) => p.trainable).length);
      const produced = new Set(step.nodes.map((n) => n.out.id));
      for (const id of c.gradients) {
        expect(outIds.has(id), `gradient %${id} is an output`).toBe(false);
        expect(produced.has(id), `gradient %${id} is computed in step`).toBe(true);
      }
      // The joint graph (no optimizer) still exposes them, one per trainable parameter.
      expect(Object.keys(c.joint.outputs).filter((k) => k.startsWith('grad.')).length).toBe(c.gradients.size);
    }
  });
});

describe('bad optimizer input is a clear error', () => {
  test('optimizerFeeds: steps count from 1', () => {
    expect(() => optimizerFeeds({ kind: 'adamw' }, 0.01, 0)).toThrow(/optimizer steps count from 1, got 0/);
    expect(() => optimizerFeeds({ kind: 'sgd' }, 0.01, -3)).toThrow(/steps count from 1, got -3/);
    expect(() => optimizerFeeds({ kind: 'adamw' }, 0.01, Number.NaN)).toThrow(/steps count from 1, got NaN/);
    expect(() => optimizerFeeds({ kind: 'adamw' }, 0.01, 1.5)).toThrow(/steps count from 1, got 1\.5/);
  });

  test('optimizerFeeds: the bias corrections are 1/(1 − β^t), and lr must be a number ≥ 0', () => {
    const f = optimizerFeeds({ kind: 'adamw', beta1: 0.5, beta2: 0.75 }, 0.25, 2);
    expect(f).toEqual({ 'optim.lr': [0.25], 'optim.bias_correction1': [1 / 0.75], 'optim.bias_correction2': [1 / (1 - 0.5625)] });
    expect(() => optimizerFeeds({ kind: 'sgd' }, -0.1, 1)).toThrow(/learning rate must be a finite number ≥ 0, got -0\.1/);
    expect(() => optimizerFeeds({ kind: 'sgd' }, Number.POSITIVE_INFINITY, 1)).toThrow(/learning rate/);
  });

  const compileWith = async (opts: unknown) => {
    const { model, graph } = await toyModel('mlp', 'toy');
    return () =>
      compileTraining(graph, {
        mode: 'lora-fa',
        lora: { rank: 2, alpha: 4, targets: model.def.defaultTargets ?? [], modulesToSave: model.def.modulesToSave },
        optimizer: opts as OptimizerOptions,
      });
  };

  test.each([
    [{ kind: 'adam' }, /unknown optimizer "adam"[\s\S]*fix: use one of: sgd, adamw/],
    [{ kind: 'adamw', beta1: 1 }, /beta1 must be in \[0, 1\), got 1\b/],
    [{ kind: 'adamw', beta2: -0.1 }, /beta2 must be in \[0, 1\), got -0\.1/],
    [{ kind: 'adamw', eps: -1e-8 }, /eps must be a finite number ≥ 0, got -1e-8/],
    [{ kind: 'adamw', weightDecay: Number.NaN }, /weightDecay must be a finite number ≥ 0, got NaN/],
    [{ kind: 'sgd', momentum: -0.9 }, /momentum must be a finite number ≥ 0, got -0\.9/],
    [{ kind: 'sgd', weightDecay: -1 }, /weightDecay must be a finite number ≥ 0, got -1/],
  ])('compileTraining rejects %o', async (opts, message) => {
    expect(await compileWith(opts)).toThrow(message);
  });

  test('optimizerFeeds rejects the same bad options (beta1 = 1 would feed 1/0)', () => {
    expect(() => optimizerFeeds({ kind: 'adamw', beta1: 1 }, 0.01, 1)).toThrow(/beta1 must be in \[0, 1\)/);
    expect(() => optimizerFeeds({ kind: 'nadam' } as unknown as OptimizerOptions, 0.01, 1)).toThrow(/unknown optimizer "nadam"/);
  });
});
