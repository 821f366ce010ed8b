// The autodiff driver, apart from the per-op rules (test/grad.test.ts checks those): summing
// broadcast cotangents back, accumulating over multiple uses, targets the loss does not reach,
// error messages, and that nothing off the wrt→loss path is ever built.
import { describe, expect, it } from 'vitest';
import { Builder } from '../src/ir/builder.ts';
import { LorafaError } from '../src/ir/errors.ts';
import { printNode } from '../src/ir/print.ts';
import { numel, type Graph, type Value } from '../src/ir/types.ts';
import { verify } from '../src/ir/verify.ts';
import { autodiff, gradName, sumToShape } from '../src/passes/autodiff.ts';
import { dce } from '../src/passes/dce.ts';
import { runReference } from '../src/runtime/reference.ts';
import { sample } from './helpers.ts';

const backward = (g: Graph) => g.nodes.filter((n) => n.phase === 'backward');
const arr = (x: ArrayLike<number>) => Array.from(x);

function grads(g: Graph, wrt: readonly Value[], feeds: Record<string, ArrayLike<number>>) {
  verify(g, 'build');
  const { graph, report } = autodiff(g, { wrt });
  verify(graph, 'autodiff');
  const run = runReference(graph, { feeds });
  const out: Record<string, number[]> = {};
  for (const v of wrt) out[v.name] = arr(run.outputs[gradName(v.name)].data);
  return { graph, report, grads: out, loss: run.outputs.loss.data[0] };
}

describe('sumToShape', () => {
  // ct = 0, 1, 2, … over [2,3,4]; each case lists the expected sums, worked out by hand.
  const cases: readonly { from: number[]; to: number[]; expected: number[]; what: string }[] = [
    { what: 'identity: same shape', from: [2, 3], to: [2, 3], expected: [0, 1, 2, 3, 4, 5] },
    { what: 'leading dim', from: [2, 3], to: [3], expected: [3, 5, 7] },
    { what: 'size-1 dim', from: [2, 3], to: [2, 1], expected: [3, 12] },
    { what: 'size-1 leading dim kept', from: [2, 3], to: [1, 3], expected: [3, 5, 7] },
    { what: 'to a scalar', from: [2, 3], to: [], expected: [15] },
    // [2,3,4] → [3,1]: sum over axis 0 and axis 2. Element (i,j,k) = 12i+4j+k.
    // j: Σ_{i,k} = Σ_i (4·12i) + 4·(4·4j) … = 2·(0+1+2+3) + 4·12·1 + 8·4j = 12 + 48 + 32j
    { what: 'leading and size-1 dims together', from: [2, 3, 4], to: [3, 1], expected: [60, 92, 124] },
    { what: 'leading dims only, rank 3 → 1', from: [2, 3, 4], to: [4], expected: [60, 66, 72, 78] },
    { what: 'a size-1 dim that was already 1', from: [2, 1, 3], to: [1, 3], expected: [3, 5, 7] },
  ];

  it.each(cases.map((c) => [c.what, c] as const))('%s', (_w, c) => {
    const b = new Builder({ phase: 'backward' });
    const ct = b.input('ct', c.from);
    const r = sumToShape(b, ct, c.to);
    expect(r.type.shape).toEqual(c.to);
    if (c.from.join() === c.to.join()) expect(r).toBe(ct); // no node at all
    b.output('r', r);
    const g = verify(b.build());
    const feeds = { ct: Array.from({ length: numel(c.from) }, (_, i) => i) };
    expect(arr(runReference(g, { feeds }).outputs.r.data)).toEqual(c.expected);
  });

  it('emits one sum (and at most one reshape) however many dims it folds', () => {
    const b = new Builder();
    sumToShape(b, b.input('ct', [2, 3, 4, 5]), [3, 1, 1]);
    const ops = b.build().nodes.map((n) => n.op);
    expect(ops).toEqual(['sum', 'reshape']);
    const sum = b.build().nodes[0];
    expect(sum.attrs.axes).toEqual([0, 2, 3]);
  });

  it('sums broadcast operands back through the driver: x[3] + y[2,3], z[2,1]·…', () => {
    const b = new Builder();
    const x = b.input('x', [3]);
    const y = b.input('y', [2, 3]);
    const z = b.input('z', [2, 1]);
    const c = b.input('c', [2, 3]);
    b.loss(b.sum(b.mul(b.mul(b.add(x, y), z), c)));
    const feeds = { x: [1, 2, 3], y: [0, 0, 0, 1, 1, 1], z: [2, -1], c: [1, 2, 3, 4, 5, 6] };
    const { grads: d } = grads(b.build(), [x, y, z], feeds);
    // d/dx = Σ_rows z·c = 2·[1,2,3] − [4,5,6]
    expect(d.x).toEqual([-2, -1, 0]);
    // d/dy = z·c
    expect(d.y).toEqual([2, 4, 6, -4, -5, -6]);
    // d/dz = Σ_cols (x+y)·c = [1+4+9, 2·4+3·5+4·6]
    expect(d.z).toEqual([14, 47]);
  });
});

