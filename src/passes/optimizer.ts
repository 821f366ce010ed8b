// The optimizer step as IR: appended to the joint graph so its state and temporaries are planned
// like everything else.
//
// 1. For each `grad.<p>` output, emit the update of p (phase 'update') from the gradient, p and
//    the optimizer state (persistent tensors `optim.<slot>.<p>`, zero-initialised).
// 2. Record write-backs (`updates`): p ← p', and each state slot ← its new value. On a GPU they
//    happen in place; the memory plan aliases each new value to its target.
// 3. Step-dependent scalars are data inputs the trainer feeds every step: `optim.lr` and, for
//    AdamW, `optim.bias_correction1` = 1/(1−β1^t) and `optim.bias_correction2` = 1/(1−β2^t).
// 4. The gradients stop being outputs: nothing reads them after the update, so the planner frees
//    each as soon as its update has run.
import { Builder } from '../ir/builder.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Graph, Update, Value } from '../ir/types.ts';
import { gradName } from './autodiff.ts';

export type OptimizerOptions =
  | {
      readonly kind: 'sgd';
      readonly momentum?: number;
      /** L2 penalty added to the gradient, as torch.optim.SGD. */
      readonly weightDecay?: number;
    }
  | {
      readonly kind: 'adamw';
      readonly beta1?: number;
      readonly beta2?: number;
      readonly eps?: number;
      /** Decoupled weight decay, as torch.optim.AdamW (default 0.01). */
      readonly weightDecay?: number;
    };

export const OPTIMIZERS = ['sgd', 'adamw'] as const;

export const LR_INPUT = 'optim.lr';
export const BC1_INPUT = 'optim.bias_correction1';
export const BC2_INPUT = 'optim.bias_correction2';
/** Gradient accumulation (grad-accum.ts): 1 on the first micro-step of an optimizer step, else 0. */
export const ACCUM_FIRST_INPUT = 'optim.accum_first';
/** Gradient accumulation: 1/K, the weight of each of the K micro-batch gradients in their mean. */
export const GRAD_SCALE_INPUT = 'optim.grad_scale';

export function stateName(slot: 'm' | 'v' | 'momentum', param: string): string {
  return `optim.${slot}.${param}`;
}

/** Rejects what torch.optim rejects (and an unknown kind), so a typo is not trained with silently. */
export function checkOptimizer(opts: OptimizerOptions): void {
  const bad = (problem: string, fix: string) => {
    throw new LorafaError('optimizer', problem, fix);
  };
  const kind = (opts as { kind?: unknown }).kind;
  if (kind !== 'sgd' && kind !== 'adamw') bad(`unknown optimizer "${String(kind)}"`, `use one of: ${OPTIMIZERS.join(', ')}`);
  const nonNegative = (name: string, v: number | undefined) => {
    if (v !== undefined && !(Number.isFinite(v) && v >= 0)) bad(`${name} must be a finite number ≥ 0, got ${v}`, `pass ${name} ≥ 0 or leave it out`);
  };
  nonNegative('weightDecay', opts.weightDecay);
  if (opts.kind === 'sgd') {
    nonNegative('momentum', opts.momentum);
  } else {
    for (const [name, v] of [['beta1', opts.beta1], ['beta2', opts.beta2]] as const) {
      if (v !== undefined && !(v >= 0 && v < 1)) bad(`${name} must be in [0, 1), got ${v}`, 'use e.g. beta1 = 0.9, beta2 = 0.999');
    }
    nonNegative('eps', opts.eps);
  }
}

/** The values the trainer feeds each step (1-based step t). */
export function optimizerFeeds(opts: OptimizerOptions, lr: number, t: number): Record<string, number[]> {
  checkOptimizer(opts);
  if (!(Number.isInteger(t) && t >= 1)) throw new LorafaError('optimizer', `optimizer steps count from 1, got ${t}`, 'pass the 1-based step number t');
  if (!(Number.isFinite(lr) && lr >= 0)) throw new LorafaError('optimizer', `learning rate must be a finite number ≥ 0, got ${lr}`);
  if (opts.kind === 'sgd') return { [LR_INPUT]: [lr] };
  const b1 = opts.beta1 ?? 0.9;
  const b2 = opts.beta2 ?? 0.999;
  return { [LR_INPUT]: [lr], [BC1_INPUT]: [1 / (1 - b1 ** t)], [BC2_INPUT]: [1 / (1 - b2 ** t)] };
}

/** The persistent running sum of `param`'s micro-batch gradients. */
export function accumulatorName(param: string): string {
  return `optim.grad_acc.${param}`;
}

