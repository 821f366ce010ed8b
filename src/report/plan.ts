// `lorafa plan`: the memory plan of one training step as a table, a comparison of modes, the
// largest saved activations, JSON for machines and an SVG picture.
import { fmtBytes, fmtDecimalBytes as decimal } from '../ir/format.ts';
import { fmtType, type Graph } from '../ir/types.ts';
import type { Compiled, Mode } from '../passes/compile.ts';
import { adapterInputs } from '../passes/lora-fa.ts';
import {
  CATEGORIES,
  CATEGORY_LABELS,
  type Category,
  type MemoryPlan,
  type PlannedTensor,
} from '../passes/memory-plan.ts';
import { planCompareSvg, planSvg, type PlanSvgOptions } from './plan-svg.ts';
import type { FitResult } from '../passes/fit.ts';
import { overheadPercent, type RematReport } from '../passes/remat.ts';

/** Bytes in the unit family the user wrote: decimal (GB) first, or binary (GiB) first. */
export function byteUnit(text: string): 'decimal' | 'binary' {
  return /\d\s*[kmg]b$/i.test(text.trim()) ? 'decimal' : 'binary';
}


/** A size in both families, the user's first: "80 GB (74.5 GiB)" or "22.0 GiB (23.6 GB)". */
export function bothUnits(n: number, unit: 'decimal' | 'binary'): string {
  return unit === 'decimal' ? `${decimal(n)} (${fmtBytes(n)})` : `${fmtBytes(n)} (${decimal(n)})`;
}

/** FLOPs with an SI prefix: 812 kFLOP, 42.8 TFLOP. */
export function fmtFlops(n: number): string {
  const units: [number, string][] = [[1e15, 'PFLOP'], [1e12, 'TFLOP'], [1e9, 'GFLOP'], [1e6, 'MFLOP'], [1e3, 'kFLOP']];
  const [d, u] = units.find(([x]) => n >= x) ?? [1, 'FLOP'];
  return `${Number((n / d).toPrecision(3))} ${u}`;
}

const pct = (a: number, b: number) => `${((100 * a) / b).toFixed(1)}%`;

/** The --budget line(s): what recomputation cost, or that the step fit without it. */
export function rematLines(pm: PlannedMode): string[] {
  const r = pm.remat;
  if (!r) return [];
  const head = `budget   ${bothUnits(r.budget, r.unit ?? 'binary')}: without recomputation the step needs ${fmtBytes(r.plainPeak)}`;
  const x = r.report;
  if (!x) return [`${head}, which fits: nothing recomputed`];
  return [
    `${head}; with it ${fmtBytes(pm.plan.peak)} (smallest reachable ${fmtBytes(x.minPeak)})`,
    `remat    ${x.dropped.length} saved values recomputed in backward (${x.recomputeNodes} recompute nodes): ${fmtBytes(x.savedBefore - x.savedAfter)} no longer saved (${fmtBytes(x.savedBefore)} → ${fmtBytes(x.savedAfter)} when backward starts)`,
    `         overhead ${fmtFlops(x.extraFlops)}, ${pct(x.extraFlops, x.stepFlops)} of the step's ${fmtFlops(x.stepFlops)}`,
  ];
}

function rematJson(pm: PlannedMode): unknown {
  const r = pm.remat;
  if (!r) return undefined;
  const x = r.report;
  return {
    budget: r.budget,
    plainPeak: r.plainPeak,
    recomputed: x ? x.dropped.length : 0,
    recomputedValues: x?.dropped ?? [],
    recomputeNodes: x?.recomputeNodes ?? 0,
    extraFlops: x?.extraFlops ?? 0,
    stepFlops: x?.stepFlops,
    overheadPercent: overheadPercent(x),
    savedBytesDropped: x ? x.savedBefore - x.savedAfter : 0,
    minPeak: x?.minPeak,
  };
}

export interface FitContext extends PlanContext {
  readonly size: number;
  readonly unit: 'decimal' | 'binary';
  readonly ms: number;
}

