// Simplification of the backward graph autodiff builds, before DCE. Two rewrites, both of which
// only ever remove work and bytes:
//
// 1. Common subexpressions. A VJP rule builds what it needs without looking at what its
//    neighbours built: x·x's rule emits ct·x twice, and the add that sums them reads two equal
//    [n, d] tensors. Elementwise backward nodes with the same op, attributes and operands (in
//    either order for add and mul) become one. Only backward nodes merge, and only into backward
//    nodes: a backward recomputation of a forward value stays a recomputation (merging it would
//    keep the forward value alive through backward, which is what the memory plan works to
//    avoid). Matmuls are left alone: two equal ones (xᵀ·dy of two linears on one input fed the
//    same cotangent) are each some layer's gradient, which reports name layer by layer.
// 2. Broadcasts into elementwise ops. The cotangent of a sum is its scalar broadcast back to the
//    input's shape, a materialised [n, d] tensor of one repeated number. An elementwise (map)
//    node reads operands of any shape that broadcasts to its output, so where a map node reads
//    broadcast(s) and the output shape would be the same with s in its place, it reads s. The
//    broadcast node is then dead (unless something else reads it) and DCE removes it.
//
// W1 (LoRA-FA, SGD): the MSE's backward had a 1.5 MiB broadcast and a duplicated product live at
// once, at the step's peak; without them the peak is 1 tensor lower (bench/results/peers.md).
import { OPS, type OpName } from '../ir/ops.ts';
import { broadcastShapes, broadcastsTo } from '../ir/shape.ts';
import { sameShape, type Graph, type Node, type Value } from '../ir/types.ts';

export interface SimplifyReport {
  /** Backward nodes merged into an equal earlier one. */
  readonly merged: number;
  /** Operands that read a broadcast's source instead of the broadcast. */
  readonly folded: number;
}

const COMMUTATIVE = new Set(['add', 'mul']);
const isMap = (op: string) => OPS[op as OpName]?.wgsl.kind === 'map';

export function simplify(g: Graph): { graph: Graph; report: SimplifyReport } {
  const replaced = new Map<number, Value>();
  const resolve = (v: Value): Value => replaced.get(v.id) ?? v;
  const producer = new Map<number, Node>();
  const seen = new Map<string, Value>();
  const nodes: Node[] = [];
  let merged = 0;
  let folded = 0;
  for (const n0 of g.nodes) {
    let inputs = n0.inputs.map(resolve);
    if (isMap(n0.op)) {
      inputs = inputs.map((v, i) => {
        const p = producer.get(v.id);
        if (p?.op !== 'broadcast') return v;
        const src = p.inputs[0];
        const shapes = inputs.map((w, j) => (j === i ? src.type.shape : w.type.shape));
        const out = shapes.reduce((a, b) => broadcastShapes(a, b));
        if (!broadcastsTo(src.type.shape, out) || !sameShape(out, n0.out.type.shape)) return v;
        folded++;
        return src;
      });
    }
    const n: Node = inputs.every((v, i) => v === n0.inputs[i]) ? n0 : { ...n0, inputs };
    if (n.phase === 'backward' && isMap(n.op)) {
      const ids = n.inputs.map((v) => v.id);
      if (COMMUTATIVE.has(n.op)) ids.sort((a, b) => a - b);
      const key = `${n.op}|${JSON.stringify(n.attrs)}|${ids.join(',')}|${n.out.type.dtype}[${n.out.type.shape.join(',')}]`;
      const prior = seen.get(key);
      if (prior) {
        replaced.set(n.out.id, prior);
        merged++;
        continue;
      }
      seen.set(key, n.out);
    }
    producer.set(n.out.id, n);
    nodes.push(n);
  }
  const outputs = Object.fromEntries(Object.entries(g.outputs).map(([k, v]) => [k, resolve(v)]));
  const updates = g.updates.map((u) => (replaced.has(u.value.id) ? { ...u, value: resolve(u.value) } : u));
  return { graph: { ...g, nodes, outputs, updates }, report: { merged, folded } };
}
