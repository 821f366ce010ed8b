// The memory plan: every byte of one training step, decided from shapes alone.
//
// 1. Storage: each value gets a storage dtype from its category (mixed precision keeps trainable
//    parameters, their gradients, optimizer state and the update's arithmetic in f32), and a
//    root: views (reshape, stop_gradient) share their input's bytes, scalar constants are inlined
//    into kernels, and write-backs are done in place in their target's persistent tensor (a
//    gradient accumulator's acc + g as well as acc′; see accumulatedInPlace).
// 2. Schedule: every candidate order from schedule.ts; lifetimes are inclusive step ranges
//    [definition, last read] (an output lives to the end), so a kernel never writes over a tensor
//    it is still reading. The candidate with the lowest lower bound wins.
// 3. Persistent regions: frozen weights, trainable parameters, optimizer state, the step's data
//    inputs and gradient accumulators (category gradients), each packed in order into buffers of
//    at most maxBufferSize. A graph without accumulators has no such region.
// 4. The transient arena: interval packing of the rest, best fit by decreasing size, then by
//    decreasing lifetime, then by start; the packing with the smallest total wins. Offsets are
//    multiples of the alignment; the arena splits into several buffers rather than pass
//    maxBufferSize; no tensor may pass maxStorageBufferBindingSize.
// 5. Accounting: bytes per category at the peak step, the lower bound (largest sum of aligned
//    sizes live at one step, persistent included), peak (all buffers) and fragmentation.
import { LorafaError } from '../ir/errors.ts';
import { fmtBytes } from '../ir/format.ts';
import { opDef } from '../ir/ops.ts';
import { numel, fmtType, sameShape, type DType, type Graph, type Node, type Value } from '../ir/types.ts';
import { dependencies, isInlineConstant, isView, scheduleCandidates } from './schedule.ts';
import { ACCUM_FIRST_INPUT, BC1_INPUT, BC2_INPUT, GRAD_SCALE_INPUT, LR_INPUT } from './optimizer.ts';
import { INV_LOSS_SCALE_INPUT, LOSS_SCALE_INPUT } from './loss-scale.ts';

