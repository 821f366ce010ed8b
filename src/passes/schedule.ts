// An execution order for the joint forward + backward + update graph. The order decides peak
// memory, so the scheduler is memory-aware.
//
// 1. Dependencies: each node after the producers of its inputs, and each write-back producer
//    (the node computing a parameter's or a state's new value, written in place) after every
//    other reader of that target, so nothing reads a tensor after it was overwritten.
// 2. Candidates: program order (the Builder's: forward, then backward in reverse) and a greedy
//    list schedule that, among ready nodes, runs the one that frees the most bytes net (bytes of
//    inputs it is the last reader of, minus the bytes it allocates); ties keep program order.
//    Under it, each parameter's update runs as soon as its gradient exists, so gradients do not
//    pile up until the end of backward. Recompute nodes (remat.ts) never jump the queue: they
//    run where the pass placed them, just before their first reader.
// 3. The caller keeps the candidate with the lowest peak of live bytes.
import type { Graph, Node } from '../ir/types.ts';
import { opDef } from '../ir/ops.ts';

/** Bytes a node's output occupies in the arena (0 for views and inlined scalar constants). */
export type SizeOf = (n: Node) => number;

export interface ScheduleCandidate {
  readonly name: string;
  readonly order: readonly Node[];
}

/** Whether a node's output is a view of its input (no buffer of its own). */
export function isView(n: Node): boolean {
  return opDef(n.op).wgsl.kind === 'view';
}

/** Scalar constants are inlined into the kernels that read them. */
export function isInlineConstant(n: Node): boolean {
  return n.op === 'fill' && n.out.type.shape.length === 0;
}

const depsCache = new WeakMap<Graph, number[][]>();

/** Predecessor indices of every node (data dependencies plus write-after-read edges). */
export function dependencies(g: Graph): number[][] {
  const hit = depsCache.get(g);
  if (hit) return hit;
  const producer = new Map<number, number>();
  g.nodes.forEach((n, i) => producer.set(n.out.id, i));
  const deps = g.nodes.map((n) => [...new Set(n.inputs.map((x) => producer.get(x.id)).filter((i): i is number => i !== undefined))]);
  // Readers of each storage root, through views, indexed once.
  const root = new Map<number, number>();
  const rootOf = (id: number): number => root.get(id) ?? id;
  const readers = new Map<number, number[]>();
  g.nodes.forEach((n, i) => {
    for (const x of new Set(n.inputs.map((v) => rootOf(v.id)))) {
      const list = readers.get(x);
      if (list) list.push(i);
      else readers.set(x, [i]);
    }
    if (isView(n)) root.set(n.out.id, rootOf(n.inputs[0].id));
  });
  const paramIds = new Map(g.params.map((p) => [p.value.name, p.value.id]));
  for (const u of g.updates) {
    const writer = producer.get(u.value.id);
    const target = paramIds.get(u.target);
    if (writer === undefined || target === undefined) continue;
    const have = new Set(deps[writer]);
    for (const i of readers.get(target) ?? []) if (i !== writer && !have.has(i)) deps[writer].push(i);
  }
  depsCache.set(g, deps);
  return deps;
}

/**
 * List scheduling: repeatedly runs one ready node: the first in `key` order, or (greedy) the one
 * that frees the most bytes net (bytes freed minus bytes allocated), if any frees some.
 */
