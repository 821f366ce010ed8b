// What a run leaves in its --out folder besides checkpoints, every file written atomically:
//
//   adapter/            PEFT's format (adapter_config.json + adapter_model.safetensors, A and B
//                       with PEFT's key names), for lora and lora-fa
//   model.safetensors   the whole model, for full fine-tuning (Hugging Face key names, [out, in])
//   merged.safetensors  with --merged: the base with every adapter folded in (W + s·A·B)
//   report.json         every number of the run (settings, losses, evaluations, GPU bytes, plans,
//                       and with --profile the kernel profile)
//   report.md           the same, for people
//   loss.svg            training loss (raw and smoothed) and the evaluations
//   memory.svg          the plan(s) by category at the peak, with the bytes measured
import { join } from 'node:path';
import type { Dataset } from '../data/dataset.ts';
import { fmtBytes } from '../ir/format.ts';
import { exportPeftAdapter, PEFT_TASK_TYPES, type PeftTaskType } from '../io/peft.ts';
import { writeFileAtomic } from '../io/output.ts';
import { listSome, saveMerged, saveStateDict } from '../io/weights.ts';
import { MODES, type Mode } from '../passes/compile.ts';
import { CATEGORIES, CATEGORY_LABELS } from '../passes/memory-plan.ts';
import { inModulesToSave } from '../passes/lora.ts';
import { lineChartSvg, memoryBarsSvg, smooth } from '../report/charts.ts';
import type { TrainOptions, TrainResult } from './loop.ts';
import { keyForLayout, layoutGraph, type MemorySummary, type TrainingProgram } from './program.ts';
import { fmtMetrics } from './metrics.ts';
import { describeSchedule } from './schedule.ts';
import { describeLossScale, describeScaler } from './loss-scale.ts';
import { profileMarkdown } from '../runtime/profile.ts';

/** Everything writeOutputs may write; the rest of an --out folder (checkpoints, the user's files) is carried over. */
export const OUTPUT_NAMES: ReadonlySet<string> = new Set(['adapter', 'model.safetensors', 'merged.safetensors', 'report.json', 'report.md', 'loss.svg', 'memory.svg']);

/** The memory table of one or more plans, by category at each one's peak. */
export function compareLines(plans: ReadonlyMap<Mode, MemorySummary>): string[] {
  const modes = MODES.filter((m) => plans.has(m));
  const rows = [
    ['', ...modes],
    ...CATEGORIES.map((c) => [CATEGORY_LABELS[c], ...modes.map((m) => fmtBytes(plans.get(m)!.atPeak[c]))]),
    ['peak (allocated)', ...modes.map((m) => fmtBytes(plans.get(m)!.peak))],
  ];
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const lines = rows.map((r) => r.map((c, i) => (i ? c.padStart(w[i]) : c.padEnd(w[i]))).join('   '));
  if (modes.length === 3) {
    const peak = (m: Mode) => plans.get(m)!.peak;
    lines.push(`LoRA ÷ LoRA-FA = ${(peak('lora') / peak('lora-fa')).toFixed(3)}×   full ÷ LoRA-FA = ${(peak('full') / peak('lora-fa')).toFixed(3)}×   LoRA − LoRA-FA = ${fmtBytes(peak('lora') - peak('lora-fa'))}`);
  }
  return lines;
}

function taskType(o: TrainOptions, data: Dataset): PeftTaskType | null {
  const t = o.export?.taskType;
  if (t !== undefined) return t === null ? null : ((PEFT_TASK_TYPES as readonly string[]).includes(t) ? (t as PeftTaskType) : null);
  if (data.kind === 'lm') return 'CAUSAL_LM';
  return null;
}

/**
 * target_modules for PEFT when the targets were a pattern or "all-linear": the adapted layers' last
 * name segments (q_proj, c_attn, …) when those select exactly the adapted layers, else their full
 * Hugging Face names.
 */
function peftTargets(p: TrainingProgram): string[] {
  const adapted = new Set(p.weights.adapters.map((a) => a.module));
  const leaves = [...new Set([...adapted].map((m) => m.split('.').pop()!))];
  const selects = (l: { name: string }) => leaves.some((t) => l.name === t || l.name.endsWith(`.${t}`));
  if (p.weights.linears.every((l) => selects(l) === adapted.has(l.name))) return leaves;
  const keyFor = keyForLayout(p.weights);
  return [...adapted].map((m) => keyFor(m));
}