export interface Limits {
  /** minStorageBufferOffsetAlignment: every offset is a multiple of it. */
  readonly alignment: number;
  /** maxStorageBufferBindingSize: the largest single tensor. */
  readonly maxBindingSize: number;
  /** maxBufferSize: the largest buffer; regions split into several below it. */
  readonly maxBufferSize: number;
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

export const LIMIT_PRESETS = {
  /** The WebGPU spec's defaults: what every adapter guarantees. */
  webgpu: { alignment: 256, maxBindingSize: 128 * MiB, maxBufferSize: 256 * MiB },
  /** What Dawn commonly exposes on discrete GPUs: 4 GiB buffers, bindings capped at 2 GiB. */
  discrete: { alignment: 256, maxBindingSize: 2 * GiB, maxBufferSize: 4 * GiB },
  /** No buffer limits: pure accounting. */
  none: { alignment: 256, maxBindingSize: Number.MAX_SAFE_INTEGER, maxBufferSize: Number.MAX_SAFE_INTEGER },
} as const satisfies Record<string, Limits>;

export const STORAGE_DTYPES = ['f32', 'f16', 'bf16'] as const;
export type StorageDType = (typeof STORAGE_DTYPES)[number];

export const CATEGORIES = ['frozen', 'trainable', 'optimizer', 'inputs', 'gradients', 'saved', 'workspace'] as const;
export type Category = (typeof CATEGORIES)[number];

export const CATEGORY_LABELS: Record<Category, string> = {
  frozen: 'frozen weights',
  trainable: 'trainable parameters',
  optimizer: 'optimizer state',
  inputs: 'data inputs',
  gradients: 'gradients',
  saved: 'saved activations',
  workspace: 'transient workspace',
};

export const PERSISTENT: readonly Category[] = ['frozen', 'trainable', 'optimizer', 'inputs'];

/**
 * The order of the persistent regions: PERSISTENT, then the gradient accumulators (grad-accum.ts),
 * which are gradients that persist from one micro-step to the next.
 */
const PERSISTENT_REGIONS: readonly Category[] = [...PERSISTENT, 'gradients'];

export interface PlanOptions {
  readonly limits?: Limits;
  /** Storage of frozen weights, activations and workspace; trainable state stays f32. */
  readonly dtype?: StorageDType;
  /** Ids of the final gradient of each trainable parameter (category 'gradients'). */
  readonly gradients?: ReadonlySet<number>;
  /**
   * The plan of a graph that does all of this graph's work and more (LoRA's, for LoRA-FA). Its
   * order and offsets, restricted to this graph's tensors, are a valid plan here too, and are
   * tried: so this plan is never worse than the dominating one.
   */
  readonly dominating?: { readonly graph: Graph; readonly plan: MemoryPlan };
  /**
   * Only this schedule candidate and this packing order (an earlier plan's `scheduleName` and
   * `packing`): a third of the work, and a peak the full planner can only match or improve on
   * where it picks the same candidate. For searches (plan --fit) that confirm their answer with
   * full plans.
   */
  readonly quick?: { readonly schedule: string; readonly packing: number };
}

export interface PlannedTensor {
  readonly id: number;
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly bytes: number;
  readonly category: Category;
  /** Inclusive schedule steps; persistent tensors span the whole step. */
  readonly start: number;
  readonly end: number;
  readonly buffer: number;
  readonly offset: number;
}

export interface PlanBuffer {
  readonly index: number;
  readonly region: 'persistent' | 'arena';
  /** For persistent buffers, what they hold. */
  readonly category?: Category;
  readonly bytes: number;
}

export interface MemoryPlan {
  readonly limits: Limits;
  readonly dtype: StorageDType;
  readonly schedule: readonly Node[];
  readonly scheduleName: string;
  /** Which packing order of the arena won (PlanOptions.quick); -1 when a dominating plan's layout was kept. */
  readonly packing: number;
  /** Step at which backward starts (the step after the loss). */
  readonly backwardStart: number;
  readonly tensors: readonly PlannedTensor[];
  /** Values that own no bytes: view → root id, write-back → target id, inlined scalars → -1. */
  readonly aliases: ReadonlyMap<number, number>;
  readonly buffers: readonly PlanBuffer[];
  readonly peak: number;
  readonly lowerBound: number;
  readonly fragmentation: number;
  /** Bytes per category at the step where live bytes peak. */
  readonly atPeak: Readonly<Record<Category, number>>;
  readonly peakStep: number;
  /** Live bytes per step, per category (for pictures). */
  readonly timeline: readonly Readonly<Record<Category, number>>[];
}

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * `update`: the value belongs to the optimizer step (its temporaries, or the lr and bias-correction
 * scalars it is fed). That arithmetic stays f32 like the state it updates: in f16, g² of a small
 * gradient underflows to 0 and AdamW divides by eps.
 */
function storageBytes(v: Value, category: Category, dtype: StorageDType, update = false, full = false): { dtype: DType; bytes: number } {
  if (v.type.dtype === 'i32') return { dtype: 'i32', bytes: 4 * numel(v.type.shape) };
  const master = full || update || category === 'trainable' || category === 'optimizer' || category === 'gradients' || numel(v.type.shape) <= 1;
  const d: DType = master ? 'f32' : dtype;
  return { dtype: d, bytes: numel(v.type.shape) * (d === 'f32' ? 4 : 2) };
}

/**
 * Values kept f32 whatever the storage dtype (`full` in storageBytes), besides scalars (the loss,
 * fed scalars: 4 bytes either way):
 * - the outputs of ops that pack per-row statistics into their result: cross_entropy and
 *   linear_cross_entropy (loss, log-sum-exp, weight per row). Backward forms exp(z − L): a bf16 L
 *   of magnitude 10–20 is off by up to 2⁻⁴, which would scale a whole row of probabilities by
 *   e^±0.06. These are [rows, 3], small. (Attention's packed O and L is half like any activation:
 *   it stores L as high + low parts, src/ir/attention.ts.)
 * - LoRA's A under LoRA-FA (frozen, so otherwise half): PEFT keeps adapters f32 over a half base
 *   model, and A is d×r, small.
 */
const F32_OUTPUT_OPS: ReadonlySet<string> = new Set(['cross_entropy', 'linear_cross_entropy']);
const keptF32 = (n: Node | undefined) => n !== undefined && F32_OUTPUT_OPS.has(n.op);

/**
 * The scalars the trainer feeds the optimizer and the loss scaler: stored f32 whatever the dtype
 * (2¹⁶, the loss scale, is past f16's largest value, and 1/S is an f16 subnormal).
 */
const MASTER_INPUTS: ReadonlySet<string> = new Set([LR_INPUT, BC1_INPUT, BC2_INPUT, ACCUM_FIRST_INPUT, GRAD_SCALE_INPUT, LOSS_SCALE_INPUT, INV_LOSS_SCALE_INPUT]);

/** The category of a parameter (persistent: weights, trainable parameters, optimizer state, accumulators). */
const paramCategory = (p: Graph['params'][number]): Category =>
  p.role === 'optimizer_state' ? 'optimizer' : p.role === 'grad_accumulator' ? 'gradients' : p.trainable ? 'trainable' : 'frozen';

/** Storage of a persistent tensor (a parameter with its role, or a data input). */
const persistentStorage = (v: Value, category: Category, dtype: StorageDType, role?: string) => storageBytes(v, category, dtype, MASTER_INPUTS.has(v.name), role === 'lora_A');

/** The optimizer's arithmetic and gradient accumulation stay f32 (see storageBytes). */
const isUpdate = (phase: string | undefined) => phase === 'update' || phase === 'accumulate';

/**
 * For each accumulator's write-back acc′ = where(first, g, acc + g) (grad-accum.ts): the sum
 * acc + g, when it can be computed in place in the accumulator as acc′ is. That takes an
 * elementwise node of the accumulator's shape that reads it element for element and is its only
 * reader (so nothing reads the old value after it is overwritten), whose result nothing but the
 * `where` reads. Otherwise the sum is left out (and planned as a transient). Sum id → target id.
 */
function accumulatedInPlace(g: Graph): Map<number, number> {
  const result = new Map<number, number>();
  const accumulators = new Map(g.params.filter((p) => p.role === 'grad_accumulator').map((p) => [p.value.name, p.value]));
  if (!accumulators.size) return result;
  const producer = new Map(g.nodes.map((n) => [n.out.id, n]));
  const readers = new Map<number, number>();
  for (const n of g.nodes) for (const x of new Set(n.inputs.map((v) => v.id))) readers.set(x, (readers.get(x) ?? 0) + 1);
  const outputs = new Set(Object.values(g.outputs).map((v) => v.id));
  for (const u of g.updates) {
    const acc = accumulators.get(u.target);
    const where = producer.get(u.value.id);
    const sum = acc && where?.op === 'where' ? producer.get(where.inputs[2].id) : undefined;
    if (!acc || !sum || opDef(sum.op).wgsl.kind !== 'map' || !sameShape(sum.out.type.shape, acc.type.shape)) continue;
    if (!sum.inputs.some((x) => x.id === acc.id && sameShape(x.type.shape, acc.type.shape))) continue;
    if (readers.get(acc.id) === 1 && readers.get(sum.out.id) === 1 && !outputs.has(sum.out.id)) result.set(sum.out.id, acc.id);
  }
  return result;
}

interface Item {
  readonly t: Omit<PlannedTensor, 'buffer' | 'offset'>;
  readonly size: number;
}

/** The tensor placed (an object literal, not a spread: a LLaMA-7B --fit places millions). */
const placedAt = (t: Item['t'], buffer: number, offset: number): PlannedTensor => ({
  id: t.id,
  name: t.name,
  shape: t.shape,
  dtype: t.dtype,
  bytes: t.bytes,
  category: t.category,
  start: t.start,
  end: t.end,
  buffer,
  offset,
});

/** Steps per block of the packer's time index (a block lists every tensor live in it). */
const PACK_BLOCK = 256;

/**
 * Placed tensors in offset order: offset, offset + size, first and last step, four numbers per
 * tensor side by side in one typed array (the scan reads them many times; an insertion moves them
 * with one copyWithin).
 */
class Placed {
  data = new Float64Array(32);
  length = 0;