export function fitTable(ctx: FitContext, fits: readonly FitResult[]): string {
  const cfg = Object.entries(ctx.cfg).filter(([k]) => k !== 'batch').map(([k, v]) => `${k}=${v}`).join(' ');
  const rows: string[][] = [['mode', 'batch, no remat', 'peak', 'batch, remat', 'peak', 'remat overhead at that batch']];
  for (const f of fits) {
    const r = f.remat.report;
    rows.push([
      f.mode,
      f.plain.batch ? String(f.plain.batch) : 'none',
      f.plain.peak !== undefined ? fmtBytes(f.plain.peak) : f.persistent > ctx.size ? `(persistent alone ${fmtBytes(f.persistent)})` : `(1: ${fmtBytes(f.plain.nextPeak)})`,
      f.remat.batch ? String(f.remat.batch) : 'none',
      f.remat.peak !== undefined ? fmtBytes(f.remat.peak) : f.persistent > ctx.size ? '' : `(1: ${fmtBytes(f.remat.nextPeak)})`,
      !f.remat.batch ? '—' : r ? `${pct(r.extraFlops, r.stepFlops)} FLOPs (${r.dropped.length} values recomputed)` : 'none needed',
    ]);
  }
  return [
    `model    ${ctx.file}, config ${ctx.config}: ${cfg}`,
    `         optimizer ${ctx.optimizer}; storage ${ctx.dtype}; limits ${ctx.limitsName}`,
    `fits ${bothUnits(ctx.size, ctx.unit)}: the largest batch whose plan's peak (persistent buffers + arena) fits, each checked exactly with the next batch (${fits.reduce((s, f) => s + f.plans, 0)} plans, ${(ctx.ms / 1000).toFixed(1)} s)`,
    '',
    ...pad(rows, [false, true, true, true, true, false]),
  ].join('\n');
}

export function fitJson(ctx: FitContext, fits: readonly FitResult[]): unknown {
  return {
    model: ctx.file,
    config: ctx.config,
    sizes: ctx.cfg,
    optimizer: ctx.optimizer,
    dtype: ctx.dtype,
    size: ctx.size,
    unit: ctx.unit === 'decimal' ? 'GB' : 'GiB',
    modes: Object.fromEntries(
      fits.map((f) => [
        f.mode,
        {
          batch: f.plain.batch,
          peak: f.plain.peak ?? null,
          nextBatchPeak: f.plain.nextPeak,
          rematBatch: f.remat.batch,
          rematPeak: f.remat.peak ?? null,
          rematNextBatchPeak: f.remat.nextPeak,
          persistent: f.persistent,
          rematOverheadPercent: overheadPercent(f.remat.report),
          rematExtraFlops: f.remat.report?.extraFlops ?? 0,
          recomputed: f.remat.report?.dropped.length ?? 0,
        },
      ]),
    ),
  };
}

export interface PlannedMode {
  readonly mode: Mode;
  readonly compiled: Compiled;
  readonly plan: MemoryPlan;
  readonly ms: number;
  /** Planned under --budget: the budget, the peak without recomputation, and what remat did (none when it fit). */
  readonly remat?: { readonly budget: number; readonly plainPeak: number; readonly report?: RematReport; readonly unit?: 'decimal' | 'binary' };
}

export interface PlanContext {
  readonly file: string;
  readonly config: string;
  readonly cfg: Readonly<Record<string, unknown>>;
  readonly optimizer: string;
  readonly limitsName: string;
  /** Storage dtype (for --fit, which prints no plan). */
  readonly dtype?: string;
}

function pad(rows: readonly (readonly string[])[], right: readonly boolean[]): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((cell, c) => (right[c] ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join('   ').trimEnd());
}

function limitsLine(p: MemoryPlan, name: string): string {
  const big = (n: number) => (n >= Number.MAX_SAFE_INTEGER ? 'unlimited' : fmtBytes(n));
  return `limits ${name}: alignment ${p.limits.alignment} B, max binding ${big(p.limits.maxBindingSize)}, max buffer ${big(p.limits.maxBufferSize)}`;
}

function header(ctx: PlanContext, pm: PlannedMode): string[] {
  const cfg = Object.entries(ctx.cfg).map(([k, v]) => `${k}=${v}`).join(' ');
  const a = pm.compiled.reports.lora?.adapters[0];
  const lora = a ? ` rank=${a.rank} alpha=${a.alpha}, ${pm.compiled.reports.lora!.adapters.length} adapted layers` : '';
  return [
    `model    ${ctx.file}, config ${ctx.config}: ${cfg}`,
    `step     ${pm.mode}${lora}; optimizer ${ctx.optimizer}; storage ${pm.plan.dtype}${pm.plan.dtype !== 'f32' ? ' (trainable parameters, gradients and optimizer state in f32)' : ''}`,
    `         ${limitsLine(pm.plan, ctx.limitsName)}`,
    `schedule ${pm.plan.scheduleName}: ${pm.plan.schedule.length} kernels, backward from step ${pm.plan.backwardStart}; planned in ${pm.ms.toFixed(0)} ms`,
  ];
}

