// Gradient accumulation: K micro-batches of b rows per optimizer step, exactly one step on K·b
// rows with the activations of b. The loss is a mean over the batch, so the big batch's gradient
// is the mean of the K micro-batch gradients. Runs on the joint graph, before the optimizer pass.
//
// 1. For each trainable p (each `grad.<p>` output g): a persistent accumulator
//    `optim.grad_acc.<p>` (zeros, not trainable, role grad_accumulator), and, once, two scalar
//    data inputs the trainer feeds every micro-step: `optim.accum_first` (1 on the first
//    micro-step of an optimizer step, else 0) and `optim.grad_scale` (1/K); see accumFeeds.
// 2. Phase 'accumulate', run on every micro-step: acc′ = where(first, g, acc + g), written back
//    to the accumulator (an `updates` entry, in place like p ← p′). `where` selects: whatever the
//    accumulator held (the last step's sum, a NaN, zeros after a resume) never reaches acc′.
// 3. Phase 'update', run on the last micro-step only: ĝ = acc′·scale becomes `grad.<p>`, so the
//    optimizer pass reads the mean gradient and is otherwise unchanged.
//
// Memory: acc + g and acc′ are computed in place in the accumulator (memory-plan.ts), and g dies
// at the `where` as ĝ is born, so the plan grows by the accumulators and the two scalars only.
import { Builder } from '../ir/builder.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Graph, Update } from '../ir/types.ts';
import { gradName } from './autodiff.ts';
import { ACCUM_FIRST_INPUT, accumulatorName, GRAD_SCALE_INPUT } from './optimizer.ts';

export interface GradAccumReport {
  /** The parameters whose gradients accumulate (every trainable one). */
  readonly params: readonly string[];
  /** Their accumulators, `optim.grad_acc.<p>`. */
  readonly accumulators: readonly string[];
}

export function applyGradAccum(g: Graph): { graph: Graph; report: GradAccumReport } {
  const trainable = g.params.filter((p) => p.trainable);
  const missing = trainable.filter((p) => !g.outputs[gradName(p.value.name)]);
  if (missing.length) {
    throw new LorafaError(g.file ?? g.name, `no gradient for ${missing.map((p) => p.value.name).join(', ')}`, 'run autodiff before gradient accumulation');
  }
  const b = Builder.extending(g, 'accumulate');
  const first = b.input(ACCUM_FIRST_INPUT, []);
  const scale = b.input(GRAD_SCALE_INPUT, []);
  const outputs = { ...g.outputs };
  const updates: Update[] = [];
  // All accumulations, then all scalings: one phase boundary in the printed IR.
  const sums = trainable.map((p) => {
    const name = p.value.name;
    const grad = g.outputs[gradName(name)];
    const acc = b.on(p.src, '', () => b.param(accumulatorName(name), p.value.type.shape, { init: { kind: 'zeros' }, trainable: false, role: 'grad_accumulator' }));
    const next = b.on(p.src, `accum.${name}`, () => b.where(first, grad, b.add(acc, grad)));
    updates.push({ target: acc.name, value: next });
    return next;
  });
  b.phase = 'update';
  trainable.forEach((p, i) => {
    outputs[gradName(p.value.name)] = b.on(p.src, `accum.${p.value.name}`, () => b.emit('mul', [sums[i], scale], {}, 'mean'));
  });
  const added = b.takeAdditions();
  return {
    graph: {
      ...g,
      inputs: [...g.inputs, { value: first }, { value: scale }],
      params: [...g.params, ...added.params],
      nodes: [...g.nodes, ...added.nodes],
      outputs,
      updates: [...g.updates, ...updates],
      nextId: added.nextId,
    },
    report: { params: trainable.map((p) => p.value.name), accumulators: trainable.map((p) => accumulatorName(p.value.name)) },
  };
}
