// `lorafa compile --emit summary`: parameters, ops, and what LoRA-FA pruned, in the user's names.
import type { Compiled } from '../passes/compile.ts';
import { fmtBytes, fmtCount } from '../ir/format.ts';
import type { Graph, Node, Value } from '../ir/types.ts';
import { byteSize, fmtType, numel } from '../ir/types.ts';

function table(rows: readonly (readonly string[])[], align: readonly ('l' | 'r')[]): string[] {
  const widths = align.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((cell, c) => (align[c] === 'r' ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join('  ').trimEnd());
}

function opCounts(nodes: readonly Node[]): string {
  const counts = new Map<string, number>();
  for (const n of nodes) counts.set(n.op, (counts.get(n.op) ?? 0) + 1);
  return [...counts.entries()]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([op, c]) => `${op} ${c}`)
    .join(', ');
}

/** Longer lists are cut here; --emit ir shows everything. */
const LIST_MAX = 8;

const valueLine = (v: Value) => [v.name, fmtType(v.type), fmtBytes(byteSize(v.type))];

export interface SummaryContext {
  readonly file: string;
  readonly config: string;
  readonly cfg: Readonly<Record<string, unknown>>;
}

export function summarize(c: Compiled, ctx: SummaryContext): string {
  const g: Graph = c.joint;
  const out: string[] = [];
  const cfg = Object.entries(ctx.cfg).map(([k, v]) => `${k}=${v}`).join(' ');
  out.push(`model    ${ctx.file} (${g.name}), config ${ctx.config}: ${cfg}`);
  const lora = c.reports.lora;
  if (lora && lora.adapters.length) {
    const a = lora.adapters[0];
    out.push(
      `mode     ${c.mode}  rank=${a.rank} alpha=${a.alpha} scale=${+a.scale.toPrecision(6)}  ${lora.adapters.length} adapted linear layers: ${lora.adapters.map((x) => x.module).join(', ')}`,
    );
  } else {
    out.push(`mode     ${c.mode}`);
  }

  out.push('', 'parameters');
  const groups = [
    ['trainable', g.params.filter((p) => p.trainable)],
    ['frozen', g.params.filter((p) => !p.trainable && p.role !== 'buffer')],
    ['buffers', g.params.filter((p) => p.role === 'buffer')],
  ] as const;
  const rows: string[][] = [['', 'tensors', 'elements', 'bytes']];
  for (const [label, ps] of groups) {
    rows.push([
      label,
      fmtCount(ps.length),
      fmtCount(ps.reduce((s, p) => s + numel(p.value.type.shape), 0)),
      fmtBytes(ps.reduce((s, p) => s + byteSize(p.value.type), 0)),
    ]);
  }
  out.push(...table(rows, ['l', 'r', 'r', 'r']).map((l) => '  ' + l));
  const trainable = g.params.filter((p) => p.trainable);
  const shown = trainable.slice(0, 12);
  out.push(`  trainable: ${shown.map((p) => `${p.value.name} ${fmtType(p.value.type)}`).join(', ')}${trainable.length > shown.length ? `, … (${trainable.length - shown.length} more)` : ''}`);

  const fwd = g.nodes.filter((n) => n.phase === 'forward');
  const bwd = g.nodes.filter((n) => n.phase === 'backward');
  out.push('', 'ops');
  out.push(`  forward   ${fwd.length} nodes: ${opCounts(fwd)}`);
  out.push(`  backward  ${bwd.length} nodes: ${opCounts(bwd)}`);
  out.push(`  gradients ${Object.keys(g.outputs).filter((k) => k.startsWith('grad.')).length} (one per trainable parameter)`);

  const pruned = c.reports.pruned;
  if (pruned) {
    out.push('', 'LoRA-FA pruned (against the same model trained as LoRA, A trainable)');
    out.push(`  gradient nodes removed: ${pruned.prunedNodes.length}: ${opCounts(pruned.prunedNodes)}`);
    const dA = pruned.prunedNodes.filter((n) => g.adapters.some((a) => n.out.name.startsWith(`d.${a.module}.lora.xA`)));
    if (dA.length) out.push(`    of which dA products (xᵀ·…): ${dA.map((n) => `${n.out.name} ${fmtType(n.out.type)}`).join(', ')}`);
    out.push(`  activations backward no longer reads: ${pruned.prunedActivations.length}, ${fmtBytes(pruned.prunedBytes)} per step`);
    out.push(...table(pruned.prunedActivations.slice(0, LIST_MAX).map(valueLine), ['l', 'l', 'r']).map((l) => '    ' + l));
    if (pruned.prunedActivations.length > LIST_MAX) out.push(`    … ${pruned.prunedActivations.length - LIST_MAX} more`);
    out.push('  adapted layers, full-rank input x:');
    const inRows = pruned.inputs.slice(0, LIST_MAX).map((s) => [
      s.module,
      `x = ${s.input.name} ${fmtType(s.input.type)}`,
      s.saved
        ? `SAVED: read by ${s.reasons.join('; ')}`
        : s.dataInput
          ? `data input, resident all step${s.reasons.length ? `; read by ${s.reasons.join('; ')}` : ', backward reads none'}`
          : 'not saved',
    ]);
    out.push(...table(inRows, ['l', 'l', 'l']).map((l) => '    ' + l));
    const rest = pruned.inputs.slice(LIST_MAX);
    if (rest.length) {
      const kept = rest.filter((s) => s.saved).length;
      out.push(`    … ${rest.length} more: ${rest.length - kept} not saved${kept ? `, ${kept} saved` : ''}`);
    }
  }
  return out.join('\n');
}