  /** Inserts a tensor after those at offsets ≤ its own: equal offsets stay in placement order. */
  insert(at: number, size: number, start: number, end: number): void {
    let d = this.data;
    let lo = 0;
    let hi = this.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (d[4 * mid] <= at) lo = mid + 1;
      else hi = mid;
    }
    if (4 * (this.length + 1) > d.length) {
      const grown = new Float64Array(2 * d.length);
      grown.set(d);
      this.data = d = grown;
    }
    d.copyWithin(4 * lo + 4, 4 * lo, 4 * this.length);
    d[4 * lo] = at;
    d[4 * lo + 1] = at + size;
    d[4 * lo + 2] = start;
    d[4 * lo + 3] = end;
    this.length++;
  }
}

/**
 * Best-fit interval packing into buffers of at most `cap` bytes. Returns offsets and buffer sizes.
 *
 * Each item, in `order`, goes into the first buffer where it fits: at the start of the smallest
 * gap between the placed tensors live at the same time as it (met in offset order) that holds it,
 * or else above the highest of them. Only the live ones matter, and most tensors of a training
 * step live a few steps (LLaMA-7B: half of them 2 or fewer; 6% of the pairs overlap in time), so
 * besides the whole buffer in offset order, each buffer keeps, per block of PACK_BLOCK steps, the
 * tensors live in that block in offset order: an item whose lifetime is inside one block walks
 * that list, which holds every tensor it can meet, in the same order. A longer-lived item walks
 * the whole buffer.
 */