function buffersLine(p: MemoryPlan): string {
  const persistent = p.buffers.filter((b) => b.region === 'persistent');
  const arena = p.buffers.filter((b) => b.region === 'arena');
  return `${p.buffers.length} buffers: ${persistent.length} persistent (${fmtBytes(persistent.reduce((s, b) => s + b.bytes, 0))}), ${arena.length} arena (${fmtBytes(arena.reduce((s, b) => s + b.bytes, 0))})`;
}

export function planTable(ctx: PlanContext, pm: PlannedMode): string {
  const p = pm.plan;
  const rows: string[][] = [['category', 'at peak', 'share']];
  for (const c of CATEGORIES) rows.push([CATEGORY_LABELS[c], fmtBytes(p.atPeak[c]), `${((100 * p.atPeak[c]) / p.lowerBound).toFixed(1)}%`]);
  rows.push(['lower bound', fmtBytes(p.lowerBound), `live bytes at step ${p.peakStep}`]);
  rows.push(['peak', fmtBytes(p.peak), buffersLine(p)]);
  rows.push(['fragmentation', p.fragmentation.toFixed(3), 'peak ÷ lower bound']);
  return [...header(ctx, pm), ...rematLines(pm), '', ...pad(rows, [false, true, false])].join('\n');
}

export function compareTable(ctx: PlanContext, modes: readonly PlannedMode[]): string {
  const by = (m: Mode) => modes.find((x) => x.mode === m)!;
  const rows: string[][] = [['category', ...modes.map((m) => m.mode)]];
  for (const c of CATEGORIES) rows.push([CATEGORY_LABELS[c], ...modes.map((m) => fmtBytes(m.plan.atPeak[c]))]);
  rows.push(['lower bound', ...modes.map((m) => fmtBytes(m.plan.lowerBound))]);
  rows.push(['peak', ...modes.map((m) => fmtBytes(m.plan.peak))]);
  rows.push(['fragmentation', ...modes.map((m) => m.plan.fragmentation.toFixed(3))]);
  rows.push(['planning time', ...modes.map((m) => `${m.ms.toFixed(0)} ms`)]);
  const ratio = (a: Mode, b: Mode, key: (p: MemoryPlan) => number) => (key(by(a).plan) / key(by(b).plan)).toFixed(2) + '×';
  // Every saved activation is live when backward starts (the peak step may be later, when some
  // are already freed, and differ between modes).
  const saved = (p: MemoryPlan) => p.timeline[p.backwardStart]?.saved ?? 0;
  const out = [
    ...header(ctx, by('lora-fa')).slice(0, 1),
    `         optimizer ${ctx.optimizer}; storage ${by('lora-fa').plan.dtype}; ${limitsLine(by('lora-fa').plan, ctx.limitsName)}`,
    '',
    ...pad(rows, [false, ...modes.map(() => true)]),
    '',
    `peak:              LoRA ÷ LoRA-FA = ${ratio('lora', 'lora-fa', (p) => p.peak)}   full ÷ LoRA-FA = ${ratio('full', 'lora-fa', (p) => p.peak)}   full ÷ LoRA = ${ratio('full', 'lora', (p) => p.peak)}`,
    `saved activations when backward starts: ${modes.map((m) => `${m.mode} ${fmtBytes(saved(m.plan))}`).join(', ')}`,
    `                   LoRA ÷ LoRA-FA = ${ratio('lora', 'lora-fa', saved)}   LoRA − LoRA-FA = ${fmtBytes(saved(by('lora').plan) - saved(by('lora-fa').plan))}`,
    ...modes.flatMap((m) => (m.remat ? ['', `[${m.mode}]`, ...rematLines(m)] : [])),
  ];
  return out.join('\n');
}

