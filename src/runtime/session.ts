// In-process lowering for this machine's GPU: a planned step → its kernel plan, and a forward graph
// (evaluation: loss and logits) planned and lowered. Used by the benchmarks and tests; the
// training entry points go through src/train/program.ts.
import { buildKernelPlan, type KernelPlan } from '../codegen/kernel-plan.ts';
import type { Graph } from '../ir/types.ts';
import type { Compiled } from '../passes/compile.ts';
import { planMemory, type Limits, type MemoryPlan, type StorageDType } from '../passes/memory-plan.ts';
import { planStep, type StepSetup } from '../passes/plan-step.ts';
import type { Gpu } from './gpu.ts';

export type { StepSetup };

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

/** The training step planned (planStep) and lowered for this GPU. */
export function planStepForGpu(graph: Graph, s: StepSetup, gpu: Gpu, planned?: { compiled: Compiled; memory: MemoryPlan }): PlannedStep {
  const { compiled, memory } = planned ?? planStep(graph, s, gpuLimits(gpu));
  const kernels = buildKernelPlan(compiled.step!, memory, { maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, subgroupSize: gpu.subgroupSize, shaderF16: gpu.shaderF16 });
  return { compiled, memory, kernels };
}

/** A forward-only graph (evaluation: loss and logits) planned and lowered for this GPU. */
export function planForwardForGpu(forward: Graph, gpu: Gpu, dtype: StorageDType = 'f32'): { memory: MemoryPlan; kernels: KernelPlan } {
  const memory = planMemory(forward, { limits: gpuLimits(gpu), dtype });
  const kernels = buildKernelPlan(forward, memory, { maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, subgroupSize: gpu.subgroupSize, shaderF16: gpu.shaderF16 });
  return { memory, kernels };
}
