// Loss scaling (as torch.cuda.amp.GradScaler does it) in the IR: half-precision cotangents are
// kept out of f16's underflow by scaling the loss, and a step whose scaled gradients overflowed
// is skipped on the GPU, without reading anything back before the update.
//
// 1. autodiff (its `seed` option) seeds the loss's cotangent with the fed scalar
//    `optim.loss_scale` S instead of 1: every cotangent, and so every gradient, is S times the
//    true one.
// 2. unscaleGradients, before the optimizer (phase 'update', so f32 under --dtype f16): each
//    `grad.<p>` becomes ĝ = g · `optim.inv_loss_scale` (1/S). With gradient accumulation nothing
//    is added: the mean ĝ = acc′ · `optim.grad_scale` already multiplies every gradient, and the
//    trainer feeds grad_scale = 1/(K·S) (accumFeeds(j, K, S)).
// 3. It also counts the non-finite elements over every ĝ (count_nonfinite per gradient, summed):
//    the scalar output `overflow`. ĝ is what the optimizer reads, so an unscale that overflows
//    (S < 1) is caught too. The count tests the bits, never relies on x·0 giving NaN.
// 4. gateUpdates, after the optimizer: every write-back of a parameter or of optimizer state
//    becomes where(overflow, old, new), so a step with an overflow leaves them bit for bit. The
//    accumulators' write-backs are not gated: an overflowed sum is replaced by the next optimizer
//    step's first micro-step (acc′ = where(first, g, …)).
//
// Memory: the first gated write-back needs the count over all gradients, so every gradient (or
// its update) is alive at once, as in PyTorch, where all .grad tensors exist before
// scaler.step(); LoRA's gradients are small. The scale scalars stay f32 under --dtype f16
// (memory-plan.ts): 2¹⁶ is past f16's largest value.
import { Builder } from '../ir/builder.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Graph } from '../ir/types.ts';
import { gradName } from './autodiff.ts';

/** The backward seed S: the loss's cotangent. */
export const LOSS_SCALE_INPUT = 'optim.loss_scale';
/** 1/S, the unscale of each gradient (without gradient accumulation; see unscaleGradients). */
export const INV_LOSS_SCALE_INPUT = 'optim.inv_loss_scale';
/** The count of non-finite elements over the unscaled gradients: > 0 means the step was skipped. */
export const OVERFLOW_OUTPUT = 'overflow';

export interface LossScaleReport {
  /** The gradients checked for overflow (every trainable parameter's). */
  readonly params: readonly string[];
  /** The write-backs gated on `overflow` (parameters and optimizer state). */
  readonly gated: readonly string[];
  /** True when the unscale is folded into gradient accumulation's grad_scale. */
  readonly foldedIntoAccumulation: boolean;
}

/**
 * The loss-scaling feeds of a step at scale S: the seed, and 1/S unless the unscale is folded into
 * gradient accumulation's grad_scale (then feed accumFeeds(j, K, S) as well).
 */
export function lossScaleFeeds(scale: number, accumulate = false): Record<string, number[]> {
  if (!(Number.isFinite(scale) && scale > 0)) throw new LorafaError('--loss-scale', `the loss scale must be a finite number > 0, got ${scale}`, 'e.g. --loss-scale 65536, or --loss-scale dynamic');
  return accumulate ? { [LOSS_SCALE_INPUT]: [scale] } : { [LOSS_SCALE_INPUT]: [scale], [INV_LOSS_SCALE_INPUT]: [1 / scale] };
}

/**
 * Steps 2–3, on a graph whose gradients were seeded with LOSS_SCALE_INPUT. `accumulated`: the
 * gradients are grad-accum.ts's means, whose grad_scale the trainer feeds as 1/(K·S).
 */
export function unscaleGradients(g: Graph, opts: { accumulated: boolean }): { graph: Graph; params: readonly string[] } {
  const trainable = g.params.filter((p) => p.trainable);
  if (!g.inputs.some((i) => i.value.name === LOSS_SCALE_INPUT)) {
    throw new LorafaError(g.file ?? g.name, `the gradients were not seeded with ${LOSS_SCALE_INPUT}`, 'run autodiff with seed: LOSS_SCALE_INPUT before unscaling');
  }
  const b = Builder.extending(g, 'update');
  const outputs = { ...g.outputs };
  const inputs = [...g.inputs];
  const inv = opts.accumulated ? undefined : b.input(INV_LOSS_SCALE_INPUT, []);
  if (inv) inputs.push({ value: inv });
  const counts = trainable.map((p) => {
    const name = gradName(p.value.name);
    const grad = g.outputs[name];
    if (!grad) throw new LorafaError(g.file ?? g.name, `no gradient for ${p.value.name}`, 'run autodiff before loss scaling');
    return b.on(p.src, `unscale.${p.value.name}`, () => {
      const unscaled = inv ? b.emit('mul', [grad, inv], {}, 'grad') : grad;
      outputs[name] = unscaled;
      return b.emit('count_nonfinite', [unscaled], {}, 'nonfinite');
    });
  });
  if (!counts.length) throw new LorafaError(g.file ?? g.name, 'loss scaling needs a trainable parameter', 'mark some parameters trainable');
  outputs[OVERFLOW_OUTPUT] = b.on(undefined, OVERFLOW_OUTPUT, () => counts.slice(1).reduce((s, c) => b.add(s, c), counts[0]));
  const added = b.takeAdditions();
  return {
    graph: { ...g, inputs, nodes: [...g.nodes, ...added.nodes], outputs, nextId: added.nextId },
    params: trainable.map((p) => p.value.name),
  };
}

/** Step 4: every write-back of a parameter or optimizer state kept as it was when `overflow` > 0. */
export function gateUpdates(g: Graph): { graph: Graph; gated: readonly string[] } {
  const overflow = g.outputs[OVERFLOW_OUTPUT];
  if (!overflow) throw new LorafaError(g.file ?? g.name, `no "${OVERFLOW_OUTPUT}" output to gate the updates on`, 'run unscaleGradients first');
  const params = new Map(g.params.map((p) => [p.value.name, p]));
  const b = Builder.extending(g, 'update');
  const gated: string[] = [];
  const updates = g.updates.map((u) => {
    const p = params.get(u.target)!;
    if (p.role === 'grad_accumulator') return u;
    gated.push(u.target);
    // where(c, a, b) = c ≠ 0 ? a : b: NaN in the update is never selected.
    return { target: u.target, value: b.on(p.src, `gate.${u.target}`, () => b.emit('where', [overflow, p.value, u.value], {}, 'kept')) };
  });
  const added = b.takeAdditions();
  return { graph: { ...g, nodes: [...g.nodes, ...added.nodes], updates, nextId: added.nextId }, gated };
}
