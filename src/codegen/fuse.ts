// Elementwise fusion: runs of map ops (add, mul, tanh, gelu, …) of one output shape become one
// kernel that keeps the intermediates in registers: W1's hidden layer forward (add of the x·W and
// adapter paths, then gelu) and backward (the add summing the incoming gradients, then gelu_grad)
// are one pass each; softmax's and RMSNorm's backward chains likewise.
//
// The memory plan is still the plan of the unfused graph: every value keeps its planned bytes,
// and the fused kernel writes only the values someone outside the group reads (or that are graph
// outputs); the other intermediates' bytes are simply left unwritten. The kernel runs where the
// group's last node was scheduled, so a group is only formed when that is safe:
//
// 1. Members are map nodes with an f32 output in their own storage (not written back in place
//    into a parameter), all of one output shape, reading f32 operands.
// 2. A node joins the group(s) of the map operands it reads (same shape), in schedule order.
// 3. No node outside the group reads a member before the group's last position (the fused kernel
//    has not run yet).
// 4. Every operand the group reads from outside keeps its bytes from the first member that reads
//    it to the fused kernel: no dispatch in between writes over them (the plan may already have
//    given them away, their last unfused reader being earlier), and no value the fused kernel
//    stores overlaps them (one invocation would overwrite what another still reads), unless it
//    is the very same bytes read element for element: then the operand is read through that
//    output's binding (WebGPU rejects two overlapping writable bindings), as in place.
// 5. At most 8 storage bindings (the WebGPU default per shader stage).
// 6. With `separateUpdate` (a graph with gradient accumulators), update-phase nodes and the rest
//    never share a group: micro-steps that do not update skip the update's kernels.
//
// Measured on W1 (LoRA-FA, SGD, lavapipe on 2 cores): dispatches 113 → 52; median step with the
// subgroup matmul 329 → 246 ms (cores idle; bench/results/gpu.md, "no fusion" row), and in CPU
// ms with the cores shared with other jobs 545–549 → 375–400 (portable matmul: 790–825 → 665–671).
import { OPS, type OpName } from '../ir/ops.ts';
import { numel, sameShape, type Node, type Value } from '../ir/types.ts';
import type { EmitContext, KernelSource } from './kernel.ts';
import { broadcastStrides, gatherIndex, grid1d, lit } from './wgsl.ts';
import { access, declare, defaultElem, type Access } from './storage.ts';

export interface FusedGroup {
  /** Members in schedule order; the fused kernel runs at the last one's position. */
  readonly nodes: readonly Node[];
  /** Members whose values are written: read outside the group, or outputs of the graph. */
  readonly stored: readonly Value[];
  /**
   * Operands (by storage root) whose bytes are exactly those of a stored value (the plan gave
   * them away after their last unfused read): read through that output's binding, element i
   * before writing element i, as an in-place elementwise kernel does. Value: index in `stored`.
   */
  readonly inPlace: ReadonlyMap<number, number>;
}

export interface ByteRange {
  readonly buffer: number;
  readonly offset: number;
  readonly size: number;
}

export interface FusionOptions {
  /** Root storage id of a value (views share their root's). */
  readonly storage: (v: Value) => number;
  /** Inlined scalar constants by value id (they are literals, not operands). */
  readonly constants: ReadonlyMap<number, number>;
  /** Whether a node runs a kernel (views and inlined constants do not). */
  readonly dispatched: (n: Node) => boolean;
  /** Bytes of a storage root (by root id); undefined when it has none. */
  readonly bytes: (root: number) => ByteRange | undefined;
  /** Root ids of the graph's outputs (always stored). */
  readonly outputs: ReadonlySet<number>;
  readonly maxBindings?: number;
  /** Rule 6: an update-phase node joins only update-phase groups, any other node only others. */
  readonly separateUpdate?: boolean;
}

const isMapOp = (n: Node) => OPS[n.op as OpName]?.wgsl.kind === 'map';

function overlaps(a: ByteRange | undefined, b: ByteRange | undefined): boolean {
  return !!a && !!b && a.buffer === b.buffer && a.offset < b.offset + b.size && b.offset < a.offset + a.size;
}

/**
 * Groups of two or more map nodes to fuse, keyed by each member's output id. Nodes in no group
 * run unfused.
 */
