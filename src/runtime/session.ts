// In-process lowering for this machine's GPU: a planned step → its kernel plan, and a forward graph
// (evaluation: loss and logits) planned and lowered. Used by the benchmarks and tests; the
// training entry points go through src/train/program.ts.
import type { KernelChoice } from '../codegen/kernel.ts';
import { buildKernelPlan, type KernelPlan, type KernelPlanOptions } from '../codegen/kernel-plan.ts';
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

/**
 * What codegen needs to know of this device: its limits, fixed subgroup size, shader-f16, whether
 * it is a CPU adapter; and `kernels` (--kernels portable keeps to kernels without subgroups).
 */
export function kernelOptionsFor(gpu: Gpu, kernels?: KernelChoice): KernelPlanOptions {
  return {
    maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension,
    subgroupSize: gpu.subgroupSize,
    shaderF16: gpu.shaderF16,
    cpuAdapter: gpu.cpuAdapter,
    maxWorkgroupStorageSize: gpu.limits.maxComputeWorkgroupStorageSize,
    maxInvocationsPerWorkgroup: gpu.limits.maxComputeInvocationsPerWorkgroup,
    ...(kernels ? { kernels } : {}),
  };
}

/** The training step planned (planStep) and lowered for this GPU. */
export function planStepForGpu(graph: Graph, s: StepSetup, gpu: Gpu, planned?: { compiled: Compiled; memory: MemoryPlan }, kernels?: KernelChoice): PlannedStep {
  const { compiled, memory } = planned ?? planStep(graph, s, gpuLimits(gpu));
  return { compiled, memory, kernels: buildKernelPlan(compiled.step!, memory, kernelOptionsFor(gpu, kernels)) };
}

/** A forward-only graph (evaluation: loss and logits) planned and lowered for this GPU. */
export function planForwardForGpu(forward: Graph, gpu: Gpu, dtype: StorageDType = 'f32', kernels?: KernelChoice): { memory: MemoryPlan; kernels: KernelPlan } {
  const memory = planMemory(forward, { limits: gpuLimits(gpu), dtype });
  return { memory, kernels: buildKernelPlan(forward, memory, kernelOptionsFor(gpu, kernels)) };
}
