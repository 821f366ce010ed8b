// A training step compiled and planned for some limits, as `lorafa plan`, `compile -o` and
// `finetune` all do it: LoRA-FA is also tried in LoRA's layout (it does a subset of LoRA's work,
// so LoRA's arena restricted to LoRA-FA's tensors is a valid layout), and the better plan is kept,
// so LoRA-FA's peak never exceeds LoRA's. With a budget, backward recomputes what it must
// (remat.ts) so that the peak fits it.
import type { Graph } from '../ir/types.ts';
import { compileTraining, type Compiled, type Mode } from './compile.ts';
import type { LoraOptions } from './lora.ts';
import { planMemory, type Limits, type MemoryPlan, type PlanOptions, type StorageDType } from './memory-plan.ts';
import type { OptimizerOptions } from './optimizer.ts';
import { rematerialize, type RematReport } from './remat.ts';

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
  /**
   * Bytes the plan's peak (persistent buffers + arena) must fit: when the plain plan does not,
   * backward recomputes forward values (remat.ts) and `compiled.step` is the graph with the
   * recompute nodes. A LorafaError names the smallest budget that fits when none does.
   */
  readonly budget?: number;
}

export function planStep(graph: Graph, s: StepSetup, limits: Limits): { compiled: Compiled; memory: MemoryPlan; remat?: RematReport } {
  const compiled = compileTraining(graph, { mode: s.mode, lora: s.lora, optimizer: s.optimizer, gradCorrection: s.gradCorrection, gradAccum: s.accumulate, lossScaling: s.lossScaling, verify: s.verify });
  const step = compiled.step!;
  let dominating: PlanOptions['dominating'];
  if (s.mode === 'lora-fa' && !s.gradCorrection) {
    const l = compileTraining(graph, { mode: 'lora', lora: s.lora, optimizer: s.optimizer, gradAccum: s.accumulate, lossScaling: s.lossScaling });
    dominating = { graph: l.step!, plan: planMemory(l.step!, { limits, dtype: s.dtype ?? 'f32', gradients: l.gradients }) };
  }
  const dtype = s.dtype ?? 'f32';
  const memory = planMemory(step, { limits, dtype, gradients: compiled.gradients, dominating });
  if (s.budget === undefined) return { compiled, memory };
  const r = rematerialize(step, { budget: s.budget, plain: memory, plan: (g) => planMemory(g, { limits, dtype, gradients: compiled.gradients }), what: graph.file ?? graph.name });
  if (!r.report) return { compiled, memory };
  return { compiled: { ...compiled, step: r.graph, stages: [...compiled.stages, { pass: 'remat', graph: r.graph }] }, memory: r.plan, remat: r.report };
}
