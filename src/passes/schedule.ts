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
 * List scheduling: repeatedly runs one ready node, chosen by `pick` among the ready ones.
 * `pick` sees each candidate's net gain (bytes freed minus bytes allocated) and its key.
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
  const readers = new Map<number, number>();
  for (const node of g.nodes) {
    for (const x of new Set(node.inputs.map((v) => rootOf(v.id)))) readers.set(x, (readers.get(x) ?? 0) + 1);
  }
  const kept = new Set([...Object.values(g.outputs), ...g.updates.map((u) => u.value)].map((v) => rootOf(v.id)));
  const bytesOf = (id: number) => {
    const p = producer.get(id);
    return p === undefined ? 0 : sizeOf(g.nodes[p]);
  };
  const gain = (i: number) => {
    let freed = 0;
    for (const x of new Set(g.nodes[i].inputs.map((v) => rootOf(v.id)))) {
      if (readers.get(x) === 1 && !kept.has(x)) freed += bytesOf(x);
    }
    return freed - sizeOf(g.nodes[i]);
  };
  const ready: number[] = [];
  for (let i = 0; i < n; i++) if (pending[i] === 0) ready.push(i);
  const order: Node[] = [];
  while (ready.length) {
    let best = -1;
    if (greedy) {
      // Only a node that frees memory jumps the queue: one that merely allocates less would be
      // pulled early and held (e.g. an update's p·wd term, ready from the first step).
      let bestGain = 0;
      for (let k = 0; k < ready.length; k++) {
        // A recompute node (remat.ts) runs at its place, just before its first reader: pulled
        // early, it would hold its output as long as the value it replaces.
        if (g.nodes[ready[k]].recompute) continue;
        const gk = gain(ready[k]);
        if (gk > bestGain || (gk === bestGain && gk > 0 && key[ready[k]] < key[ready[best]])) {
          best = k;
          bestGain = gk;
        }
      }
    }
    if (best < 0) {
      best = 0;
      for (let k = 1; k < ready.length; k++) if (key[ready[k]] < key[ready[best]]) best = k;
    }
    const i = ready[best];
    ready[best] = ready[ready.length - 1];
    ready.pop();
    order.push(g.nodes[i]);
    for (const x of new Set(g.nodes[i].inputs.map((v) => rootOf(v.id)))) readers.set(x, readers.get(x)! - 1);
    for (const s of succ[i]) if (--pending[s] === 0) ready.push(s);
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

export function scheduleCandidates(g: Graph, sizeOf: SizeOf): ScheduleCandidate[] {
  const program = g.nodes.map((_, i) => i);
  const eager = eagerUpdateKeys(g);
  return [
    { name: 'program', order: listSchedule(g, sizeOf, program, false) },
    { name: 'eager-update', order: listSchedule(g, sizeOf, eager, false) },
    { name: 'greedy', order: listSchedule(g, sizeOf, eager, true) },
  ];
}