export function packIntervals(
  items: readonly { size: number; start: number; end: number }[],
  order: readonly number[],
  cap: number,
): { buffer: number[]; offset: number[]; sizes: number[] } {
  const buffer = new Array<number>(items.length).fill(-1);
  const offset = new Array<number>(items.length).fill(0);
  const blockOf = (step: number) => Math.floor(step / PACK_BLOCK);
  const blocks = items.reduce((m, it) => Math.max(m, blockOf(it.end) + 1), 0);
  const whole: Placed[] = [];
  const byBlock: Placed[][] = [];
  const sizes: number[] = [];
  const place = (i: number, b: number, at: number) => {
    const it = items[i];
    buffer[i] = b;
    offset[i] = at;
    whole[b].insert(at, it.size, it.start, it.end);
    for (let k = blockOf(it.start); k <= blockOf(it.end); k++) byBlock[b][k].insert(at, it.size, it.start, it.end);
    sizes[b] = Math.max(sizes[b], at + it.size);
  };
  for (const i of order) {
    const it = items[i];
    const first = blockOf(it.start);
    const within = first === blockOf(it.end);
    let done = false;
    for (let b = 0; b < whole.length && !done; b++) {
      const list = within ? byBlock[b][first] : whole[b];
      const d = list.data;
      let bestOff = -1;
      let bestGap = Infinity;
      let cursor = 0;
      for (let k = 0; k < 4 * list.length; k += 4) {
        if (!(d[k + 2] <= it.end && it.start <= d[k + 3])) continue;
        const gap = d[k] - cursor;
        if (gap >= it.size && gap < bestGap) {
          bestGap = gap;
          bestOff = cursor;
        }
        if (d[k + 1] > cursor) cursor = d[k + 1];
      }
      if (bestOff < 0) bestOff = cursor;
      if (bestOff + it.size <= cap) {
        place(i, b, bestOff);
        done = true;
      }
    }
    if (!done) {
      whole.push(new Placed());
      byBlock.push(Array.from({ length: blocks }, () => new Placed()));
      sizes.push(0);
      place(i, whole.length - 1, 0);
    }
  }
  return { buffer, offset, sizes };
}

