// The scheduler's and the packer's algorithms in their first, plain form (as they were before
// they were made fast for LLaMA-7B-sized steps): the oracle the fast forms must match exactly, for
// a plan is only worth planning faster if it is the same plan.
// - plainDependencies: Map/Set bookkeeping, every storage root's readers indexed.
// - plainListSchedule: the greedy rule as a scan of every ready node at every step.
// - plainPackIntervals: every placed tensor of every buffer walked for every item.
import { opDef } from '../src/ir/ops.ts';
import type { Graph, Node } from '../src/ir/types.ts';

const isView = (n: Node) => opDef(n.op).wgsl.kind === 'view';

export function plainDependencies(g: Graph): number[][] {
  const producer = new Map<number, number>();
  g.nodes.forEach((n, i) => producer.set(n.out.id, i));
  const deps = g.nodes.map((n) => [...new Set(n.inputs.map((x) => producer.get(x.id)).filter((i): i is number => i !== undefined))]);
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
  return deps;
}

export function plainListSchedule(g: Graph, sizeOf: (n: Node) => number, key: readonly number[], greedy: boolean): Node[] {
  const n = g.nodes.length;
  const deps = plainDependencies(g);
  const succ: number[][] = g.nodes.map(() => []);
  deps.forEach((ds, i) => ds.forEach((d) => succ[d].push(i)));
  const pending = deps.map((d) => d.length);
  const producer = new Map<number, number>();
  g.nodes.forEach((node, i) => producer.set(node.out.id, i));
  const root = new Map<number, number>();
  const rootOf = (id: number): number => root.get(id) ?? id;
  for (const node of g.nodes) if (isView(node)) root.set(node.out.id, rootOf(node.inputs[0].id));
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
  return order;
}

export function plainPackIntervals(
  items: readonly { size: number; start: number; end: number }[],
  order: readonly number[],
  cap: number,
): { buffer: number[]; offset: number[]; sizes: number[] } {
  const buffer = new Array<number>(items.length).fill(-1);
  const offset = new Array<number>(items.length).fill(0);
  const placed: { off: number[]; top: number[]; from: number[]; to: number[] }[] = [];
  const sizes: number[] = [];
  for (const i of order) {
    const it = items[i];
    let done = false;
    for (let b = 0; b < placed.length && !done; b++) {
      const { off, top, from, to } = placed[b];
      let bestOff = -1;
      let bestGap = Infinity;
      let cursor = 0;
      for (let k = 0; k < off.length; k++) {
        if (!(from[k] <= it.end && it.start <= to[k])) continue;
        const gap = off[k] - cursor;
        if (gap >= it.size && gap < bestGap) {
          bestGap = gap;
          bestOff = cursor;
        }
        if (top[k] > cursor) cursor = top[k];
      }
      if (bestOff < 0) bestOff = cursor;
      if (bestOff + it.size <= cap) {
        buffer[i] = b;
        offset[i] = bestOff;
        let lo = 0;
        let hi = off.length;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (off[mid] <= bestOff) lo = mid + 1;
          else hi = mid;
        }
        off.splice(lo, 0, bestOff);
        top.splice(lo, 0, bestOff + it.size);
        from.splice(lo, 0, it.start);
        to.splice(lo, 0, it.end);
        sizes[b] = Math.max(sizes[b], bestOff + it.size);
        done = true;
      }
    }
    if (!done) {
      buffer[i] = placed.length;
      offset[i] = 0;
      placed.push({ off: [0], top: [it.size], from: [it.start], to: [it.end] });
      sizes.push(it.size);
    }
  }
  return { buffer, offset, sizes };
}
