// Reverse-mode autodiff over an explicit set of gradient targets (`wrt`).
//
// 1. Mark the values that depend on a target (forward sweep) and the values the loss depends on
//    (backward sweep). Only values in both carry a cotangent: nothing else is ever built.
// 2. Seed the loss's cotangent with 1 (or, with `seed`, a fed scalar input: loss scaling's S,
//    loss-scale.ts, so every cotangent is S times the true one) and walk the nodes in reverse. For each active node, call
//    its op's VJP rule with `wants[i]` = "input i is active", so rules emit nothing needless. A
//    cotangent reaching a 'backward-only' op (a second-order gradient) is an error.
// 3. Sum each returned cotangent back to its input's shape (broadcasting), once, here; add it to
//    any cotangent that input already has.
//    A 'backward-only' op (a gradient kernel such as cross_entropy_grad) has no VJP: a cotangent
//    reaching one is a second-order gradient, refused with an error.
// 4. Expose the cotangent of each target as output `grad.<name>`.
import { Builder } from '../ir/builder.ts';
import { LorafaError } from '../ir/errors.ts';
import { opDef } from '../ir/ops.ts';
import { fmtLoc, fmtType, sameShape, type Graph, type SourceLoc, type Value } from '../ir/types.ts';

export interface AutodiffReport {
  readonly wrt: readonly string[];
  /** Targets the loss does not depend on: their gradient is zero. */
  readonly unreachable: readonly string[];
  readonly backwardNodes: number;
}

function fmtNodeWhere(g: Graph, src: SourceLoc | undefined): string {
  return fmtLoc(src) || g.file || g.name;
}

export function gradName(name: string): string {
  return `grad.${name}`;
}

/** Sums a broadcast cotangent back to `shape`: over leading dims and dims that were 1. */
export function sumToShape(b: Builder, ct: Value, shape: readonly number[]): Value {
  const cs = ct.type.shape;
  if (sameShape(cs, shape)) return ct;
  const lead = cs.length - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < cs.length; i++) if (i < lead || (shape[i - lead] === 1 && cs[i] !== 1)) axes.push(i);
  const summed = axes.length ? b.sum(ct, axes, false) : ct;
  return sameShape(summed.type.shape, shape) ? summed : b.reshape(summed, shape);
}

export function autodiff(g: Graph, opts: { wrt: readonly Value[]; loss?: string; seed?: string }): { graph: Graph; report: AutodiffReport } {
  const lossName = opts.loss ?? 'loss';
  const loss = g.outputs[lossName];
  if (!loss) {
    throw new LorafaError(g.file ?? g.name, `the model declares no "${lossName}" output`, 'call b.loss(x) with a scalar loss at the end of build()');
  }
  if (loss.type.shape.length !== 0) {
    throw new LorafaError(g.file ?? g.name, `the loss must be a scalar, got ${fmtType(loss.type)}`, 'reduce it with b.mean or b.sum');
  }

  // 1. active = depends on a target ∧ the loss depends on it
  const fromWrt = new Set(opts.wrt.map((v) => v.id));
  for (const n of g.nodes) {
    if (opDef(n.op).vjp !== 'nondiff' && n.inputs.some((x) => fromWrt.has(x.id))) fromWrt.add(n.out.id);
  }
  const toLoss = new Set([loss.id]);
  for (let i = g.nodes.length - 1; i >= 0; i--) {
    const n = g.nodes[i];
    if (toLoss.has(n.out.id)) for (const x of n.inputs) toLoss.add(x.id);
  }
  const active = (v: Value) => fromWrt.has(v.id) && toLoss.has(v.id);

  // 2–3. reverse walk
  const b = Builder.extending(g, 'backward');
  const cts = new Map<number, Value>();
  const seed = opts.seed === undefined ? undefined : b.input(opts.seed, []);
  if (active(loss)) cts.set(loss.id, seed ?? b.on(undefined, 'd.loss', () => b.fill(1)));
  for (let i = g.nodes.length - 1; i >= 0; i--) {
    const n = g.nodes[i];
    const ct = cts.get(n.out.id);
    const vjp = opDef(n.op).vjp;
    if (!ct || vjp === 'nondiff' || !active(n.out)) continue;
    if (vjp === 'backward-only') {
      // Only VJP rules emit these kernels: a cotangent here means differentiating a backward pass.
      throw new LorafaError(
        fmtNodeWhere(g, n.src),
        `second-order gradients are not supported: a cotangent reached ${n.op} ("${n.out.name}"), a backward-only kernel that exists only in another op's backward pass and has no VJP of its own`,
        'differentiate the forward graph once; do not run autodiff over a graph that already holds a backward pass',
      );
    }
    const wants = n.inputs.map(active);
    b.on(n.src, `d.${n.out.name}`, () => {
      const results = vjp({ b, inputs: n.inputs, out: n.out, ct, attrs: n.attrs, wants });
      n.inputs.forEach((x, j) => {
        const c = results[j];
        if (!wants[j] || !c) return;
        const summed = sumToShape(b, c, x.type.shape);
        const prev = cts.get(x.id);
        // A value read twice sums its cotangents; the sum is named after that value.
        cts.set(x.id, prev ? b.on(n.src, `d.${x.name}`, () => b.emit('add', [prev, summed], {}, 'acc')) : summed);
      });
    });
  }

  // 4. gradients of the targets
  const unreachable: string[] = [];
  const outputs: Record<string, Value> = { ...g.outputs };
  for (const v of opts.wrt) {
    let ct = cts.get(v.id);
    if (!ct) {
      unreachable.push(v.name);
      ct = b.on(undefined, `d.${v.name}`, () => b.fill(0, v.type.shape));
    }
    outputs[gradName(v.name)] = ct;
  }
  const added = b.takeAdditions();
  return {
    graph: { ...g, inputs: seed ? [...g.inputs, { value: seed }] : g.inputs, nodes: [...g.nodes, ...added.nodes], outputs, nextId: added.nextId },
    report: { wrt: opts.wrt.map((v) => v.name), unreachable, backwardNodes: added.nodes.length },
  };
}
