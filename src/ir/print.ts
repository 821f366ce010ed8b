// The stable text form (jaxpr-like) used by golden tests and `lorafa compile --emit ir`.
import type { Graph, Init, Node, Value } from './types.ts';
import { fmtLoc, fmtType } from './types.ts';

export interface PrintOptions {
  /** Append `# file:line` to each node (off in golden files, which must not depend on paths). */
  readonly locations?: boolean;
}

export function fmtInit(init: Init): string {
  switch (init.kind) {
    case 'zeros':
    case 'ones':
    case 'tril':
      return init.kind;
    case 'constant':
      return `constant(${num(init.value)})`;
    case 'normal':
      return `normal(std=${num(init.std)}${init.mean ? `, mean=${num(init.mean)}` : ''})`;
    case 'uniform':
      return `uniform(${num(init.low)}, ${num(init.high)})`;
    case 'kaiming_uniform':
      return `kaiming_uniform(a=${num(init.a)}, fan_in=${init.fanIn})`;
    case 'file':
      return `file(${JSON.stringify(init.path)}${init.key ? `, ${JSON.stringify(init.key)}` : ''})`;
    case 'rope':
      return `rope_${init.part}(base=${num(init.base)}, dim=${init.dim})`;
    case 'gram_inverse':
      return `gram_inverse(${init.of}, scale=${num(init.scale)})`;
    case 'arange':
      return `arange(start=${init.start})`;
  }
}

function num(x: number): string {
  return Number.isInteger(x) ? String(x) : Number(x.toPrecision(6)).toString();
}

function fmtAttr(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(fmtAttr).join(',')}]`;
  if (typeof v === 'number') return num(v);
  return String(v);
}

const ref = (v: Value) => `%${v.id}`;

export function printNode(n: Node, opts: PrintOptions = {}): string {
  const attrs = Object.entries(n.attrs)
    .filter(([, v]) => v !== false)
    .map(([k, v]) => (v === true ? k : `${k}=${fmtAttr(v)}`));
  const head = `${ref(n.out)}:${fmtType(n.out.type)} = ${n.op}${attrs.length ? `[${attrs.join(' ')}]` : ''}`;
  const args = n.inputs.map(ref).join(' ');
  const comment = [n.out.name, opts.locations && n.src ? fmtLoc(n.src) : ''].filter(Boolean).join('  ');
  return `${head}${args ? ' ' + args : ''}${comment ? `  # ${comment}` : ''}`;
}

export function printGraph(g: Graph, opts: PrintOptions = {}): string {
  const lines: string[] = [`graph ${g.name} {`];
  for (const i of g.inputs) lines.push(`  input ${ref(i.value)}:${fmtType(i.value.type)} ${i.value.name}`);
  for (const p of g.params) {
    const flags = [p.trainable ? 'trainable' : 'frozen', p.role !== 'weight' ? p.role : ''].filter(Boolean).join(' ');
    lines.push(`  param ${ref(p.value)}:${fmtType(p.value.type)} ${p.value.name} ${flags} ${fmtInit(p.init)}`);
  }
  let phase = '';
  for (const n of g.nodes) {
    if (n.phase !== phase) {
      phase = n.phase;
      lines.push(`  -- ${phase}`);
    }
    lines.push(`  ${printNode(n, opts)}`);
  }
  for (const [name, v] of Object.entries(g.outputs)) lines.push(`  output ${name} = ${ref(v)}`);
  for (const u of g.updates) lines.push(`  update ${u.target} <- ${ref(u.value)}`);
  lines.push('}');
  return lines.join('\n') + '\n';
}