export function writeOutputs(out: string, p: TrainingProgram, r: TrainResult, o: TrainOptions, data: Dataset): string[] {
  const spec = p.spec;
  const written: string[] = [];
  const put = (name: string, text: string) => {
    writeFileAtomic(join(out, name), Buffer.from(text));
    written.push(name);
  };
  const graph = layoutGraph(p.weights);
  const keyFor = keyForLayout(p.weights);
  const command = o.command ?? '';
  const meta = { 'lorafa.model': spec.model, 'lorafa.config': spec.config, 'lorafa.mode': spec.mode, 'lorafa.command': command, ...o.export?.metadata };
  const exp = o.export ?? {};
  if (exp.weights !== false) {
    if (spec.mode === 'full') {
      saveStateDict(join(out, 'model.safetensors'), graph, r.forwardValues, { keyFor, metadata: meta });
      written.push('model.safetensors');
    } else {
      const lora = spec.lora!;
      const targets = lora.targetsRegex || lora.targets.includes('all-linear') ? peftTargets(p) : lora.targets;
      const trainedHeads = lora.modulesToSave.filter((m) => p.weights.params.some((q) => q.trainable && inModulesToSave(q.value.name, [m])));
      exportPeftAdapter(join(out, 'adapter'), graph, r.forwardValues, {
        targets: [...targets],
        modulesToSave: trainedHeads,
        taskType: exp.taskType === undefined && data.kind === 'classify' && p.inputs.some((i) => i.name === 'input_ids') ? 'SEQ_CLS' : taskType(o, data),
        baseModel: exp.baseModel !== undefined ? exp.baseModel : (o.base ?? null),
        keyFor,
        extraMetadata: { ...meta, ...(data.classes ? { 'lorafa.classes': JSON.stringify(data.classes) } : {}) },
      });
      written.push('adapter/adapter_config.json', 'adapter/adapter_model.safetensors');
      if (exp.merged) {
        saveMerged(join(out, 'merged.safetensors'), graph, r.forwardValues, { keyFor, metadata: meta });
        written.push('merged.safetensors');
      }
    }
  }
  if (exp.reports === false) return written;

  const title = o.title ?? `${spec.model} (${spec.config}): ${spec.mode}${spec.gradCorrection ? ' + gradient correction' : ''}`;
  const points = r.losses.map((l) => ({ x: l.step, y: l.loss }));
  put(
    'loss.svg',
    lineChartSvg(
      `${title}, seed ${r.seed}`,
      [
        { label: 'training loss', points, color: '#bbdefb' },
        { label: 'training loss (EMA 0.9)', points: smooth(points), color: '#1565c0' },
        { label: 'evaluation loss', points: r.evals.map((e) => ({ x: e.step, y: e.metrics.loss })), color: '#e65100', markers: true },
      ],
      { x: 'step', y: data.kind === 'lm' ? 'cross-entropy (nats/token)' : 'loss' },
    ),
  );
  const plans = new Map<Mode, MemorySummary>(o.compare ?? [[spec.mode, p.memory]]);
  plans.set(spec.mode, p.memory);
  put(
    'memory.svg',
    memoryBarsSvg(
      `${title}: one training step, planned for this device (measured: ${spec.mode})`,
      MODES.filter((m) => plans.has(m)).map((m) => ({ label: m, atPeak: plans.get(m)!.atPeak, peak: plans.get(m)!.peak, measured: m === spec.mode ? r.measuredBytes : undefined })),
    ),
  );
  const report = {
    title,
    command,
    model: spec.model,
    modelFile: spec.modelFile,
    config: spec.config,
    mode: spec.mode,
    gradCorrection: spec.gradCorrection,
    seed: r.seed,
    steps: r.endStep,
    resumedFrom: r.resumedFrom ?? null,
    batch: spec.batch,
    gradAccum: r.gradAccum,
    lossScale: r.lossScale ?? null,
    optimizer: spec.optimizer,
    schedule: r.schedule,
    lora: spec.lora ?? null,
    data: r.data,
    classes: r.classes ?? null,
    device: r.device,
    before: r.before ?? null,
    after: r.after ?? null,
    ...(o.baselines?.length ? { baselines: o.baselines } : {}),
    msPerStep: r.msPerStep,
    firstStepMs: r.firstStepMs,
    trainableParameters: r.trainable,
    gpuBytes: { measured: r.measuredBytes, planned: p.step.bytes },
    plans: Object.fromEntries([...plans].map(([m, s]) => [m, { peak: s.peak, lowerBound: s.lowerBound, atPeak: s.atPeak }])),
    losses: r.losses,
    evals: r.evals,
    ...(r.profile ? { profile: r.profile } : {}),
  };
  put('report.json', JSON.stringify(report, null, 2) + '\n');
  const pct = (m?: { accuracy?: number }) => (m?.accuracy !== undefined ? `${(100 * m.accuracy).toFixed(2)}%` : '—');
  const lm = data.kind === 'lm';
  put(
    'report.md',
    [
      `# ${title}`,
      '',
      command ? `\`${command}\`` : '',
      '',
      `- data: ${r.data}`,
      ...(r.classes ? [`- classes: ${r.classes.map((c, i) => `${i} = ${c}`).join(', ')}`] : []),
      `- device: ${r.device}`,
      `- ${r.endStep} steps${r.resumedFrom ? ` (resumed at step ${r.startStep})` : ''}, batch ${spec.batch}${r.gradAccum > 1 ? ` × ${r.gradAccum} micro-batches` : ''}, ${spec.optimizer.kind === 'adamw' ? 'AdamW' : 'SGD'}, ${describeSchedule(r.schedule)}, seed ${r.seed}` +
        (spec.lora ? `; LoRA r=${spec.lora.rank} alpha=${spec.lora.alpha} on ${spec.lora.targetsRegex ? `/${spec.lora.targetsRegex}/` : spec.lora.targets.join(', ')}` : ''),
      ...(r.lossScale ? [`- loss scaling: ${describeLossScale(r.lossScale.setting)}, final ${describeScaler(r.lossScale.state)}${r.lossScale.skippedSteps.length ? `; steps skipped for overflowed gradients: ${listSome(r.lossScale.skippedSteps.map(String), 20)}` : ''}`] : []),
      `- trainable parameters: ${r.trainable.toLocaleString('en-US')}`,
      '',
      '| | before training | after training |',
      '|---|---|---|',
      lm ? `| perplexity | ${r.before?.perplexity?.toFixed(3) ?? '—'} | ${r.after?.perplexity?.toFixed(3) ?? '—'} |` : `| accuracy | ${pct(r.before)} | ${pct(r.after)} |`,
      `| evaluation loss | ${r.before?.loss.toFixed(4) ?? '—'} | ${r.after?.loss.toFixed(4) ?? '—'} |`,
      '',
      ...(o.baselines?.length
        ? [
            'Classical baselines on the same rows and input, fitted on the training rows only (src/train/baselines.ts):',
            '',
            '| baseline | accuracy |',
            '|---|---|',
            ...o.baselines.map((b) => `| ${b.name} | ${pct(b)} |`),
            '',
          ]
        : []),
      ...(r.evals.length ? [`Evaluations: ${r.evals.map((e) => `step ${e.step}: ${fmtMetrics(e.metrics, data.unit)}`).join('; ')}.`, ''] : []),
      `Step time ${r.msPerStep.toFixed(1)} ms (first step ${r.firstStepMs.toFixed(0)} ms, with shader compilation).`,
      `GPU bytes of the training step: ${r.measuredBytes} measured at createBuffer, ${p.step.bytes} planned (+${r.lossScale ? '8 B loss and overflow' : '4 B loss'} readback).`,
      '',
      '## Memory plan of one step (bytes live at the peak)',
      '',
      '```',
      ...compareLines(plans),
      '```',
      '',
      ...(r.profile ? ['## Where a step goes', '', profileMarkdown(r.profile, { top: 15 }), ''] : []),
      '![loss](loss.svg) ![memory](memory.svg)',
      '',
      `Files: ${written.concat('report.md').join(', ')}.`,
      '',
    ].join('\n'),
  );
  return written;
}
