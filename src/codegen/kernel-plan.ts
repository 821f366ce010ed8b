// The KernelPlan: pure data from which the runtime runs a training step. One dispatch per node
// that computes something (views and inlined scalar constants need none), in the memory plan's
// schedule, with every binding an arena or persistent slice exactly where the plan put it.
import { LorafaError } from '../ir/errors.ts';
import type { DType, Graph, Node, Value } from '../ir/types.ts';
import type { MemoryPlan, PlanBuffer } from '../passes/memory-plan.ts';
import { isInlineConstant, isView } from '../passes/schedule.ts';
import { emitFused, planFusion, type FusedGroup } from './fuse.ts';
import { defaultElem, type ElemKind } from './storage.ts';
import type { EmitContext, KernelChoice } from './kernel.ts';
import { chooseMatmulVariant, matmulCandidates, matmulNodeFromKey, matmulShapeKey } from './matmul.ts';
import { emitKernel } from './wgsl.ts';

/** Bytes [offset, offset + size) of one plan buffer. */
export interface Slice {
  readonly buffer: number;
  readonly offset: number;
  readonly size: number;
}

export interface KernelText {
  readonly wgsl: string;
  /** Storage bindings: bound operands, then the output. */
  readonly bindings: number;
  readonly label: string;
}

export interface Dispatch {
  readonly kernel: number;
  /** The IR node, for errors: `op name`. */
  readonly label: string;
  readonly bindings: readonly Slice[];
  readonly workgroups: readonly [number, number, number];
  /**
   * Only in plans with gradient accumulators (grad-accum.ts): whether this dispatch belongs to the
   * optimizer update (phase 'update'), which micro-steps that do not update skip. Absent
   * otherwise, so plans without accumulators (and their hashes) are as they were.
   */
  readonly update?: boolean;
  /**
   * A matmul's shape key (matmul.ts, matmulShapeKey): what `lorafa tune` times, and what a tuned
   * choice replaces the kernel of (applyMatmulChoices). Absent on other dispatches.
   */
  readonly matmul?: string;
}

export interface Resident {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly slice: Slice;
}

export interface KernelPlan {
  readonly buffers: readonly PlanBuffer[];
  readonly kernels: readonly KernelText[];
  readonly dispatches: readonly Dispatch[];
  /** Every parameter and optimizer state tensor, where it lives. */
  readonly params: readonly (Resident & { readonly trainable: boolean; readonly role: string })[];
  /** Data inputs the trainer writes before each step. */
  readonly inputs: readonly Resident[];
  /** Where the scalar loss is after a step. */
  readonly loss: Slice;
  /** Every output of the graph (the loss, and e.g. `logits` of a forward plan), where it is after a step. */
  readonly outputs: Readonly<Record<string, Resident>>;
  /** Total bytes of all buffers: the plan's peak. */
  readonly bytes: number;
}

export interface KernelPlanOptions {
  readonly maxWorkgroupsPerDimension?: number;
  /**
   * Fuse runs of elementwise nodes into one kernel each (fuse.ts); default true. The buffers and
   * every value's bytes are the memory plan's either way.
   */
  readonly fuse?: boolean;
  /**
   * The device's fixed subgroup size, when it has the `subgroups` feature and packs consecutive
   * invocations into subgroups (lavapipe: 8); see `EmitContext.subgroupSize`. Kernels then need
   * a device created with that feature.
   */
  readonly subgroupSize?: number;
  /**
   * The device has the `shader-f16` feature: an f16 plan's half tensors are array<f16> (`enable
   * f16`); without it they are packed two to a u32 (storage.ts). Kernels then need a device with
   * that feature.
   */
  readonly shaderF16?: boolean;
  /** Portable kernels only, or what the adapter offers (EmitContext.kernels; default auto). */
  readonly kernels?: KernelChoice;
  /** A CPU adapter (EmitContext.cpuAdapter): the matmul heuristic's main input. */
  readonly cpuAdapter?: boolean;
  readonly maxWorkgroupStorageSize?: number;
  readonly maxInvocationsPerWorkgroup?: number;
  /** Tuned matmul variants by shape key (EmitContext.matmulChoice). */
  readonly matmulChoice?: ReadonlyMap<string, string>;
}

/**
 * The `subgroupSize` option for a device: its adapter's subgroup size when that size is fixed
 * (subgroupMinSize = subgroupMaxSize, lavapipe: 8) and the device was created with the
 * 'subgroups' feature; otherwise undefined (portable kernels). Structural types, so codegen
 * stays free of the runtime: pass `gpu.device` and `gpu.adapter.info`.
 */
export function fixedSubgroupSize(
  device: { readonly features: { has(feature: string): boolean } },
  adapterInfo: { readonly subgroupMinSize?: number; readonly subgroupMaxSize?: number },
): number | undefined {
  const { subgroupMinSize: lo, subgroupMaxSize: hi } = adapterInfo;
  return device.features.has('subgroups') && lo !== undefined && lo === hi ? lo : undefined;
}