/** Root tensor of each adapted layer's input in the plan (views resolved). */
function rootTensor(p: MemoryPlan, id: number): PlannedTensor | undefined {
  let r = id;
  for (let a = p.aliases.get(r); a !== undefined && a >= 0; a = p.aliases.get(r)) r = a;
  return p.tensors.find((t) => t.id === r);
}

export function topTable(pm: PlannedMode, n: number): string {
  const p = pm.plan;
  const saved = p.tensors.filter((t) => t.category === 'saved').sort((a, b) => b.bytes - a.bytes || a.start - b.start);
  const out = [`largest saved activations (${saved.length} in all, ${fmtBytes(p.timeline[p.backwardStart]?.saved ?? 0)} when backward starts):`];
  const rows = saved.slice(0, n).map((t) => [t.name, `${t.dtype}[${t.shape.join(',')}]`, fmtBytes(t.bytes), `steps ${t.start}–${t.end}`]);
  if (rows.length) out.push(...pad(rows, [false, false, true, false]).map((l) => '  ' + l));
  const step: Graph = pm.compiled.step ?? pm.compiled.joint;
  if (step.adapters.length) {
    out.push('', 'adapted layers, full-rank input x:');
    const status = adapterInputs(step);
    const rows2 = status.map((s) => {
      const t = rootTensor(p, s.input.id);
      const where = s.dataInput
        ? 'data input (persistent)'
        : t?.category === 'saved'
          ? `SAVED (${fmtBytes(t.bytes)}): read by ${s.reasons.join('; ') || 'a later forward node'}`
          : 'not saved: its lifetime ends in the forward pass';
      const type = t ? { dtype: t.dtype, shape: s.input.type.shape } : s.input.type;
      return [s.module, `${s.input.name} ${fmtType(type)}`, where];
    });
    out.push(...pad(rows2.slice(0, n), [false, false, false]).map((l) => '  ' + l));
    if (rows2.length > n) out.push(`  … and ${rows2.length - n} more adapted layers (--top ${rows2.length} to list all)`);
  }
  return out.join('\n');
}

export function planJson(ctx: PlanContext, pm: PlannedMode): unknown {
  const p = pm.plan;
  const step: Graph = pm.compiled.step ?? pm.compiled.joint;
  return {
    model: ctx.file,
    config: ctx.config,
    sizes: ctx.cfg,
    mode: pm.mode,
    optimizer: ctx.optimizer,
    dtype: p.dtype,
    limits: { preset: ctx.limitsName, ...p.limits },
    schedule: { order: p.scheduleName, steps: p.schedule.length, backwardStart: p.backwardStart },
    peak: p.peak,
    remat: rematJson(pm),
    lowerBound: p.lowerBound,
    fragmentation: Number(p.fragmentation.toFixed(6)),
    peakStep: p.peakStep,
    atPeak: p.atPeak,
    buffers: p.buffers,
    tensors: p.tensors.map((t) => ({
      name: t.name,
      shape: t.shape,
      dtype: t.dtype,
      bytes: t.bytes,
      category: t.category,
      buffer: t.buffer,
      offset: t.offset,
      start: t.start,
      end: t.end,
    })),
    adapters: adapterInputs(step).map((s) => ({
      module: s.module,
      input: s.input.name,
      inputSaved: rootTensor(p, s.input.id)?.category === 'saved',
      dataInput: s.dataInput,
      reasons: s.reasons,
    })),
  };
}

/**
 * The plan as an SVG picture of live bytes along the schedule: one mode stacked by category, or
 * (several modes, as --compare plans them) one curve per mode on shared axes, each peak labelled.
 */
export function planSvgText(ctx: PlanContext, pm: PlannedMode | readonly PlannedMode[], o: PlanSvgOptions = {}): string {
  const modes = Array.isArray(pm) ? (pm as readonly PlannedMode[]) : [pm as PlannedMode];
  if (modes.length === 1) return planSvg(modes[0].plan, `${ctx.file} (${ctx.config}), ${modes[0].mode}, ${ctx.optimizer}, ${modes[0].plan.dtype}`, o);
  const title = `${ctx.file} (${ctx.config}), ${modes.map((m) => m.mode).join(' vs ')}, ${ctx.optimizer}, ${modes[0].plan.dtype}`;
  return planCompareSvg(modes.map((m) => ({ label: m.mode, plan: m.plan })), title, o);
}

export type { Category };
