// The contract between codegen and the runtime: one WGSL kernel per (non-view) node.
//
// Binding convention, for every kernel:
//   @group(0) @binding(i)  for i < k: the node's operands that own storage, in input order
//                           (inlined scalar constants are not bound: they are literals in the text)
//   @group(0) @binding(k)  the output
// Every binding is declared `var<storage, read_write>`: the arena is one buffer, so a kernel often
// reads and writes slices of the same GPUBuffer, and WebGPU accepts several writable storage
// usages of one buffer in a dispatch but not a mix of read-only and writable ones.
// Element types: f32 → array<f32>, i32 → array<i32>; half storage (f16, bf16) as storage.ts says.
import type { Node, Value } from '../ir/types.ts';
import type { ElemKind } from './storage.ts';

export interface KernelSource {
  /** Complete WGSL module with one entry point `main`. Shapes are baked in as constants. */
  readonly wgsl: string;
  /** Workgroup counts (x, y, z); x and y each ≤ maxComputeWorkgroupsPerDimension. */
  readonly workgroups: readonly [number, number, number];
  /** Inputs bound, in binding order (excludes inlined scalars). */
  readonly bound: readonly Value[];
}

export interface EmitContext {
  /** Scalar constants folded into the kernel text (fill nodes of shape []), by value id. */
  readonly constants: ReadonlyMap<number, number>;
  readonly maxWorkgroupsPerDimension: number;
  /**
   * Identity of a value's storage (views share their root's; a write-back shares its target's).
   * Operands with the same storage are bound once (WebGPU rejects overlapping writable bindings),
   * and an operand stored where the output goes (an in-place update) is read from `out`.
   * Defaults to the value id.
   */
  readonly storage?: (v: Value) => number;
  /**
   * Set only when the device has the `subgroups` feature with a fixed subgroup size (adapter
   * subgroupMinSize = subgroupMaxSize) and packs consecutive local invocation indices into a
   * subgroup, as lavapipe does (8). Kernels may then share loads across a subgroup.
   */
  readonly subgroupSize?: number;
  /**
   * How a value is stored (storage.ts): f32 / i32 by default; f16, f16p (packed, no shader-f16)
   * or bf16 where the memory plan stores it in half precision. Views share their root's.
   */
  readonly elem?: (v: Value) => ElemKind;
  /**
   * Which kernels may be used: 'portable' keeps to those that need no optional feature (no
   * subgroups), so the plan runs on any adapter; 'auto' (the default) may use what the adapter
   * offers. `lorafa compile|train|finetune --kernels`.
   */
  readonly kernels?: KernelChoice;
  /**
   * The adapter runs on the CPU (lavapipe, SwiftShader): barriers and workgroup memory cost more
   * than they save there, so the matmul heuristic keeps to barrier-free kernels and the row
   * kernels (norms, cross-entropy) sum a row in one invocation; on a GPU the matmul takes the
   * workgroup-memory tiled one (matmul.ts, heuristicMatmulVariant) and a row is a workgroup's
   * tree reduction (wgsl.ts, rowKernel). Undefined: as a
   * CPU adapter (the kernels lorafa chose before it knew about the adapter).
   */
  readonly cpuAdapter?: boolean;
  /** The device's maxComputeWorkgroupStorageSize (default WebGPU's 16384). */
  readonly maxWorkgroupStorageSize?: number;
  /** The device's maxComputeInvocationsPerWorkgroup (default WebGPU's 256). */
  readonly maxInvocationsPerWorkgroup?: number;
  /**
   * Tuned matmul variants (`lorafa tune`): variant name by matmulShapeKey. A choice that does not
   * fit (or is not portable under `kernels: 'portable'`) is ignored for the heuristic's.
   */
  readonly matmulChoice?: ReadonlyMap<string, string>;
}

export const KERNEL_CHOICES = ['auto', 'portable'] as const;
export type KernelChoice = (typeof KERNEL_CHOICES)[number];

export type KernelEmitterFn = (node: Node, ctx: EmitContext) => KernelSource;
