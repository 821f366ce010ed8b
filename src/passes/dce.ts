// Dead-code elimination: backward liveness from the graph's outputs. Autodiff already builds only
// what the targets need (its `wants`), so under LoRA-FA dA is never built in the first place;
// DCE removes forward values nothing reads and what a rule built for an input it then ignored
// (a `where` condition, say).
import type { Graph, Node } from '../ir/types.ts';

export interface DceReport {
  readonly removed: readonly Node[];
}

export function dce(g: Graph): { graph: Graph; report: DceReport } {
  const live = new Set([...Object.values(g.outputs), ...g.updates.map((u) => u.value)].map((v) => v.id));
  const keep = new Array<boolean>(g.nodes.length).fill(false);
  for (let i = g.nodes.length - 1; i >= 0; i--) {
    const n = g.nodes[i];
    if (!live.has(n.out.id)) continue;
    keep[i] = true;
    for (const x of n.inputs) live.add(x.id);
  }
  const removed = g.nodes.filter((_, i) => !keep[i]);
  return { graph: { ...g, nodes: g.nodes.filter((_, i) => keep[i]) }, report: { removed } };
}