describe('accumulation over multiple uses', () => {
  it('d/dx Σ x·x = 2x', () => {
    const b = new Builder();
    const x = b.input('x', [4]);
    b.loss(b.sum(b.mul(x, x)));
    expect(grads(b.build(), [x], { x: [1, -2, 0.5, 3] }).grads.x).toEqual([2, -4, 1, 6]);
  });

  it('d/dx Σ (x + x) = 2', () => {
    const b = new Builder();
    const x = b.input('x', [3]);
    b.loss(b.sum(b.add(x, x)));
    expect(grads(b.build(), [x], { x: [5, 6, 7] }).grads.x).toEqual([2, 2, 2]);
  });

  it('d/dx Σ (x·x + x − exp(x)) = 2x + 1 − exp(x): three uses, two paths deep', () => {
    const b = new Builder();
    const x = b.input('x', [3]);
    b.loss(b.sum(b.sub(b.add(b.mul(x, x), x), b.exp(x))));
    const xs = [0, 1, -0.5];
    const d = grads(b.build(), [x], { x: xs }).grads.x;
    xs.forEach((v, i) => expect(d[i]).toBeCloseTo(2 * v + 1 - Math.exp(v), 14));
  });

  it('a shared intermediate gets both cotangents before its own rule runs', () => {
    // h = tanh(x); loss = Σ h·h + Σ h  ⇒  d/dx = (2h + 1)(1 − h²)
    const b = new Builder();
    const x = b.input('x', [2]);
    const h = b.tanh(x);
    b.loss(b.add(b.sum(b.mul(h, h)), b.sum(h)));
    const { grads: d, graph } = grads(b.build(), [x], { x: [0.3, -1.2] });
    [0.3, -1.2].forEach((v, i) => {
      const t = Math.tanh(v);
      expect(d.x[i]).toBeCloseTo((2 * t + 1) * (1 - t * t), 14);
    });
    // tanh's rule runs once, on the summed cotangent: exactly one `1 − h²` (one sub).
    expect(backward(graph).filter((n) => n.op === 'sub')).toHaveLength(1);
  });
});

describe('targets the loss does not reach', () => {
  it('get a zero gradient of their shape and are listed in report.unreachable', () => {
    const b = new Builder();
    const x = b.input('x', [2]);
    const z = b.input('z', [2, 3]);
    b.output('side', b.exp(z)); // an output, but not the loss
    b.loss(b.sum(x));
    const { grads: d, report, graph } = grads(b.build(), [x, z], { x: [1, 2], z: [0, 0, 0, 0, 0, 0] });
    expect(d.x).toEqual([1, 1]);
    expect(d.z).toEqual([0, 0, 0, 0, 0, 0]);
    expect(graph.outputs['grad.z'].type.shape).toEqual([2, 3]);
    expect(report.unreachable).toEqual(['z']);
    expect(report.wrt).toEqual(['x', 'z']);
  });

  it('including one that reaches the loss only through a non-differentiable op', () => {
    const b = new Builder();
    const x = b.input('x', [3]);
    b.loss(b.sum(b.step(x)));
    const { grads: d, report, graph } = grads(b.build(), [x], { x: [1, -1, 2] });
    expect(d.x).toEqual([0, 0, 0]);
    expect(report.unreachable).toEqual(['x']);
    // Not even the seed is built: the only backward node is the zero gradient.
    expect(backward(graph).map((n) => n.op)).toEqual(['fill']);
  });
});

describe('loss errors', () => {
  it('a non-scalar loss names its type', () => {
    const b = new Builder({ name: 'm' });
    const x = b.input('x', [2, 3]);
    b.output('loss', b.exp(x)); // bypasses b.loss's own check
    const g = b.build();
    expect(() => autodiff(g, { wrt: [x] })).toThrow(LorafaError);
    expect(() => autodiff(g, { wrt: [x] })).toThrow(/the loss must be a scalar, got f32\[2,3\]/);
  });

  it('a missing loss names the output it looked for and how to declare one', () => {
    const b = new Builder({ name: 'm' });
    const x = b.input('x', [2]);
    b.output('y', b.sum(x));
    const g = b.build();
    expect(() => autodiff(g, { wrt: [x] })).toThrow(LorafaError);
    expect(() => autodiff(g, { wrt: [x] })).toThrow(/declares no "loss" output[\s\S]*fix: call b\.loss/);
    expect(() => autodiff(g, { wrt: [x], loss: 'objective' })).toThrow(/declares no "objective" output/);
    // …and an explicitly named scalar output works as the loss.
    expect(autodiff(g, { wrt: [x], loss: 'y' }).report.unreachable).toEqual([]);
  });
});

