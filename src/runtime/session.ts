// In-process compilation for this machine's GPU: a model graph → the training step's memory plan
// and kernel plan (as `lorafa compile -o` makes them, without writing files), and the forward
// graph's plan for evaluation. Used by fine-tuning, pretraining and the experiment.
import { buildKernelPlan, type KernelPlan } from '../codegen/kernel-plan.ts';
import type { Graph } from '../ir/types.ts';
import { compileTraining, type Compiled, type Mode } from '../passes/compile.ts';
import type { LoraOptions } from '../passes/lora.ts';
import { planMemory, type Limits, type MemoryPlan, type PlanOptions } from '../passes/memory-plan.ts';
import type { OptimizerOptions } from '../passes/optimizer.ts';
import type { Gpu } from './gpu.ts';

export interface StepSetup {
  readonly mode: Mode;
  readonly lora?: LoraOptions;
  readonly optimizer: OptimizerOptions;
  /** lora-fa only: gB ← (1/s²)(AᵀA)⁻¹·gB. */
  readonly gradCorrection?: boolean;
  /** Run the verifier after every pass. */
  readonly verify?: boolean;
}

export interface PlannedStep {
  readonly compiled: Compiled;
  readonly memory: MemoryPlan;
  readonly kernels: KernelPlan;
}

/** The device's limits, as `--limits adapter` takes them. */
export function gpuLimits(gpu: Gpu): Limits {
  return {
    alignment: gpu.limits.minStorageBufferOffsetAlignment,
    maxBindingSize: gpu.limits.maxStorageBufferBindingSize,
    maxBufferSize: gpu.limits.maxBufferSize,
  };
}

/**
 * Plans a step for `limits`, as `lorafa plan` does: LoRA-FA is also tried in LoRA's layout (it does
 * a subset of LoRA's work), so its peak never exceeds LoRA's. `compile -o` and `finetune` use this.
 */
export function planStep(graph: Graph, s: StepSetup, limits: Limits): { compiled: Compiled; memory: MemoryPlan } {
  const compiled = compileTraining(graph, { mode: s.mode, lora: s.lora, optimizer: s.optimizer, gradCorrection: s.gradCorrection, verify: s.verify });
  const step = compiled.step!;
  let dominating: PlanOptions['dominating'];
  if (s.mode === 'lora-fa' && !s.gradCorrection) {
    const l = compileTraining(graph, { mode: 'lora', lora: s.lora, optimizer: s.optimizer });
    dominating = { graph: l.step!, plan: planMemory(l.step!, { limits, dtype: 'f32', gradients: l.gradients }) };
  }
  return { compiled, memory: planMemory(step, { limits, dtype: 'f32', gradients: compiled.gradients, dominating }) };
}

/**
 * The training step planned and lowered for this GPU. `planned`: the same step already planned
 * with this GPU's limits (`planStep(graph, s, gpuLimits(gpu))`), so it is not compiled again.
 */
export function planStepForGpu(graph: Graph, s: StepSetup, gpu: Gpu, planned?: { compiled: Compiled; memory: MemoryPlan }): PlannedStep {
  const { compiled, memory } = planned ?? planStep(graph, s, gpuLimits(gpu));
  const kernels = buildKernelPlan(compiled.step!, memory, { maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, subgroupSize: gpu.subgroupSize });
  return { compiled, memory, kernels };
}

/** A forward-only graph (evaluation: loss and logits) planned and lowered for this GPU. */
export function planForwardForGpu(forward: Graph, gpu: Gpu): { memory: MemoryPlan; kernels: KernelPlan } {
  const memory = planMemory(forward, { limits: gpuLimits(gpu), dtype: 'f32' });
  const kernels = buildKernelPlan(forward, memory, { maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, subgroupSize: gpu.subgroupSize });
  return { memory, kernels };
}
