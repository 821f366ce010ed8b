// The verifier must catch every broken invariant a buggy pass could produce. Each case tampers
// with one aspect of a valid graph; the untampered graph must pass.
import { describe, expect, it } from 'vitest';
import { Builder } from '../src/ir/builder.ts';
import { VerifyError } from '../src/ir/errors.ts';
import type { Graph, Node, Value } from '../src/ir/types.ts';
import { verify } from '../src/ir/verify.ts';
import { autodiff } from '../src/passes/autodiff.ts';

/** x[2,3] → h = tanh(x·W) → y = h + b → loss = Σ y·y; `y` also an output. */
function valid(): Graph {
  const b = new Builder({ name: 'tiny' });
  const x = b.input('x', [2, 3]);
  const h = b.tanh(b.linear(x, 'fc', 4, { bias: false }));
  const bias = b.param('bias', [4], { init: { kind: 'zeros' }, role: 'bias' });
  const y = b.add(h, bias);
  b.output('y', y);
  b.loss(b.sum(b.mul(y, y)));
  return b.build();
}

const nodeIndex = (g: Graph, op: string) => g.nodes.findIndex((n) => n.op === op);
const withNodes = (g: Graph, nodes: readonly Node[]): Graph => ({ ...g, nodes });
const replaceNode = (g: Graph, i: number, n: Node): Graph => withNodes(g, g.nodes.map((m, j) => (j === i ? n : m)));

function expectVerifyError(g: Graph, says: RegExp): void {
  let err: unknown;
  try {
    verify(g, 'tamper');
  } catch (e) {
    err = e;
  }
  expect(err, 'verify must throw').toBeInstanceOf(VerifyError);
  expect((err as Error).message).toMatch(says);
  expect((err as Error).message).toContain('tiny after tamper');
}

describe('verify', () => {
  it('passes the untampered graph, and the graph after autodiff', () => {
    const g = valid();
    expect(verify(g)).toBe(g);
    const wrt = g.params.map((p) => p.value);
    expect(() => verify(autodiff(g, { wrt }).graph, 'autodiff')).not.toThrow();
  });

  it('catches a use before definition (two nodes swapped)', () => {
    const g = valid();
    const i = nodeIndex(g, 'tanh'); // tanh reads the matmul just before it
    const nodes = [...g.nodes];
    [nodes[i - 1], nodes[i]] = [nodes[i], nodes[i - 1]];
    expectVerifyError(withNodes(g, nodes), /%\d+ is used before it is defined in: .*tanh/);
  });

  it('catches a use of a value that no node, input or param defines', () => {
    const g = valid();
    const i = nodeIndex(g, 'tanh');
    const n = g.nodes[i];
    const ghost: Value = { id: g.nextId, type: n.inputs[0].type, name: 'ghost' };
    expectVerifyError(replaceNode({ ...g, nextId: g.nextId + 1 }, i, { ...n, inputs: [ghost] }), /is used before it is defined/);
  });

  it('catches a value defined twice (a node duplicated)', () => {
    const g = valid();
    const i = nodeIndex(g, 'tanh');
    const nodes = [...g.nodes];
    nodes.splice(i + 1, 0, g.nodes[i]);
    expectVerifyError(withNodes(g, nodes), /%\d+ \(node "[^"]*"\) is defined twice/);
  });

  it('catches a node whose result reuses an input’s id', () => {
    const g = valid();
    const i = nodeIndex(g, 'tanh');
    const n = g.nodes[i];
    const x = g.inputs[0].value;
    expectVerifyError(replaceNode(g, i, { ...n, out: { ...n.out, id: x.id } }), /is defined twice/);
  });

  it('catches a node whose recorded result type is wrong (shape)', () => {
    const g = valid();
    const i = g.nodes.length - 1; // the loss: nothing downstream reads it, only the output
    const n = g.nodes[i];
    const out: Value = { ...n.out, type: { dtype: 'f32', shape: [1] } };
    const tampered = { ...replaceNode(g, i, { ...n, out }), outputs: { ...g.outputs, loss: out } };
    expectVerifyError(tampered, /result should be f32\[\] in: .*sum/);
  });

  it('catches a node whose recorded result type is wrong (dtype)', () => {
    const g = valid();
    const i = nodeIndex(g, 'tanh');
    const n = g.nodes[i];
    expectVerifyError(replaceNode(g, i, { ...n, out: { ...n.out, type: { ...n.out.type, dtype: 'f16' } } }), /result should be f32\[2,4\]/);
  });

  it('catches a value object that differs from its definition', () => {
    // A pass that rebuilt a value with a new type but left the readers pointing at the old one.
    const g = valid();
    const i = nodeIndex(g, 'tanh');
    const n = g.nodes[i];
    const out: Value = { ...n.out, type: { dtype: 'f32', shape: [4, 2] } };
    expectVerifyError(replaceNode(g, i, { ...n, out }), /result should be f32\[2,4\]/);
    // With the shape right but a copied object, readers refer to a different value.
    expectVerifyError(replaceNode(g, i, { ...n, out: { ...n.out } }), /used with a different value object/);
  });

  it('catches an unknown op', () => {
    const g = valid();
    const i = nodeIndex(g, 'tanh');
    expectVerifyError(replaceNode(g, i, { ...g.nodes[i], op: 'frobnicate' }), /unknown op in: .*frobnicate/);
  });

  it('catches an op whose shape rule fails on the recorded inputs', () => {
    const g = valid();
    const i = nodeIndex(g, 'matmul');
    const n = g.nodes[i];
    expectVerifyError(replaceNode(g, i, { ...n, attrs: { ...n.attrs, transB: true } }), /shape rule fails \(inner dimensions differ/);
  });

  it('catches an arity mismatch', () => {
    const g = valid();
    const i = nodeIndex(g, 'add');
    const n = g.nodes[i];
    expectVerifyError(replaceNode(g, i, { ...n, inputs: [n.inputs[0]] }), /arity 1 ≠ 2 in: .*add/);
  });

  it('catches an output that references a missing value', () => {
    const g = valid();
    const ghost: Value = { id: 999, type: { dtype: 'f32', shape: [] }, name: 'ghost' };
    expectVerifyError({ ...g, outputs: { ...g.outputs, extra: ghost } }, /output "extra" = %999 is not defined/);
  });

  it('catches an output whose value was dropped with its node', () => {
    const g = valid();
    expectVerifyError(withNodes(g, g.nodes.slice(0, -1)), /output "loss" = %\d+ is not defined/);
  });

  it('catches an id at or above nextId', () => {
    const g = valid();
    expectVerifyError({ ...g, nextId: g.nextId - 1 }, /is not below nextId/);
  });

  it('catches a name used by two params', () => {
    const g = valid();
    const p = g.params[1];
    const dup = { ...p, value: { ...p.value, name: g.params[0].value.name } };
    expectVerifyError({ ...g, params: [g.params[0], dup] }, /name "fc\.weight" is used twice/);
  });

  it('catches a linear module naming a missing weight', () => {
    const g = valid();
    expectVerifyError({ ...g, linears: [{ ...g.linears[0], weight: 'fc.nope' }] }, /linear "fc" names missing weight "fc\.nope"/);
  });
});