function listSchedule(g: Graph, sizeOf: SizeOf, key: readonly number[], greedy: boolean): Node[] {
  const n = g.nodes.length;
  const deps = dependencies(g);
  const succ: number[][] = g.nodes.map(() => []);
  deps.forEach((ds, i) => ds.forEach((d) => succ[d].push(i)));
  const pending = deps.map((d) => d.length);
  const producer = new Map<number, number>();
  g.nodes.forEach((node, i) => producer.set(node.out.id, i));
  // Storage is charged to the root of a chain of views.
  const root = new Map<number, number>();
  const rootOf = (id: number): number => root.get(id) ?? id;
  for (const node of g.nodes) if (isView(node)) root.set(node.out.id, rootOf(node.inputs[0].id));
  // Each node's distinct input roots, and each root's unscheduled readers.
  const ins = g.nodes.map((node) => [...new Set(node.inputs.map((v) => rootOf(v.id)))]);
  const readers = new Map<number, number>();
  for (const xs of ins) for (const x of xs) readers.set(x, (readers.get(x) ?? 0) + 1);
  const kept = new Set([...Object.values(g.outputs), ...g.updates.map((u) => u.value)].map((v) => rootOf(v.id)));
  const size = g.nodes.map((node) => sizeOf(node));
  const bytesOf = (id: number) => {
    const p = producer.get(id);
    return p === undefined ? 0 : size[p];
  };
  const gain = (i: number) => {
    let freed = 0;
    for (const x of ins[i]) if (readers.get(x) === 1 && !kept.has(x)) freed += bytesOf(x);
    return freed - size[i];
  };
  // The ready nodes: a heap by key (the next in keyed order is its top; nodes taken by the greedy
  // rule are skipped there lazily) and, for the greedy rule, a list of those that may jump.
  const heap: number[] = [];
  const less = (a: number, b: number) => key[heap[a]] < key[heap[b]];
  const push = (i: number) => {
    heap.push(i);
    for (let c = heap.length - 1; c > 0; ) {
      const p = (c - 1) >> 1;
      if (!less(c, p)) break;
      [heap[c], heap[p]] = [heap[p], heap[c]];
      c = p;
    }
  };
  const pop = () => {
    const top = heap[0];
    const last = heap.pop()!;
    if (heap.length) {
      heap[0] = last;
      for (let c = 0; ; ) {
        const l = 2 * c + 1;
        const r = l + 1;
        let m = c;
        if (l < heap.length && less(l, m)) m = l;
        if (r < heap.length && less(r, m)) m = r;
        if (m === c) break;
        [heap[c], heap[m]] = [heap[m], heap[c]];
        c = m;
      }
    }
    return top;
  };
  const taken = new Array<boolean>(n).fill(false);
  const jumpers: number[] = [];
  const at = new Array<number>(n).fill(-1);
  const removeJumper = (i: number) => {
    const k = at[i];
    if (k < 0) return;
    const last = jumpers.pop()!;
    if (last !== i) {
      jumpers[k] = last;
      at[last] = k;
    }
    at[i] = -1;
  };
  const makeReady = (i: number) => {
    push(i);
    // A recompute node (remat.ts) runs at its place, just before its first reader: pulled early,
    // it would hold its output as long as the value it replaces.
    if (greedy && !g.nodes[i].recompute) {
      at[i] = jumpers.length;
      jumpers.push(i);
    }
  };
  for (let i = 0; i < n; i++) if (pending[i] === 0) makeReady(i);
  const order: Node[] = [];
  for (let left = n; left > 0; left--) {
    let i = -1;
    if (greedy) {
      // Only a node that frees memory jumps the queue: one that merely allocates less would be
      // pulled early and held (e.g. an update's p·wd term, ready from the first step). Among
      // those that free the most, the first in keyed order.
      let bestGain = 0;
      for (const j of jumpers) {
        const gj = gain(j);
        if (gj > bestGain || (gj === bestGain && gj > 0 && key[j] < key[i])) {
          i = j;
          bestGain = gj;
        }
      }
    }
    if (i < 0) {
      while (heap.length && taken[heap[0]]) pop();
      if (!heap.length) break;
      i = pop();
    }
    taken[i] = true;
    removeJumper(i);
    order.push(g.nodes[i]);
    for (const x of ins[i]) readers.set(x, readers.get(x)! - 1);
    for (const s of succ[i]) if (--pending[s] === 0) makeReady(s);
  }
  if (order.length !== n) throw new Error(`schedule: dependency cycle (${n - order.length} nodes unscheduled)`);
  return order;
}

/**
 * Keys that keep program order for forward and backward but move update nodes: one that depends
 * on a gradient runs just after its last dependency (so a parameter is updated, and its gradient
 * freed, as soon as possible); one that reads only stored state (m·β1, p·wd) runs just before its
 * first consumer, instead of being held from the start of the step.
 */
function eagerUpdateKeys(g: Graph): number[] {
  // Gradient accumulation (grad-accum.ts) moves with the update: each acc′ = where(first, g,
  // acc + g) runs as soon as g exists, so g dies there, as it would at its update.
  const movable = (n: Node) => n.phase === 'update' || n.phase === 'accumulate';
  const deps = dependencies(g);
  const n = g.nodes.length;
  const tiny = (i: number) => (i + 1) / (n + 1) / (n + 2);
  const key = new Array<number>(n);
  const needsGrad = new Array<boolean>(n).fill(false);
  // Program order is topological, so one forward pass settles the ASAP keys.
  for (let i = 0; i < n; i++) {
    if (!movable(g.nodes[i])) {
      key[i] = i;
      continue;
    }
    needsGrad[i] = deps[i].some((d) => g.nodes[d].phase !== 'update' || needsGrad[d]);
    key[i] = Math.max(-1, ...deps[i].map((d) => key[d])) + tiny(i);
  }
  const succ: number[][] = g.nodes.map(() => []);
  deps.forEach((ds, i) => ds.forEach((d) => succ[d].push(i)));
  for (let i = n - 1; i >= 0; i--) {
    if (movable(g.nodes[i]) && !needsGrad[i] && succ[i].length) key[i] = Math.min(...succ[i].map((s) => key[s])) - tiny(i);
  }
  return key;
}

/** The candidate orders, or with `only` just the one of that name. */
export function scheduleCandidates(g: Graph, sizeOf: SizeOf, only?: string): ScheduleCandidate[] {
  let eager: number[] | undefined;
  const eagerKeys = () => (eager ??= eagerUpdateKeys(g));
  const all: { name: string; order: () => readonly Node[] }[] = [
    { name: 'program', order: () => listSchedule(g, sizeOf, g.nodes.map((_, i) => i), false) },
    { name: 'eager-update', order: () => listSchedule(g, sizeOf, eagerKeys(), false) },
    { name: 'greedy', order: () => listSchedule(g, sizeOf, eagerKeys(), true) },
  ];
  return all.filter((c) => only === undefined || c.name === only).map((c) => ({ name: c.name, order: c.order() }));
}