export function buildKernelPlan(g: Graph, plan: MemoryPlan, opts: KernelPlanOptions = {}): KernelPlan {
  const byId = new Map(plan.tensors.map((t) => [t.id, t]));
  const constants = new Map<number, number>();
  for (const n of plan.schedule) {
    if (isInlineConstant(n)) constants.set(n.out.id, (n.attrs as { value: number }).value);
    else if (isView(n) && constants.has(n.inputs[0].id)) constants.set(n.out.id, constants.get(n.inputs[0].id)!);
  }
  const slice = (v: Value): Slice => {
    const t = byId.get(root(v));
    if (!t) throw new Error(`kernel plan: value %${v.id} "${v.name}" has no storage in the memory plan`);
    return { buffer: t.buffer, offset: t.offset, size: Math.max(4, Math.ceil(t.bytes / 4) * 4) };
  };
  const kernels: KernelText[] = [];
  const kernelIndex = new Map<string, number>();
  const dispatches: Dispatch[] = [];
  const root = (v: Value) => {
    let id = v.id;
    for (let a = plan.aliases.get(id); a !== undefined && a >= 0; a = plan.aliases.get(id)) id = a;
    return id;
  };
  // Half storage (storage.ts): f16 natively where the device has shader-f16, else packed in u32.
  const half: ElemKind = plan.dtype === 'bf16' ? 'bf16' : opts.shaderF16 ? 'f16' : 'f16p';
  const elem = (v: Value): ElemKind => {
    const t = byId.get(root(v));
    return !t || t.dtype === 'f32' || t.dtype === 'i32' ? defaultElem(v) : half;
  };
  const ctx: EmitContext = { ...emitOptions(opts), constants, storage: root, elem };
  const dispatched = (n: Node) => !isView(n) && !constants.has(n.out.id);
  // With accumulators, a kernel is all update or none of it (fuse.ts rule 6), so a micro-step
  // can run the forward, backward and accumulation dispatches without the update's.
  const accumulates = g.params.some((p) => p.role === 'grad_accumulator');
  const phaseOf = (nodes: readonly Node[]) => (accumulates ? { update: nodes.some((m) => m.phase === 'update') } : {});
  const fused =
    opts.fuse === false
      ? new Map<number, FusedGroup>()
      : planFusion(plan.schedule, {
          storage: root,
          constants,
          dispatched,
          bytes: (id) => {
            const t = byId.get(id);
            return t && { buffer: t.buffer, offset: t.offset, size: t.bytes };
          },
          outputs: new Set(Object.values(g.outputs).map(root)),
          separateUpdate: accumulates,
        });
  for (const n of plan.schedule) {
    if (!dispatched(n)) continue;
    const group = fused.get(n.out.id);
    if (group) {
      // The group runs as one kernel where its last member was scheduled.
      if (group.nodes[group.nodes.length - 1] !== n) continue;
      const k = emitFused(group, ctx);
      let index = kernelIndex.get(k.wgsl);
      if (index === undefined) {
        index = kernels.length;
        kernels.push({ wgsl: k.wgsl, bindings: k.bound.length + group.stored.length, label: `fused(${group.nodes.map((m) => m.op).join(',')}) ${shapeTag(n)}` });
        kernelIndex.set(k.wgsl, index);
      }
      dispatches.push({
        kernel: index,
        label: `fused ${group.nodes.length} ${n.out.name}`,
        bindings: [...k.bound.map(slice), ...group.stored.map(slice)],
        workgroups: k.workgroups,
        ...phaseOf(group.nodes),
      });
      continue;
    }
    const k = emitKernel(n, ctx);
    let index = kernelIndex.get(k.wgsl);
    if (index === undefined) {
      index = kernels.length;
      kernels.push({ wgsl: k.wgsl, bindings: k.bound.length + 1, label: `${n.op} ${shapeTag(n)}` });
      kernelIndex.set(k.wgsl, index);
    }
    dispatches.push({
      kernel: index,
      label: `${n.op} ${n.out.name}`,
      bindings: [...k.bound.map(slice), slice(n.out)],
      workgroups: k.workgroups,
      ...phaseOf([n]),
      ...(n.op === 'matmul' ? { matmul: matmulShapeKey(n, ctx) } : {}),
    });
  }
  const resident = (v: Value): Resident => ({ name: v.name, shape: v.type.shape, dtype: byId.get(root(v))?.dtype ?? v.type.dtype, slice: slice(v) });
  const loss = g.outputs.loss;
  if (!loss) throw new LorafaError(g.file ?? g.name, 'the step graph has no loss output');
  return {
    buffers: plan.buffers.map((b) => ({ ...b, bytes: Math.max(4, Math.ceil(b.bytes / 4) * 4) })),
    kernels,
    dispatches,
    params: g.params.map((p) => ({ ...resident(p.value), trainable: p.trainable, role: p.role })),
    inputs: g.inputs.map((i) => resident(i.value)),
    loss: slice(loss),
    // Outputs with storage (an inlined scalar constant has none: it is known without running).
    outputs: Object.fromEntries(Object.entries(g.outputs).filter(([, v]) => byId.has(root(v))).map(([k, v]) => [k, resident(v)])),
    bytes: plan.buffers.reduce((s, b) => s + Math.max(4, Math.ceil(b.bytes / 4) * 4), 0),
  };
}