export function planMemory(g: Graph, opts: PlanOptions = {}): MemoryPlan {
  const limits = opts.limits ?? LIMIT_PRESETS.webgpu;
  const dtype = opts.dtype ?? 'f32';
  const gradients = opts.gradients ?? new Set<number>();
  const align = limits.alignment;
  if (!(Number.isInteger(align) && align >= 4 && (align & (align - 1)) === 0)) {
    // Offsets would not be 4-byte aligned, or not satisfy any adapter (alignments are powers of 2).
    throw new LorafaError('limits', `the offset alignment must be a power of two ≥ 4, got ${align}`, 'use the adapter\'s minStorageBufferOffsetAlignment (often 256), e.g. --alignment 256');
  }

  // 1. roots and aliases
  const aliases = new Map<number, number>();
  const rootOf = (id: number): number => {
    const a = aliases.get(id);
    return a === undefined || a < 0 ? id : rootOf(a);
  };
  for (const n of g.nodes) {
    if (isView(n)) aliases.set(n.out.id, rootOf(n.inputs[0].id));
    else if (isInlineConstant(n)) aliases.set(n.out.id, -1);
  }
  const paramByName = new Map(g.params.map((p) => [p.value.name, p]));
  for (const u of g.updates) {
    const target = paramByName.get(u.target)!;
    const r = rootOf(u.value.id);
    // The value is computed in place, in its target's storage.
    aliases.set(r, target.value.id);
  }
  for (const [sum, acc] of accumulatedInPlace(g)) aliases.set(sum, acc);
  const persistentCategory = new Map<number, Category>();
  for (const p of g.params) {
    persistentCategory.set(p.value.id, paramCategory(p));
  }
  for (const i of g.inputs) persistentCategory.set(i.value.id, 'inputs');

  /**
   * Throws when a tensor is over the binding or buffer limit. `half`: its bytes under --dtype
   * f16/bf16, asked only then, to suggest the flag only where it would help.
   */
  const check = (name: string, v: Value, s: { dtype: DType; bytes: number }, half: () => number, persistentish = false) => {
    if (s.bytes <= limits.maxBindingSize && alignUp(s.bytes, align) <= limits.maxBufferSize) return;
    const halfHelps = half() < s.bytes;
    const what = `tensor ${fmtType({ dtype: s.dtype, shape: v.type.shape })} needs ${fmtBytes(s.bytes)}`;
    if (s.bytes > limits.maxBindingSize) {
      throw new LorafaError(
        name,
        `${what}, over the binding limit maxStorageBufferBindingSize = ${fmtBytes(limits.maxBindingSize)}`,
        `plan for an adapter with larger limits (--limits discrete, or --max-binding-size as \`lorafa doctor\` reports)${
          persistentish ? '' : ', lower --batch or --seq'
        }${halfHelps ? ', or use --dtype f16/bf16' : ''}`,
      );
    }
    // A buffer holds at least one whole tensor (its slot padded to the alignment).
    if (alignUp(s.bytes, align) > limits.maxBufferSize) {
      throw new LorafaError(
        name,
        `${what} (${fmtBytes(alignUp(s.bytes, align))} aligned), over the buffer limit maxBufferSize = ${fmtBytes(limits.maxBufferSize)}`,
        `raise --max-buffer-size (at least --max-binding-size, as \`lorafa doctor\` reports), lower --batch or --seq${halfHelps ? ', or use --dtype f16/bf16' : ''}`,
      );
    }
  };
  // Every tensor within the binding and buffer limits, checked before any scheduling (a plan
  // that cannot exist fails fast: plan --fit asks for such plans), in the order the plan lists
  // tensors: parameters, inputs, then computed values.
  // (A saved value is sized as workspace: the category does not change its bytes.)
  for (const [v, category, role] of [...g.params.map((p) => [p.value, paramCategory(p), p.role] as const), ...g.inputs.map((i) => [i.value, 'inputs' as Category, undefined] as const)]) {
    check(v.name, v, persistentStorage(v, category, dtype, role), () => persistentStorage(v, category, 'f16', role).bytes, category !== 'inputs');
  }
  for (const n of g.nodes) {
    if (aliases.has(n.out.id) || persistentCategory.has(n.out.id)) continue;
    const category: Category = gradients.has(n.out.id) ? 'gradients' : 'workspace';
    check(n.out.name, n.out, storageBytes(n.out, category, dtype, isUpdate(n.phase), keptF32(n)), () => storageBytes(n.out, category, 'f16', isUpdate(n.phase), keptF32(n)).bytes);
  }

  // 2. schedule and lifetimes
  // The bytes the plan will give a transient (gradients and the update stay f32 under f16), so
  // the schedules are compared on what they will really hold.
  const nodeBytes = (n: Node) => alignUp(storageBytes(n.out, gradients.has(n.out.id) ? 'gradients' : 'workspace', dtype, isUpdate(n.phase), keptF32(n)).bytes, align);
  const transientSize = (n: Node) => (aliases.has(n.out.id) ? 0 : nodeBytes(n));
  const outputs = new Set(Object.values(g.outputs).map((v) => rootOf(v.id)));
  const lossId = g.outputs.loss ? rootOf(g.outputs.loss.id) : undefined;
  const lifetimes = (order: readonly Node[]) => {
    const life = new Map<number, [number, number]>();
    order.forEach((n, step) => {
      const r = rootOf(n.out.id);
      if (!aliases.has(n.out.id) && !persistentCategory.has(r)) life.set(r, [step, step]);
      for (const x of n.inputs) {
        const l = life.get(rootOf(x.id));
        if (l) l[1] = step;
      }
    });
    for (const o of outputs) {
      const l = life.get(o);
      if (l) l[1] = order.length;
    }
    const delta = new Array<number>(order.length + 2).fill(0);
    for (const [s, e] of life.values()) {
      const sz = nodeBytes(order[s]);
      delta[s] += sz;
      delta[e + 1] -= sz;
    }
    let live = 0;
    let lb = 0;
    for (const d of delta) lb = Math.max(lb, (live += d));
    return { life, lb };
  };
  let best: { name: string; order: readonly Node[]; life: Map<number, [number, number]>; lb: number } | undefined;
  for (const cand of scheduleCandidates(g, transientSize, opts.quick?.schedule)) {
    const { life, lb } = lifetimes(cand.order);
    if (!best || lb < best.lb) best = { name: cand.name, order: cand.order, life, lb };
  }
  const planned = finish(best!.name, best!.order, best!.life);
  const seeded = opts.dominating && restrictPlan(g, opts.dominating, lifetimes, finish);
  return seeded && seeded.peak < planned.peak ? seeded : planned;

  /** Steps 3–5 for one order; with `hint`, arena offsets come from it (undefined if they clash). */
  function finish(scheduleName: string, order: readonly Node[], life: Map<number, [number, number]>): MemoryPlan;
  function finish(scheduleName: string, order: readonly Node[], life: Map<number, [number, number]>, hint: ReadonlyMap<number, Placement>): MemoryPlan | undefined;
  function finish(scheduleName: string, order: readonly Node[], life: Map<number, [number, number]>, hint?: ReadonlyMap<number, Placement>): MemoryPlan | undefined {
  const steps = order.length;
  const stepOf = new Map(order.map((n, i) => [n.out.id, i]));
  const backwardStart = lossId !== undefined && stepOf.has(lossId) ? stepOf.get(lossId)! + 1 : steps;
  const phaseOf = new Map(order.map((n) => [n.out.id, n.phase]));

  // 3. categories and sizes
  // (Every tensor's limits were checked before scheduling.)
  const persistentItems: Item[] = [];
  const addPersistent = (v: Value, category: Category, role?: string) => {
    const s = persistentStorage(v, category, dtype, role);
    persistentItems.push({ t: { id: v.id, name: v.name, shape: v.type.shape, dtype: s.dtype, bytes: s.bytes, category, start: 0, end: steps }, size: alignUp(s.bytes, align) });
  };
  for (const p of g.params) addPersistent(p.value, persistentCategory.get(p.value.id)!, p.role);
  for (const i of g.inputs) addPersistent(i.value, 'inputs');

  const valueById = new Map(order.map((n) => [n.out.id, n.out]));
  const nodeById = new Map(order.map((n) => [n.out.id, n]));
  const transientItems: Item[] = [];
  for (const [id, [s, e]] of life) {
    const v = valueById.get(id)!;
    const saved = phaseOf.get(id) === 'forward' && s < backwardStart && e >= backwardStart && id !== lossId;
    const category: Category = gradients.has(id) ? 'gradients' : saved ? 'saved' : 'workspace';
    const st = storageBytes(v, category, dtype, isUpdate(phaseOf.get(id)), keptF32(nodeById.get(id)));
    transientItems.push({ t: { id, name: v.name, shape: v.type.shape, dtype: st.dtype, bytes: st.bytes, category, start: s, end: e }, size: alignUp(st.bytes, align) });
  }

  // 4. persistent regions (one run of buffers per category), then the arena
  const tensors: PlannedTensor[] = [];
  const buffers: PlanBuffer[] = [];
  for (const category of PERSISTENT_REGIONS) {
    let current: { index: number; bytes: number } | undefined;
    for (const it of persistentItems.filter((x) => x.t.category === category)) {
      if (!current || current.bytes + it.size > limits.maxBufferSize) {
        if (current) buffers.push({ index: current.index, region: 'persistent', category, bytes: current.bytes });
        current = { index: buffers.length, bytes: 0 };
      }
      tensors.push(placedAt(it.t, current.index, current.bytes));
      current.bytes += it.size;
    }
    if (current) buffers.push({ index: current.index, region: 'persistent', category, bytes: current.bytes });
  }
  const orders: ((a: Item, b: Item) => number)[] = [
    (a, b) => b.size - a.size || a.t.start - b.t.start,
    (a, b) => b.t.end - b.t.start - (a.t.end - a.t.start) || b.size - a.size,
    (a, b) => a.t.start - b.t.start || b.size - a.size,
  ];
  const intervals = transientItems.map((it) => ({ size: it.size, start: it.t.start, end: it.t.end }));
  let packed: ReturnType<typeof packIntervals> | undefined;
  if (hint) {
    packed = fromHint(transientItems, hint);
    if (!packed) return undefined;
  }
  let packing = -1;
  orders.forEach((cmp, k) => {
    if (hint || (opts.quick && opts.quick.packing >= 0 && opts.quick.packing !== k)) return;
    const idx = transientItems.map((_, i) => i).sort((a, b) => cmp(transientItems[a], transientItems[b]));
    const p = packIntervals(intervals, idx, limits.maxBufferSize);
    const total = p.sizes.reduce((s, x) => s + x, 0);
    if (!packed || total < packed.sizes.reduce((s, x) => s + x, 0)) [packed, packing] = [p, k];
  });
  const arenaBase = buffers.length;
  packed!.sizes.forEach((bytes, i) => buffers.push({ index: arenaBase + i, region: 'arena', bytes }));
  transientItems.forEach((it, i) => tensors.push(placedAt(it.t, arenaBase + packed!.buffer[i], packed!.offset[i])));

  // 5. accounting
  const timeline: Record<Category, number>[] = Array.from({ length: steps + 1 }, () => zeroCategories());
  const persistentBytes = zeroCategories();
  for (const it of persistentItems) persistentBytes[it.t.category] += it.size;
  // Live bytes per category along the steps, from each tensor's birth and death (a running sum).
  const delta = new Map<Category, Float64Array>();
  for (const it of transientItems) {
    let d = delta.get(it.t.category);
    if (!d) delta.set(it.t.category, (d = new Float64Array(steps + 2)));
    d[it.t.start] += it.size;
    d[it.t.end + 1] -= it.size;
  }
  for (const [category, d] of delta) {
    let live = 0;
    for (let st = 0; st <= steps; st++) timeline[st][category] = live += d[st];
  }
  let lowerBound = 0;
  let peakStep = 0;
  timeline.forEach((row, s) => {
    for (const c of PERSISTENT) row[c] = persistentBytes[c];
    row.gradients += persistentBytes.gradients;
    const total = CATEGORIES.reduce((acc, c) => acc + row[c], 0);
    if (total > lowerBound) {
      lowerBound = total;
      peakStep = s;
    }
  });
  const peak = buffers.reduce((s, b) => s + b.bytes, 0);
  return {
    limits,
    dtype,
    schedule: order,
    scheduleName,
    packing,
    backwardStart,
    tensors,
    aliases,
    buffers,
    peak,
    lowerBound,
    fragmentation: lowerBound ? peak / lowerBound : 1,
    atPeak: timeline[peakStep],
    peakStep,
    timeline,
  };
  }
}

