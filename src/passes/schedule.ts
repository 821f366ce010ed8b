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

/** A binary heap: `before(a, b)` when a comes out first. */
class MinHeap<T> {
  private readonly items: T[] = [];

  constructor(private readonly before: (a: T, b: T) => boolean) {}

  get size(): number {
    return this.items.length;
  }

  get top(): T {
    return this.items[0];
  }

  push(x: T): void {
    const h = this.items;
    h.push(x);
    for (let c = h.length - 1; c > 0; ) {
      const p = (c - 1) >> 1;
      if (!this.before(h[c], h[p])) break;
      [h[c], h[p]] = [h[p], h[c]];
      c = p;
    }
  }

  pop(): T {
    const h = this.items;
    const top = h[0];
    const last = h.pop()!;
    if (h.length) {
      h[0] = last;
      for (let c = 0; ; ) {
        const l = 2 * c + 1;
        const r = l + 1;
        let m = c;
        if (l < h.length && this.before(h[l], h[m])) m = l;
        if (r < h.length && this.before(h[r], h[m])) m = r;
        if (m === c) break;
        [h[c], h[m]] = [h[m], h[c]];
        c = m;
      }
    }
    return top;
  }
}

/** Scalar constants are inlined into the kernels that read them. */
export function isInlineConstant(n: Node): boolean {
  return n.op === 'fill' && n.out.type.shape.length === 0;
}

/** One more than the largest value id in the graph: the length of arrays indexed by value id. */
function idBound(g: Graph): number {
  let m = g.nextId;
  for (const n of g.nodes) {
    if (n.out.id >= m) m = n.out.id + 1;
    for (const x of n.inputs) if (x.id >= m) m = x.id + 1;
  }
  for (const v of [...g.params.map((p) => p.value), ...g.inputs.map((i) => i.value), ...Object.values(g.outputs), ...g.updates.map((u) => u.value)]) {
    if (v.id >= m) m = v.id + 1;
  }
  return m;
}

/** Per value id, the root of its chain of views (itself when it is no view): where it is stored. */
function viewRoots(g: Graph, ids: number): Int32Array {
  const root = new Int32Array(ids);
  for (let id = 0; id < ids; id++) root[id] = id;
  for (const n of g.nodes) if (isView(n)) root[n.out.id] = root[n.inputs[0].id];
  return root;
}

/** Each node's distinct input roots, in the order it reads them. */
function inputRoots(g: Graph, root: Int32Array): number[][] {
  return g.nodes.map((n) => {
    const xs: number[] = [];
    for (const v of n.inputs) if (!xs.includes(root[v.id])) xs.push(root[v.id]);
    return xs;
  });
}

const depsCache = new WeakMap<Graph, number[][]>();

/** Predecessor indices of every node (data dependencies plus write-after-read edges). */
export function dependencies(g: Graph): number[][] {
  const hit = depsCache.get(g);
  if (hit) return hit;
  const ids = idBound(g);
  const producer = new Int32Array(ids).fill(-1);
  g.nodes.forEach((n, i) => (producer[n.out.id] = i));
  const deps = g.nodes.map((n) => {
    const ds: number[] = [];
    for (const x of n.inputs) if (producer[x.id] >= 0 && !ds.includes(producer[x.id])) ds.push(producer[x.id]);
    return ds;
  });
  // Readers of each write-back target, through views.
  const paramIds = new Map(g.params.map((p) => [p.value.name, p.value.id]));
  const readers = new Map<number, number[]>();
  for (const u of g.updates) if (paramIds.has(u.target)) readers.set(paramIds.get(u.target)!, []);
  inputRoots(g, viewRoots(g, ids)).forEach((xs, i) => {
    for (const x of xs) readers.get(x)?.push(i);
  });
  for (const u of g.updates) {
    const writer = producer[u.value.id];
    const target = paramIds.get(u.target);
    if (writer < 0 || target === undefined) continue;
    const have = new Set(deps[writer]);
    for (const i of readers.get(target)!) if (i !== writer && !have.has(i)) deps[writer].push(i);
  }
  depsCache.set(g, deps);
  return deps;
}

/** What every candidate order of one graph shares: who waits for whom, what each node reads and allocates. */
interface ScheduleGraph {
  readonly g: Graph;
  readonly succ: readonly number[][];
  readonly indegree: readonly number[];
  /** Each node's distinct input roots (storage is charged to the root of a chain of views). */
  readonly ins: readonly number[][];
  /** Per root id: how many nodes read it, and the sum of their indices. */
  readonly readers: Int32Array;
  readonly readerSum: Float64Array;
  /** Per root id: held past the step (an output or a write-back), so no reader frees it. */
  readonly kept: Uint8Array;
  /** Per root id: the bytes its producer allocates (0 for parameters and inputs). */
  readonly bytes: Float64Array;
  /** Per node: the bytes it allocates. */
  readonly size: Float64Array;
}

function scheduleGraph(g: Graph, sizeOf: SizeOf): ScheduleGraph {
  const ids = idBound(g);
  const deps = dependencies(g);
  const succ: number[][] = g.nodes.map(() => []);
  deps.forEach((ds, i) => ds.forEach((d) => succ[d].push(i)));
  const root = viewRoots(g, ids);
  const ins = inputRoots(g, root);
  const readers = new Int32Array(ids);
  const readerSum = new Float64Array(ids);
  ins.forEach((xs, i) => {
    for (const x of xs) {
      readers[x]++;
      readerSum[x] += i;
    }
  });
  const kept = new Uint8Array(ids);
  for (const v of [...Object.values(g.outputs), ...g.updates.map((u) => u.value)]) kept[root[v.id]] = 1;
  const size = Float64Array.from(g.nodes, sizeOf);
  const bytes = new Float64Array(ids);
  g.nodes.forEach((n, i) => (bytes[n.out.id] = size[i]));
  return { g, succ, indegree: deps.map((d) => d.length), ins, readers, readerSum, kept, bytes, size };
}

