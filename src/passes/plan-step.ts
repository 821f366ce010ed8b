// A training step compiled and planned for some limits, as `lorafa plan`, `compile -o` and
// `finetune` all do it: LoRA-FA is also tried in LoRA's layout (it does a subset of LoRA's work,
// so LoRA's arena restricted to LoRA-FA's tensors is a valid layout), and the better plan is kept,
// so LoRA-FA's peak never exceeds LoRA's.
import type { Graph } from '../ir/types.ts';
import { compileTraining, type Compiled, type Mode } from './compile.ts';
import type { LoraOptions } from './lora.ts';
import { planMemory, type Limits, type MemoryPlan, type PlanOptions, type StorageDType } from './memory-plan.ts';
import type { OptimizerOptions } from './optimizer.ts';

export interface StepSetup {
  readonly mode: Mode;
  readonly lora?: LoraOptions;
  readonly optimizer: OptimizerOptions;
  /** lora-fa only: gB ← (1/s²)(AᵀA)⁻¹·gB. */
  readonly gradCorrection?: boolean;
  /** Gradient accumulators (grad-accum.ts). */
  readonly accumulate?: boolean;
  /** Loss scaling (loss-scale.ts): the seed S, the unscale, the overflow check and gated updates. */
  readonly lossScaling?: boolean;
  /** Run the verifier after every pass. */
  readonly verify?: boolean;
  /** Storage of frozen weights and activations (memory-plan.ts); trainable state stays f32. Default f32. */
  readonly dtype?: StorageDType;
}

export function planStep(graph: Graph, s: StepSetup, limits: Limits): { compiled: Compiled; memory: MemoryPlan } {
  const compiled = compileTraining(graph, { mode: s.mode, lora: s.lora, optimizer: s.optimizer, gradCorrection: s.gradCorrection, gradAccum: s.accumulate, lossScaling: s.lossScaling, verify: s.verify });
  const step = compiled.step!;
  let dominating: PlanOptions['dominating'];
  if (s.mode === 'lora-fa' && !s.gradCorrection) {
    const l = compileTraining(graph, { mode: 'lora', lora: s.lora, optimizer: s.optimizer, gradAccum: s.accumulate, lossScaling: s.lossScaling });
    dominating = { graph: l.step!, plan: planMemory(l.step!, { limits, dtype: s.dtype ?? 'f32', gradients: l.gradients }) };
  }
  return { compiled, memory: planMemory(step, { limits, dtype: s.dtype ?? 'f32', gradients: compiled.gradients, dominating }) };
}