/** Where a dominating plan put a tensor's counterpart. */
interface Placement {
  readonly buffer: number;
  readonly offset: number;
  readonly size: number;
}

/**
 * A node's identity across two compilations of one model (ids differ; names, shapes and operands
 * do not), numbered by occurrence in program order.
 */
function nodeKeys(g: Graph): Map<Node, string> {
  const seen = new Map<string, number>();
  const keys = new Map<Node, string>();
  for (const n of g.nodes) {
    const base = `${n.op}|${n.out.name}|${n.out.type.shape.join(',')}|${n.inputs.map((x) => `${x.name}:${x.type.shape.join(',')}`).join(';')}|${JSON.stringify(n.attrs)}`;
    const k = seen.get(base) ?? 0;
    seen.set(base, k + 1);
    keys.set(n, `${base}#${k}`);
  }
  return keys;
}

/**
 * The dominating plan restricted to `g`: its schedule order filtered to g's nodes, and its arena
 * offsets for g's tensors. Under that order each of g's tensors is born at the same kernel and
 * read by a subset of the readers of its counterpart, so its lifetime is inside the counterpart's
 * and the offsets cannot clash; `fromHint` still checks, and any mismatch gives up.
 */
function restrictPlan(
  g: Graph,
  dom: { readonly graph: Graph; readonly plan: MemoryPlan },
  lifetimes: (order: readonly Node[]) => { life: Map<number, [number, number]> },
  finish: (name: string, order: readonly Node[], life: Map<number, [number, number]>, hint: ReadonlyMap<number, Placement>) => MemoryPlan | undefined,
): MemoryPlan | undefined {
  const domKeys = nodeKeys(dom.graph);
  const domStep = new Map<string, number>();
  dom.plan.schedule.forEach((n, i) => {
    const k = domKeys.get(n);
    if (k) domStep.set(k, i);
  });
  const keys = nodeKeys(g);
  const at = new Map<Node, number>();
  for (const n of g.nodes) {
    const s = domStep.get(keys.get(n)!);
    if (s === undefined) return undefined;
    at.set(n, s);
  }
  const order = [...g.nodes].sort((a, b) => at.get(a)! - at.get(b)!);
  const position = new Map(order.map((n, i) => [n, i]));
  const deps = dependencies(g);
  if (g.nodes.some((n, i) => deps[i].some((d) => position.get(g.nodes[d])! > position.get(n)!))) return undefined;
  const domTensor = new Map(dom.plan.tensors.map((t) => [t.id, t]));
  const hint = new Map<number, Placement>();
  for (const n of dom.plan.schedule) {
    const t = domTensor.get(n.out.id);
    if (t && t.category !== 'frozen' && t.category !== 'trainable' && t.category !== 'optimizer' && t.category !== 'inputs') {
      hint.set(domStep.get(domKeys.get(n)!)!, { buffer: t.buffer, offset: t.offset, size: alignUp(t.bytes, dom.plan.limits.alignment) });
    }
  }
  // hint by this graph's value id
  const byValue = new Map<number, Placement>();
  for (const n of g.nodes) {
    const h = hint.get(at.get(n)!);
    if (h) byValue.set(n.out.id, h);
  }
  return finish('dominating', order, lifetimes(order).life, byValue);
}