/**
 * List scheduling: repeatedly runs one ready node: the first in `key` order, or (greedy) the one
 * that frees the most bytes net (bytes freed minus bytes allocated), if any frees some.
 */
function listSchedule(sg: ScheduleGraph, key: readonly number[], greedy: boolean): Node[] {
  const { g, succ, ins, kept, bytes, size } = sg;
  const n = g.nodes.length;
  const pending = [...sg.indegree];
  // Each root's unscheduled readers: how many, and the sum of their indices (the last one's index,
  // once one is left).
  const readers = sg.readers.slice();
  const readerSum = sg.readerSum.slice();
  // The greedy rule needs, for each ready node, the bytes it would free: the inputs it is the last
  // unscheduled reader of. Rescanning every ready node at every step was most of a LLaMA-7B plan
  // (thousands of ready update nodes × thousands of steps), so `freed` is kept up to date instead:
  // a root's reader count only falls, and when it reaches 1 exactly one node, its last reader,
  // gains its bytes. A node's gain therefore only grows while it waits.
  const freed = new Float64Array(n);
  if (greedy) {
    ins.forEach((xs, i) => {
      for (const x of xs) if (readers[x] === 1 && !kept[x]) freed[i] += bytes[x];
    });
  }
  const gain = (i: number) => freed[i] - size[i];
  // The ready nodes: a heap by key (the next in keyed order is its top; nodes taken by the greedy
  // rule are skipped there lazily) and, for the greedy rule, the ready nodes that may jump.
  const heap = new MinHeap((a: number, b: number) => key[a] < key[b]);
  const taken = new Uint8Array(n);
  // The jumpers that free bytes, by most freed then first in key order: the greedy choice is its
  // top. Entries go stale (taken, or the node's gain grew since) and are dropped when met.
  const better = new MinHeap<{ i: number; gain: number }>((a, b) => a.gain > b.gain || (a.gain === b.gain && key[a.i] < key[b.i]));
  // The rule was first written as a scan of the ready list (`jumpers`, in the order kept below),
  // which settles a tie in gain and key on the first in that list; the list is kept so that the
  // rare tie (two nodes of one key) still goes the same way.
  const jumpers: number[] = [];
  const at = new Int32Array(n).fill(-1);
  const sameKey = new Map<number, number[]>();
  if (greedy) {
    const byKey = new Map<number, number[]>();
    key.forEach((k, i) => {
      const list = byKey.get(k);
      if (list) list.push(i);
      else byKey.set(k, [i]);
    });
    for (const [k, list] of byKey) if (list.length > 1) sameKey.set(k, list);
  }
  const offer = (i: number) => {
    const gi = gain(i);
    if (gi > 0) better.push({ i, gain: gi });
  };
  const makeReady = (i: number) => {
    heap.push(i);
    // A recompute node (remat.ts) runs at its place, just before its first reader: pulled early,
    // it would hold its output as long as the value it replaces.
    if (greedy && !g.nodes[i].recompute) {
      at[i] = jumpers.length;
      jumpers.push(i);
      offer(i);
    }
  };
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
  for (let i = 0; i < n; i++) if (pending[i] === 0) makeReady(i);
  const order: Node[] = [];
  for (let left = n; left > 0; left--) {
    let i = -1;
    if (greedy) {
      // Only a node that frees memory jumps the queue: one that merely allocates less would be
      // pulled early and held (e.g. an update's p·wd term, ready from the first step). Among
      // those that free the most, the first in keyed order.
      while (better.size && (taken[better.top.i] || better.top.gain !== gain(better.top.i))) better.pop();
      if (better.size) {
        i = better.top.i;
        for (const j of sameKey.get(key[i]) ?? []) if (at[j] >= 0 && at[j] < at[i] && gain(j) === gain(i)) i = j;
      }
    }
    if (i < 0) {
      while (heap.size && taken[heap.top]) heap.pop();
      if (!heap.size) break;
      i = heap.pop();
    }
    taken[i] = 1;
    removeJumper(i);
    order.push(g.nodes[i]);
    for (const x of ins[i]) {
      readers[x]--;
      readerSum[x] -= i;
      if (greedy && readers[x] === 1 && !kept[x] && bytes[x] > 0) {
        const last = readerSum[x];
        freed[last] += bytes[x];
        if (at[last] >= 0) offer(last);
      }
    }
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
export function eagerUpdateKeys(g: Graph): number[] {
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

/** One list schedule of `g` under any priority `key` (ties allowed), greedy or keyed alone. */
export function keyedSchedule(g: Graph, sizeOf: SizeOf, key: readonly number[], greedy: boolean): Node[] {
  return listSchedule(scheduleGraph(g, sizeOf), key, greedy);
}

/** The candidate orders, or with `only` just the one of that name. */
export function scheduleCandidates(g: Graph, sizeOf: SizeOf, only?: string): ScheduleCandidate[] {
  const sg = scheduleGraph(g, sizeOf);
  let eager: number[] | undefined;
  const eagerKeys = () => (eager ??= eagerUpdateKeys(g));
  const all: { name: string; order: () => readonly Node[] }[] = [
    { name: 'program', order: () => listSchedule(sg, g.nodes.map((_, i) => i), false) },
    { name: 'eager-update', order: () => listSchedule(sg, eagerKeys(), false) },
    { name: 'greedy', order: () => listSchedule(sg, eagerKeys(), true) },
  ];
  return all.filter((c) => only === undefined || c.name === only).map((c) => ({ name: c.name, order: c.order() }));
}
