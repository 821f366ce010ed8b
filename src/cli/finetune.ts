// `lorafa finetune <task>`: fine-tune a shipped base model on a real data set, on this machine's
// GPU, and say what it cost and what it bought:
//
//   1. the memory plan of this task's training step in full / LoRA / LoRA-FA (this device's limits);
//   2. accuracy (or loss) of the frozen base, training, accuracy after;
//   3. <out>/: report.md and report.json (the numbers), loss.svg (the loss curve), memory.svg (the
//      plans by category, with the bytes measured at createBuffer), adapter/ (PEFT's format:
//      adapter_config.json + adapter_model.safetensors) or, for full fine-tuning, model.safetensors,
//      and with --merged, merged.safetensors (the adapters folded into the base weights).
import { mkdirSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { fmtBytes } from '../ir/format.ts';
import { LorafaError } from '../ir/errors.ts';
import { exportPeftAdapter } from '../io/peft.ts';
import { saveMerged, saveStateDict, writeFileAtomic } from '../io/weights.ts';
import { MODES, type Compiled, type Mode } from '../passes/compile.ts';
import { CATEGORIES, CATEGORY_LABELS, type MemoryPlan } from '../passes/memory-plan.ts';
import type { OptimizerOptions } from '../passes/optimizer.ts';
import { acquireGpu } from '../runtime/gpu.ts';
import { gpuLimits, planStep } from '../runtime/session.ts';
import { trace } from './load.ts';
import { stepProgress } from '../finetune/progress.ts';
import { lineChartSvg, memoryBarsSvg, smooth } from '../finetune/report.ts';
import { fmtMetrics, loraOptionsFor, openTask, runTask, type RunResult } from '../finetune/run.ts';
import { taskByName, type Task } from '../finetune/tasks.ts';

export interface FinetuneFlags {
  mode: string;
  gradCorrection?: boolean;
  steps?: number;
  lr?: number;
  seed: number;
  rank?: number;
  alpha?: number;
  targets?: string;
  base?: string;
  fromScratch?: boolean;
  initAdapter?: string;
  out?: string;
  merged?: boolean;
  progress: 'auto' | 'bar' | 'lines' | 'none';
}

function show(p: string): string {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}

/** Plans of the task's step in all three modes, with this device's limits (compiled steps included). */
export async function comparePlans(task: Task, ctx: Awaited<ReturnType<typeof openTask>>, f: { rank?: number; alpha?: number; targets?: readonly string[]; optimizer: OptimizerOptions }) {
  const gpu = await acquireGpu();
  const graph = trace(ctx.model, task.config);
  const plans = new Map<Mode, { compiled: Compiled; memory: MemoryPlan }>();
  for (const mode of MODES) {
    const lora = loraOptionsFor(task, ctx.model, { mode, rank: f.rank, alpha: f.alpha, targets: f.targets });
    plans.set(mode, planStep(graph, { mode, lora, optimizer: f.optimizer }, gpuLimits(gpu)));
  }
  return plans;
}

export function compareLines(plans: ReadonlyMap<Mode, MemoryPlan>): string[] {
  const rows = [['', ...MODES], ...CATEGORIES.map((c) => [CATEGORY_LABELS[c], ...MODES.map((m) => fmtBytes(plans.get(m)!.atPeak[c]))]), ['peak (allocated)', ...MODES.map((m) => fmtBytes(plans.get(m)!.peak))]];
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const lines = rows.map((r) => r.map((c, i) => (i ? c.padStart(w[i]) : c.padEnd(w[i]))).join('   '));
  const peak = (m: Mode) => plans.get(m)!.peak;
  lines.push(`LoRA ÷ LoRA-FA = ${(peak('lora') / peak('lora-fa')).toFixed(3)}×   full ÷ LoRA-FA = ${(peak('full') / peak('lora-fa')).toFixed(3)}×   LoRA − LoRA-FA = ${fmtBytes(peak('lora') - peak('lora-fa'))}`);
  return lines;
}

export async function finetuneCommand(taskName: string, flags: FinetuneFlags, command: string): Promise<RunResult> {
  const task = taskByName(taskName);
  if (!(MODES as readonly string[]).includes(flags.mode)) throw new LorafaError('--mode', `unknown mode "${flags.mode}"`, `use one of: ${MODES.join(', ')}`);
  const mode = flags.mode as Mode;
  if (flags.gradCorrection && mode !== 'lora-fa') throw new LorafaError('--grad-correction', `the gradient correction is for LoRA-FA (A frozen); mode is ${mode}`, 'use --mode lora-fa, or drop --grad-correction');
  if (flags.initAdapter && mode === 'full') throw new LorafaError('--init-adapter', 'full fine-tuning has no adapters to start from', 'use --mode lora or lora-fa');
  const targets = flags.targets?.split(',').map((s) => s.trim()).filter(Boolean);
  const out = resolve(flags.out ?? join('out', `finetune-${task.name}-${mode}${flags.gradCorrection ? '-gc' : ''}`));
  const base = flags.fromScratch ? null : flags.base;
  const log = (s: string) => console.log(s);

  const ctx = await openTask(task, flags.seed, { base });
  const optimizer = task.defaults.optimizer;
  log(`lorafa finetune ${task.name}: ${task.description}`);
  log(`data: ${ctx.data.description}`);
  const gpu = await acquireGpu();
  log(`device: ${gpu.description}`);

  log(`\nmemory plan of one training step (${task.model} config ${task.config}, AdamW, f32, this device's limits)`);
  const compared = await comparePlans(task, ctx, { rank: flags.rank, alpha: flags.alpha, targets, optimizer });
  const plans = new Map([...compared].map(([m, p]) => [m, p.memory]));
  for (const l of compareLines(plans)) log('  ' + l);

  log(`\ntraining: ${mode}${flags.gradCorrection ? ' + gradient correction' : ''}`);
  const progress = stepProgress(task.name, { lines: flags.progress === 'lines' || (flags.progress === 'auto' && !process.stderr.isTTY), log });
  const r = await runTask(ctx, {
    mode,
    gradCorrection: flags.gradCorrection,
    steps: flags.steps,
    lr: flags.lr,
    rank: flags.rank,
    alpha: flags.alpha,
    targets,
    base,
    initAdapter: flags.initAdapter,
    // The comparison planned this very step (same model, rank, targets, optimizer) unless the
    // gradient correction changes it.
    planned: flags.gradCorrection ? undefined : compared.get(mode),
    log,
    onStep: flags.progress === 'none' ? undefined : progress.step,
  });
  progress.end();
  log(`after ${r.steps} steps: ${fmtMetrics(r.after)}`);
  if (r.before?.accuracy !== undefined && r.after.accuracy !== undefined) {
    log(`accuracy: ${(100 * r.before.accuracy).toFixed(2)}% (frozen base) → ${(100 * r.after.accuracy).toFixed(2)}% (${mode})`);
  }
  log(`GPU: ${fmtBytes(r.gpu.measured)} measured at createBuffer for the training step; the plan says ${fmtBytes(r.gpu.planned)} (+4 B loss readback)`);
  log(`${r.msPerStep.toFixed(1)} ms/step (first step ${r.firstStepMs.toFixed(0)} ms, with shader compilation); ${r.trainable.toLocaleString('en-US')} trainable parameters`);

  // Files: everything written atomically (temp file, fsync, rename).
  mkdirSync(out, { recursive: true });
  const written: string[] = [];
  const put = (name: string, text: string) => {
    writeFileAtomic(join(out, name), Buffer.from(text));
    written.push(name);
  };
  const keyFor = ctx.model.def.stateDictKey;
  if (mode === 'full') {
    saveStateDict(join(out, 'model.safetensors'), r.forward, r.values, { keyFor, metadata: { task: task.name, mode, seed: String(flags.seed), command } });
    written.push('model.safetensors');
  } else {
    const lora = r.lora!;
    exportPeftAdapter(join(out, 'adapter'), r.forward, r.values, {
      targets: [...(lora.targets as readonly string[])],
      modulesToSave: ctx.model.def.modulesToSave?.filter((m) => r.forward.params.some((p) => p.trainable && p.value.name.startsWith(m + '.'))),
      taskType: task.kind === 'classify' && task.name === 'spam' ? 'SEQ_CLS' : null,
      baseModel: task.base ? `models/pretrained/${task.base}` : undefined,
      keyFor,
      extraMetadata: { 'lorafa.mode': mode, 'lorafa.task': task.name, 'lorafa.command': command },
    });
    written.push('adapter/adapter_config.json', 'adapter/adapter_model.safetensors');
    if (flags.merged) {
      saveMerged(join(out, 'merged.safetensors'), r.forward, r.values, { keyFor, metadata: { task: task.name, mode, command } });
      written.push('merged.safetensors');
    }
  }
  const points = r.losses.map((l) => ({ x: l.step, y: l.loss }));
  put(
    'loss.svg',
    lineChartSvg(
      `${task.name}: ${mode}${flags.gradCorrection ? ' + gradient correction' : ''}, seed ${flags.seed}`,
      [
        { label: 'training loss', points, color: '#bbdefb' },
        { label: 'training loss (EMA 0.9)', points: smooth(points), color: '#1565c0' },
        { label: 'evaluation loss', points: r.evals.map((e) => ({ x: e.step, y: e.metrics.loss })), color: '#e65100', markers: true },
      ],
      { x: 'step', y: task.kind === 'lm' ? 'cross-entropy (nats/char)' : 'cross-entropy' },
    ),
  );
  put(
    'memory.svg',
    memoryBarsSvg(
      `${task.name}: one training step, planned for this device (measured: ${mode})`,
      MODES.map((m) => ({ label: m, atPeak: plans.get(m)!.atPeak, peak: plans.get(m)!.peak, measured: m === mode ? r.gpu.measured : undefined })),
    ),
  );
  const report = {
    task: task.name,
    command,
    mode,
    gradCorrection: !!flags.gradCorrection,
    seed: flags.seed,
    steps: r.steps,
    lr: r.lr,
    lora: r.lora ? { rank: r.lora.rank, alpha: r.lora.alpha, targets: r.lora.targets, modulesToSave: r.lora.modulesToSave } : null,
    data: r.data,
    device: r.device,
    before: r.before,
    after: r.after,
    msPerStep: r.msPerStep,
    firstStepMs: r.firstStepMs,
    trainableParameters: r.trainable,
    gpuBytes: { measured: r.gpu.measured, planned: r.gpu.planned },
    plans: Object.fromEntries(MODES.map((m) => [m, { peak: plans.get(m)!.peak, lowerBound: plans.get(m)!.lowerBound, atPeak: plans.get(m)!.atPeak }])),
    losses: r.losses,
    evals: r.evals,
  };
  put('report.json', JSON.stringify(report, null, 2) + '\n');
  const pct = (m?: { accuracy?: number }) => (m?.accuracy !== undefined ? `${(100 * m.accuracy).toFixed(2)}%` : '—');
  put(
    'report.md',
    [
      `# ${task.name}: ${mode}${flags.gradCorrection ? ' + gradient correction' : ''}`,
      '',
      `\`${command}\``,
      '',
      `- data: ${r.data}`,
      `- device: ${r.device}`,
      `- ${r.steps} steps, AdamW, peak lr ${r.lr} (warm-up ${task.defaults.warmup}, cosine to lr/10), seed ${flags.seed}` + (r.lora ? `; LoRA r=${r.lora.rank} alpha=${r.lora.alpha} on ${[...(r.lora.targets as readonly string[])].join(', ')}` : ''),
      `- trainable parameters: ${r.trainable.toLocaleString('en-US')}`,
      '',
      '| | frozen base | after training |',
      '|---|---|---|',
      `| accuracy | ${pct(r.before)} | ${pct(r.after)} |`,
      `| evaluation loss | ${r.before?.loss.toFixed(4) ?? '—'} | ${r.after.loss.toFixed(4)} |`,
      '',
      `Step time ${r.msPerStep.toFixed(1)} ms (first step ${r.firstStepMs.toFixed(0)} ms, with shader compilation).`,
      `GPU bytes of the training step: ${r.gpu.measured} measured at createBuffer, ${r.gpu.planned} planned (+4 B loss readback).`,
      '',
      '## Memory plan of one step, by mode (bytes live at the peak)',
      '',
      '```',
      ...compareLines(plans),
      '```',
      '',
      '![loss](loss.svg) ![memory](memory.svg)',
      '',
      `Files: ${written.concat('report.md').join(', ')}.`,
      '',
    ].join('\n'),
  );
  log(`\nwrote ${show(out)}/: ${written.join(', ')}`);
  return r;
}