export function planFusion(schedule: readonly Node[], opts: FusionOptions): Map<number, FusedGroup> {
  const maxBindings = opts.maxBindings ?? 8;
  const pos = new Map<number, number>();
  schedule.forEach((n, i) => pos.set(n.out.id, i));
  // Positions of the dispatches that read each storage root, and what each dispatch writes.
  const readers = new Map<number, number[]>();
  schedule.forEach((n, i) => {
    if (!opts.dispatched(n)) return;
    for (const x of n.inputs) {
      if (opts.constants.has(x.id)) continue;
      const r = opts.storage(x);
      let list = readers.get(r);
      if (!list) readers.set(r, (list = []));
      if (list.at(-1) !== i) list.push(i);
    }
  });
  const candidate = (n: Node) =>
    opts.dispatched(n) &&
    isMapOp(n) &&
    n.out.type.dtype === 'f32' &&
    opts.storage(n.out) === n.out.id &&
    n.inputs.every((x) => x.type.dtype === 'f32');

  interface Group {
    nodes: Node[];
    ids: Set<number>;
  }

  /**
   * The members that must be written, or undefined if the group cannot run at its last node.
   * `strict` false checks only rule 3 (structure); byte hazards and the binding count are
   * checked on the finished group, since a value the group stores while it grows (and that
   * would overlap an operand) often becomes internal a few nodes later.
   */
  const check = (nodes: readonly Node[], ids: ReadonlySet<number>, strict: boolean): Omit<FusedGroup, 'nodes'> | undefined => {
    const last = pos.get(nodes[nodes.length - 1].out.id)!;
    const shape = nodes[nodes.length - 1].out.type.shape;
    const stored: Value[] = [];
    for (const n of nodes) {
      const outside = (readers.get(n.out.id) ?? []).filter((p) => !ids.has(schedule[p].out.id));
      if (outside.some((p) => p < last)) return undefined; // 3.
      if (outside.length || opts.outputs.has(n.out.id)) stored.push(n.out);
    }
    const inPlace = new Map<number, number>();
    if (!strict) return { stored, inPlace };
    // External operands: storage root → first member position reading it, and whether every
    // read is of the group's full shape.
    const external = new Map<number, { first: number; full: boolean }>();
    for (const n of nodes) {
      for (const x of n.inputs) {
        if (opts.constants.has(x.id) || ids.has(x.id)) continue;
        const r = opts.storage(x);
        if (ids.has(r)) return undefined; // a view of a member: it may never be written
        const e = external.get(r) ?? { first: pos.get(n.out.id)!, full: true };
        e.full &&= sameShape(x.type.shape, shape);
        external.set(r, e);
      }
    }
    for (const [r, { first, full }] of external) {
      const mine = opts.bytes(r);
      if (!mine) continue;
      for (const [j, v] of stored.entries()) {
        const theirs = opts.bytes(v.id);
        if (!overlaps(mine, theirs)) continue;
        // 4., in-kernel: only the very same bytes, read element for element, are safe.
        if (!full || mine.offset !== theirs!.offset || mine.size !== theirs!.size) return undefined;
        inPlace.set(r, j);
      }
      for (let p = first + 1; p < last; p++) {
        const w = schedule[p];
        if (!opts.dispatched(w) || ids.has(w.out.id)) continue;
        if (overlaps(mine, opts.bytes(opts.storage(w.out)))) return undefined; // 4., in between
      }
    }
    if (external.size - inPlace.size + stored.length > maxBindings) return undefined; // 5.
    return { stored, inPlace };
  };

  const isUpdate = (n: Node) => n.phase === 'update';
  /** Greedy grouping of `nodes` (in schedule order): each joins the groups it reads from. */
  const form = (nodes: readonly Node[], strict: boolean): Group[] => {
    const groupOf = new Map<number, Group>();
    for (const n of nodes) {
      const feeders: Group[] = [];
      for (const x of n.inputs) {
        const g = groupOf.get(x.id);
        if (opts.separateUpdate && g && isUpdate(g.nodes[0]) !== isUpdate(n)) continue; // 6.
        if (g && !feeders.includes(g) && sameShape(x.type.shape, n.out.type.shape)) feeders.push(g);
      }
      // Largest merge first, then each feeder alone, else a group of its own.
      const tries = feeders.length > 1 ? [feeders, ...feeders.map((f) => [f])] : [feeders];
      let joined: Group | undefined;
      for (const t of tries) {
        if (!t.length) break;
        const members = [...t.flatMap((g) => g.nodes), n].sort((p, q) => pos.get(p.out.id)! - pos.get(q.out.id)!);
        const ids = new Set(members.map((m) => m.out.id));
        if (check(members, ids, strict)) {
          joined = { nodes: members, ids };
          break;
        }
      }
      joined ??= { nodes: [n], ids: new Set([n.out.id]) };
      for (const m of joined.nodes) groupOf.set(m.out.id, joined);
    }
    return [...new Set(groupOf.values())];
  };

  // Structural groups first; one that fails the byte and binding checks is regrouped strictly.
  const result = new Map<number, FusedGroup>();
  const accept = (g: Group, strict = check(g.nodes, g.ids, true)) => {
    if (!strict) return false;
    const fused: FusedGroup = { nodes: g.nodes, ...strict };
    for (const m of g.nodes) result.set(m.out.id, fused);
    return true;
  };
  for (const g of form(schedule.filter(candidate), false)) {
    if (g.nodes.length < 2 || accept(g)) continue;
    for (const h of form(g.nodes, true)) if (h.nodes.length > 1) accept(h);
  }
  return result;
}