/** The EmitContext fields a KernelPlanOptions sets (everything but the plan's own constants and storage). */
export function emitOptions(opts: Omit<KernelPlanOptions, 'fuse' | 'shaderF16'>): Omit<EmitContext, 'constants'> {
  return {
    maxWorkgroupsPerDimension: opts.maxWorkgroupsPerDimension ?? 65535,
    subgroupSize: opts.subgroupSize,
    ...(opts.kernels ? { kernels: opts.kernels } : {}),
    ...(opts.cpuAdapter !== undefined ? { cpuAdapter: opts.cpuAdapter } : {}),
    ...(opts.maxWorkgroupStorageSize !== undefined ? { maxWorkgroupStorageSize: opts.maxWorkgroupStorageSize } : {}),
    ...(opts.maxInvocationsPerWorkgroup !== undefined ? { maxInvocationsPerWorkgroup: opts.maxInvocationsPerWorkgroup } : {}),
    ...(opts.matmulChoice ? { matmulChoice: opts.matmulChoice } : {}),
  };
}

/** The distinct matmul shape keys of a plan's dispatches, in first-use order. */
export function matmulKeys(plan: KernelPlan): string[] {
  return [...new Set(plan.dispatches.flatMap((d) => (d.matmul ? [d.matmul] : [])))];
}

export interface AppliedChoices {
  readonly plan: KernelPlan;
  /** Shape key → the variant its dispatches now run, for every key `choices` named that fits. */
  readonly applied: ReadonlyMap<string, string>;
  /** Keys whose choice does not fit here (or is not portable under kernels: 'portable'): left as compiled. */
  readonly refused: ReadonlyMap<string, string>;
}

/**
 * A compiled plan with its matmuls re-emitted as `choices` (shape key → variant) say: the tuned
 * kernels `lorafa tune` measured, applied when a trainer starts. Every variant binds the same
 * slices, so a dispatch keeps its bindings and takes the new kernel and grid; a matmul whose key
 * has no choice keeps the compiled kernel, and kernels no dispatch uses any more are dropped (the
 * runner compiles every kernel of a plan). The plan's bytes do not change.
 */
export function applyMatmulChoices(plan: KernelPlan, choices: ReadonlyMap<string, string>, opts: Omit<KernelPlanOptions, 'fuse' | 'shaderF16' | 'matmulChoice'>): AppliedChoices {
  const applied = new Map<string, string>();
  const refused = new Map<string, string>();
  const emitted = new Map<string, { wgsl: string; bindings: number; workgroups: readonly [number, number, number] }>();
  for (const key of matmulKeys(plan)) {
    const want = choices.get(key);
    if (want === undefined) continue;
    const rebuilt = matmulNodeFromKey(key);
    if (!rebuilt) {
      refused.set(key, want);
      continue;
    }
    const ctx: EmitContext = { ...emitOptions(opts), constants: new Map(), elem: rebuilt.elem, matmulChoice: new Map([[key, want]]) };
    if (!matmulCandidates(rebuilt.node, ctx).some((v) => v.name === want)) {
      refused.set(key, want);
      continue;
    }
    const k = chooseMatmulVariant(rebuilt.node, ctx).emit(rebuilt.node, ctx);
    emitted.set(key, { wgsl: k.wgsl, bindings: k.bound.length + 1, workgroups: k.workgroups });
    applied.set(key, want);
  }
  if (!applied.size) return { plan, applied, refused };
  // Rebuild the kernel list: every kernel a dispatch still uses, in first-use order.
  const kernels: KernelText[] = [];
  const index = new Map<string, number>();
  const use = (k: KernelText) => {
    let i = index.get(k.wgsl);
    if (i === undefined) {
      i = kernels.length;
      kernels.push(k);
      index.set(k.wgsl, i);
    }
    return i;
  };
  const dispatches = plan.dispatches.map((d): Dispatch => {
    const e = d.matmul ? emitted.get(d.matmul) : undefined;
    if (!e) return { ...d, kernel: use(plan.kernels[d.kernel]) };
    if (e.bindings !== d.bindings.length) throw new Error(`applyMatmulChoices: ${d.label}: the ${applied.get(d.matmul!)} kernel binds ${e.bindings} slices, the dispatch ${d.bindings.length}`);
    return { ...d, kernel: use({ wgsl: e.wgsl, bindings: e.bindings, label: `matmul ${d.matmul} (${applied.get(d.matmul!)})` }), workgroups: e.workgroups };
  });
  return { plan: { ...plan, kernels, dispatches }, applied, refused };
}

function shapeTag(n: Node): string {
  return `${n.inputs.map((v) => `[${v.type.shape.join(',')}]`).join('')}→[${n.out.type.shape.join(',')}]`;
}