describe('what autodiff builds', () => {
  /** A small MLP with softmax cross-entropy: every kind of node autodiff meets in a model. */
  function mlp() {
    const b = new Builder({ name: 'mlp' });
    const x = b.input('x', [4, 3]);
    const labels = b.input('labels', [4], 'i32');
    const h = b.gelu(b.linear(x, 'fc1', 5));
    const logits = b.linear(b.layerNorm(h, 'ln'), 'fc2', 3);
    b.loss(b.crossEntropy(logits, labels));
    return b.build();
  }

  it('backward nodes have phase backward, names prefixed d., fresh ids; forward nodes are untouched', () => {
    const g = mlp();
    const params = g.params.filter((p) => p.trainable).map((p) => p.value);
    const { graph, report } = autodiff(verify(g), { wrt: params });
    verify(graph, 'autodiff');
    const back = graph.nodes.slice(g.nodes.length);
    expect(back.length).toBe(report.backwardNodes);
    expect(back.length).toBeGreaterThan(0);
    for (const n of back) {
      expect(n.phase, printNode(n)).toBe('backward');
      expect(n.out.name.startsWith('d.'), printNode(n)).toBe(true);
      expect(n.out.id).toBeGreaterThanOrEqual(g.nextId);
    }
    expect(graph.nodes.slice(0, g.nodes.length)).toEqual(g.nodes);
    expect(graph.nodes.slice(0, g.nodes.length).every((n, i) => n === g.nodes[i])).toBe(true);
    for (const p of params) expect(graph.outputs[gradName(p.name)].type).toEqual(p.type);
    // Every backward node is needed by some gradient.
    expect(dce(graph).report.removed).toEqual([]);
  });

  it('gradients of the MLP match finite differences of its loss', () => {
    const g = mlp();
    const params = g.params.filter((p) => p.trainable);
    const { graph } = autodiff(g, { wrt: params.map((p) => p.value) });
    const feeds = { x: sample(12, { kind: 'real' }, 1), labels: [0, 2, 1, 2] };
    const base = runReference(graph, { feeds, seed: 3 });
    const lossAt = (name: string, data: Float64Array) => {
      const ps = new Map(base.params);
      ps.set(name, { shape: ps.get(name)!.shape, data });
      return runReference(g, { feeds, params: ps }).outputs.loss.data[0];
    };
    const eps = 1e-6;
    for (const p of params) {
      const x = base.params.get(p.value.name)!.data;
      const d = base.outputs[gradName(p.value.name)].data;
      for (let k = 0; k < x.length; k++) {
        const plus = x.slice();
        const minus = x.slice();
        plus[k] += eps;
        minus[k] -= eps;
        const fd = (lossAt(p.value.name, plus) - lossAt(p.value.name, minus)) / (2 * eps);
        expect(Math.abs(d[k] - fd), `${p.value.name}[${k}]: ${d[k]} vs ${fd}`).toBeLessThanOrEqual(1e-7 + 1e-5 * Math.abs(fd));
      }
    }
  });

  it('builds nothing for a branch that reaches the loss only through frozen params and inputs', () => {
    // loss = Σ x·tanh(W)  with W frozen: dW's branch (tanh's rule, x·…) must not exist.
    const b = new Builder();
    const x = b.input('x', [2, 3]);
    const w = b.param('W', [2, 3], { init: { kind: 'ones' }, trainable: false });
    const frozen = b.scope('frozen', () => b.tanh(w));
    b.loss(b.sum(b.mul(x, frozen)));
    const { graph } = autodiff(verify(b.build()), { wrt: [x] });
    verify(graph);
    const back = backward(graph);
    // seed 1, sum's rule (reshape + broadcast), mul's rule for x only
    expect(back.map((n) => n.op)).toEqual(['fill', 'reshape', 'broadcast', 'mul']);
    expect(back.some((n) => n.out.name.includes('frozen'))).toBe(false);
    // …and the one mul reads the frozen branch's value, not x.
    expect(back[3].inputs.map((v) => v.id)).toContain(frozen.id);
  });

  it('does not differentiate a target’s descendants that never reach the loss', () => {
    const b = new Builder();
    const x = b.input('x', [3]);
    b.output('aux', b.sum(b.exp(b.tanh(x)))); // depends on x, unused by the loss
    b.loss(b.sum(b.mul(x, x)));
    const { graph } = autodiff(verify(b.build()), { wrt: [x] });
    const back = backward(graph);
    expect(back.map((n) => n.op)).toEqual(['fill', 'reshape', 'broadcast', 'mul', 'mul', 'add']);
    expect(back.some((n) => n.out.name.includes('exp') || n.out.name.includes('tanh'))).toBe(false);
  });

  it('differentiates with respect to an intermediate value as well as a leaf', () => {
    const b = new Builder();
    const x = b.input('x', [2]);
    const h = b.exp(x);
    b.loss(b.sum(b.mul(h, h)));
    const { graph } = autodiff(verify(b.build()), { wrt: [h] });
    verify(graph);
    const run = runReference(graph, { feeds: { x: [0, 1] } });
    expect(arr(run.outputs[gradName(h.name)].data)).toEqual([2, 2 * Math.E]);
  });

  it('leaves the input graph as it was', () => {
    const g = mlp();
    const before = JSON.stringify(g);
    autodiff(g, { wrt: g.params.map((p) => p.value) });
    expect(JSON.stringify(g)).toBe(before);
  });
});