/**
 * One kernel for a fused group. Bindings: the external operands (one per storage root, in first
 * use order), then the stored values in `group.stored` order. When every operand of full shape
 * and every output can be read as vec4 (element count a multiple of 4), each invocation handles
 * four elements; broadcast operands are read element by element.
 */
export function emitFused(group: FusedGroup, ctx: EmitContext): KernelSource {
  const key = ctx.storage ?? ((v: Value) => v.id);
  const shape = group.nodes[group.nodes.length - 1].out.type.shape;
  const total = numel(shape);
  const ids = new Set(group.nodes.map((n) => n.out.id));
  const bound: Value[] = [];
  const slotOf = new Map<number, number>();
  const full = new Map<number, boolean>(); // per slot: every read is of the full shape
  for (const n of group.nodes) {
    for (const x of n.inputs) {
      if (ctx.constants.has(x.id) || ids.has(x.id) || group.inPlace.has(key(x))) continue;
      const r = key(x);
      let slot = slotOf.get(r);
      if (slot === undefined) {
        slot = bound.length;
        slotOf.set(r, slot);
        bound.push(x);
      }
      full.set(slot, (full.get(slot) ?? true) && sameShape(x.type.shape, shape));
    }
  }
  const vec = total % 4 === 0;
  const lanes = vec ? 4 : 1;
  const elem = ctx.elem ?? defaultElem;
  const ins = bound.map((x, s) => access(s, `in${s}`, elem(x), { vec: vec && full.get(s) }));
  const outs = group.stored.map((v, j) => access(bound.length + j, `out${j}`, elem(v), { vec, written: true }));
  const load = (a: Access, wide: boolean) => (wide ? a.ld4('i') : a.ld('i'));

  const lines: string[] = [];
  // Full-shape operands: one (vec4) load each, before any store.
  for (let s = 0; s < bound.length; s++) if (full.get(s)) lines.push(`let x${s} = ${load(ins[s], vec)};`);
  for (const j of new Set(group.inPlace.values())) lines.push(`let o${j} = ${load(outs[j], vec)};`);
  const XYZW = ['x', 'y', 'z', 'w'];
  const gathered = new Set<string>();
  const operand = (x: Value, lane: number): string => {
    if (ctx.constants.has(x.id)) return lit(ctx.constants.get(x.id)!);
    if (ids.has(x.id)) return `v${x.id}_${lane}`;
    const j = group.inPlace.get(key(x));
    if (j !== undefined) return vec ? `o${j}.${XYZW[lane]}` : `o${j}`;
    const s = slotOf.get(key(x))!;
    if (full.get(s)) return vec ? `x${s}.${XYZW[lane]}` : `x${s}`;
    // A broadcast operand: the element this lane's output coordinate maps to.
    const name = `g${x.id}_${lane}`;
    if (!gathered.has(name)) {
      gathered.add(name);
      const idx = vec ? `i * 4u + ${lane}u` : 'i';
      lines.push(`${gatherIndex(`j${x.id}_${lane}`, idx, shape, broadcastStrides(x.type.shape, shape))} let ${name} = ${ins[s].ld(`j${x.id}_${lane}`)};`);
    }
    return name;
  };
  for (const n of group.nodes) {
    const def = OPS[n.op as OpName].wgsl;
    if (def.kind !== 'map') throw new Error(`fusion: ${n.op} is not elementwise`);
    const expr = def.expr as (a: readonly string[], attrs: unknown) => string;
    for (let lane = 0; lane < lanes; lane++) {
      const args = n.inputs.map((x) => operand(x, lane));
      lines.push(`let v${n.out.id}_${lane} = ${expr(args, n.attrs)};`);
    }
  }
  group.stored.forEach((v, j) => {
    const vals = Array.from({ length: lanes }, (_, lane) => `v${v.id}_${lane}`);
    lines.push(vec ? outs[j].st4('i', `vec4<f32>(${vals.join(', ')})`) : outs[j].st('i', vals[0]));
  });
  const count = total / lanes;
  return {
    bound,
    workgroups: grid1d(count, ctx),
    wgsl: `${declare([...ins, ...outs])}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= ${count}u) { return; }
  ${lines.join('\n  ')}
}
`,
  };
}
