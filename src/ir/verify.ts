// The verifier: re-runs every shape rule and checks SSA order and uses. Tests run it after every
// pass; `lorafa compile --verify` runs it on user models.
import { VerifyError } from './errors.ts';
import { isOpName, OPS } from './ops.ts';
import { printNode } from './print.ts';
import { fmtType, sameShape, type Graph, type Value } from './types.ts';

export function verify(g: Graph, after = 'graph'): Graph {
  const defined = new Map<number, Value>();
  const fail = (problem: string): never => {
    throw new VerifyError(`${g.name} after ${after}`, problem);
  };
  const define = (v: Value, what: string) => {
    if (defined.has(v.id)) fail(`%${v.id} (${what} "${v.name}") is defined twice`);
    if (v.id >= g.nextId) fail(`%${v.id} is not below nextId ${g.nextId}`);
    defined.set(v.id, v);
  };
  const names = new Set<string>();
  for (const i of g.inputs) {
    define(i.value, 'input');
    names.add(i.value.name);
  }
  for (const p of g.params) {
    if (names.has(p.value.name)) fail(`name "${p.value.name}" is used twice`);
    names.add(p.value.name);
    define(p.value, 'param');
  }
  for (const n of g.nodes) {
    if (!isOpName(n.op)) fail(`unknown op in: ${printNode(n)}`);
    for (const x of n.inputs) {
      const d = defined.get(x.id);
      if (!d) fail(`%${x.id} is used before it is defined in: ${printNode(n)}`);
      else if (d !== x) fail(`%${x.id} is used with a different value object in: ${printNode(n)}`);
    }
    const def = OPS[n.op as keyof typeof OPS];
    if (def.arity !== 'variadic' && def.arity !== n.inputs.length) fail(`arity ${n.inputs.length} ≠ ${def.arity} in: ${printNode(n)}`);
    let t;
    try {
      t = (def.infer as (i: readonly Value['type'][], a: unknown) => Value['type'])(n.inputs.map((x) => x.type), n.attrs);
    } catch (e) {
      fail(`shape rule fails (${(e as Error).message}) in: ${printNode(n)}`);
    }
    if (t && (t.dtype !== n.out.type.dtype || !sameShape(t.shape, n.out.type.shape))) {
      fail(`result should be ${fmtType(t)} in: ${printNode(n)}`);
    }
    define(n.out, 'node');
  }
  for (const [name, v] of Object.entries(g.outputs)) {
    if (defined.get(v.id) !== v) fail(`output "${name}" = %${v.id} is not defined`);
  }
  const persistent = new Map([...g.params].map((p) => [p.value.name, p.value]));
  const written = new Set<string>();
  for (const u of g.updates) {
    const t = persistent.get(u.target);
    if (!t) fail(`update targets "${u.target}", which is no parameter`);
    else if (!sameShape(t.type.shape, u.value.type.shape)) fail(`update of "${u.target}" ${fmtType(t.type)} with ${fmtType(u.value.type)}`);
    if (written.has(u.target)) fail(`"${u.target}" is updated twice`);
    written.add(u.target);
    if (defined.get(u.value.id) !== u.value) fail(`update of "${u.target}" = %${u.value.id} is not defined`);
  }
  for (const l of g.linears) {
    if (!names.has(l.weight)) fail(`linear "${l.name}" names missing weight "${l.weight}"`);
  }
  for (const a of g.adapters) {
    if (!names.has(a.A) || !names.has(a.B)) fail(`adapter of "${a.module}" names missing params`);
  }
  return g;
}