/** Arena placement taken from a hint: undefined if a tensor has none, or two live tensors overlap. */
function fromHint(items: readonly Item[], hint: ReadonlyMap<number, Placement>): ReturnType<typeof packIntervals> | undefined {
  const used = new Map<number, number>();
  const buffer: number[] = [];
  const offset: number[] = [];
  for (const it of items) {
    const h = hint.get(it.t.id);
    if (!h || h.size < it.size) return undefined;
    if (!used.has(h.buffer)) used.set(h.buffer, used.size);
    buffer.push(used.get(h.buffer)!);
    offset.push(h.offset);
  }
  const sizes = new Array<number>(used.size).fill(0);
  items.forEach((it, i) => (sizes[buffer[i]] = Math.max(sizes[buffer[i]], offset[i] + it.size)));
  // No two tensors live at the same step may share a byte.
  const byBuffer = new Map<number, number[]>();
  items.forEach((_, i) => byBuffer.set(buffer[i], [...(byBuffer.get(buffer[i]) ?? []), i]));
  for (const list of byBuffer.values()) {
    list.sort((x, y) => offset[x] - offset[y]);
    for (let a = 0; a < list.length; a++) {
      const i = list[a];
      for (let b = a + 1; b < list.length && offset[list[b]] < offset[i] + items[i].size; b++) {
        const j = list[b];
        if (items[i].t.start <= items[j].t.end && items[j].t.start <= items[i].t.end) return undefined;
      }
    }
  }
  return { buffer, offset, sizes };
}

/**
 * The bytes of a plan's persistent buffers (weights, trainable parameters, optimizer state,
 * inputs, accumulators: every tensor aligned), without planning: planMemory(g, opts) has exactly
 * these. For searches that rule a step out when its persistent state alone is too big.
 */
export function persistentBytesOf(g: Graph, opts: Pick<PlanOptions, 'limits' | 'dtype'> = {}): number {
  const align = (opts.limits ?? LIMIT_PRESETS.webgpu).alignment;
  const dtype = opts.dtype ?? 'f32';
  let total = 0;
  for (const p of g.params) total += alignUp(persistentStorage(p.value, paramCategory(p), dtype, p.role).bytes, align);
  for (const i of g.inputs) total += alignUp(persistentStorage(i.value, 'inputs', dtype).bytes, align);
  return total;
}

export function zeroCategories(): Record<Category, number> {
  // Spelled out in CATEGORIES' order (the plan's JSON lists them so): a literal is much cheaper
  // than one built from the list, and a plan builds one per step.
  return { frozen: 0, trainable: 0, optimizer: 0, inputs: 0, gradients: 0, saved: 0, workspace: 0 };
}