/**
 * The accumulation feeds of micro-step j (0-based) of K. Only the last micro-step (j = K − 1)
 * updates: pass `{ update: j === K - 1 }` to StepRunner.step and referenceStep. Feed them with
 * optimizerFeeds(…, t) of the optimizer step t they belong to. Under loss scaling pass the scale
 * S too: grad_scale is then 1/(K·S), the mean and the unscale in one multiply.
 */
export function accumFeeds(j: number, K: number, lossScale = 1): Record<string, number[]> {
  if (!(Number.isInteger(K) && K >= 1)) throw new LorafaError('--grad-accum', `the number of micro-batches per optimizer step must be a whole number ≥ 1, got ${K}`, 'pass e.g. --grad-accum 4');
  if (!(Number.isInteger(j) && j >= 0 && j < K)) throw new LorafaError('--grad-accum', `micro-step ${j} is not one of 0 … ${K - 1}`, 'count micro-steps from 0 within each optimizer step');
  // Under loss scaling the mean's weight also unscales the gradients (loss-scale.ts).
  return { [ACCUM_FIRST_INPUT]: [j === 0 ? 1 : 0], [GRAD_SCALE_INPUT]: [1 / (K * lossScale)] };
}

export interface OptimizerReport {
  readonly kind: OptimizerOptions['kind'];
  readonly params: readonly string[];
  readonly stateTensors: number;
}

export function applyOptimizer(g: Graph, opts: OptimizerOptions): { graph: Graph; report: OptimizerReport } {
  checkOptimizer(opts);
  const trainable = g.params.filter((p) => p.trainable);
  const missing = trainable.filter((p) => !g.outputs[gradName(p.value.name)]);
  if (missing.length) {
    throw new LorafaError(g.file ?? g.name, `no gradient for ${missing.map((p) => p.value.name).join(', ')}`, 'run autodiff before the optimizer pass');
  }
  const b = Builder.extending(g, 'update');
  const updates: Update[] = [];
  const inputs = [...g.inputs];
  const scalarInput = (name: string): Value => {
    const v = b.input(name, []);
    inputs.push({ value: v });
    return v;
  };
  const lr = scalarInput(LR_INPUT);
  const [bc1, bc2] = opts.kind === 'adamw' ? [scalarInput(BC1_INPUT), scalarInput(BC2_INPUT)] : [];
  let stateTensors = 0;
  for (const p of trainable) {
    const name = p.value.name;
    const grad = g.outputs[gradName(name)];
    const state = (slot: 'm' | 'v' | 'momentum') => {
      stateTensors++;
      // Outside the `step.<p>` name scope: the state is named optim.<slot>.<p>, not step.<p>.optim.….
      return b.on(p.src, '', () =>
        b.param(stateName(slot, name), p.value.type.shape, { init: { kind: 'zeros' }, trainable: false, role: 'optimizer_state' }),
      );
    };
    b.on(p.src, `step.${name}`, () => {
      const c = (x: number) => b.scalar(x);
      if (opts.kind === 'sgd') {
        const wd = opts.weightDecay ?? 0;
        let d = wd ? b.add(grad, b.mul(p.value, c(wd))) : grad;
        const mu = opts.momentum ?? 0;
        if (mu) {
          // torch: buf ← μ·buf + d (buf starts as d on step 1, the same as from zeros)
          const buf = state('momentum');
          d = b.add(b.mul(buf, c(mu)), d);
          updates.push({ target: buf.name, value: d });
        }
        updates.push({ target: name, value: b.sub(p.value, b.mul(d, lr)) });
      } else {
        const b1 = opts.beta1 ?? 0.9;
        const b2 = opts.beta2 ?? 0.999;
        const m = state('m');
        const v = state('v');
        const m1 = b.add(b.mul(m, c(b1)), b.mul(grad, c(1 - b1)));
        const v1 = b.add(b.mul(v, c(b2)), b.mul(b.mul(grad, grad), c(1 - b2)));
        let u = b.div(b.mul(m1, bc1!), b.add(b.sqrt(b.mul(v1, bc2!)), c(opts.eps ?? 1e-8)));
        const wd = opts.weightDecay ?? 0.01;
        if (wd) u = b.add(u, b.mul(p.value, c(wd)));
        updates.push({ target: m.name, value: m1 }, { target: v.name, value: v1 }, { target: name, value: b.sub(p.value, b.mul(u, lr)) });
      }
    });
  }
  const added = b.takeAdditions();
  const outputs = Object.fromEntries(Object.entries(g.outputs).filter(([k]) => !k.startsWith('grad.')));
  return {
    graph: {
      ...g,
      inputs,
      params: [...g.params, ...added.params],
      nodes: [...g.nodes, ...added.nodes],
      outputs,
      updates: [...g.updates, ...updates],
      nextId: added.nextId,
    },
    report: { kind: opts.kind, params: trainable.map((p) => p.value.name), stateTensors },
  };
}
