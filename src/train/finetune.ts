// finetune: compile a model and train it on data, in one call — what `lorafa finetune`, `npm
// start`, `npm run pretrain` and the experiment run, and the training entry point of the API.
//
// `model` is a model file (the user's own) or a preset name (mnist, fashion-mnist, brown, email, spam:
// a shipped model file, config, base model, data set and defaults; src/train/presets.ts). Either
// way: trace → compile (full / lora / lora-fa) → plan for this GPU → lower → open the data → the
// one training loop (loop.ts). With `compare`, the step is also planned in the other two modes, for
// the memory table and memory.svg.
import { resolve } from 'node:path';
import { existsSync } from 'node:fs';
import type { Dataset } from '../data/dataset.ts';
import { LorafaError } from '../ir/errors.ts';
import { loadModel, trace, type LoadedModel } from '../model/load.ts';
import { isMode, MODES, type Mode } from '../passes/compile.ts';
import { checkModulesToSave, type LoraOptions } from '../passes/lora.ts';
import type { OptimizerOptions } from '../passes/optimizer.ts';
import { STORAGE_DTYPES, type StorageDType } from '../passes/memory-plan.ts';
import { acquireGpu, type Gpu } from '../runtime/gpu.ts';
import { gpuLimits, kernelOptionsFor } from '../runtime/session.ts';
import { KERNEL_CHOICES, type KernelChoice } from '../codegen/kernel.ts';
import { BASELINE_PRESETS, presetBaselines, type BaselineResult } from './baselines.ts';
import { openTrainingData, type DataFlags } from './data.ts';
import { runTraining, type TrainOptions, type TrainResult } from './loop.ts';
import { compareLines } from './outputs.ts';
import { isPreset, PRESET_NAMES, PRESETS, PRETRAINED_DIR, presetModelFile, type Preset } from './presets.ts';
import { chooseModel } from './hf.ts';
import { compileProgram, memorySummary, planStep, type MemorySummary, type TrainingProgram } from './program.ts';
import type { ProgressMode } from './progress.ts';
import type { LrScheduleName } from './schedule.ts';
import { join } from 'node:path';
import { defaultLossScale, type LossScaleSetting, type LossScalerOptions } from './loss-scale.ts';

export interface FinetuneOptions extends DataFlags {
  /** A model file, or a preset (mnist, fashion-mnist, brown, email, spam). */
  readonly model: string;
  readonly config?: string;
  readonly batch?: number;
  readonly seq?: number;
  readonly mode?: Mode;
  readonly rank?: number;
  readonly alpha?: number;
  /** PEFT target_modules: names or suffixes. */
  readonly targets?: readonly string[];
  /** A regular expression that must match the whole module name. */
  readonly targetsRegex?: string;
  /** PEFT modules_to_save: modules trained in full beside the adapters (default: the preset's, else the model's heads). */
  readonly modulesToSave?: readonly string[];
  readonly rslora?: boolean;
  readonly optimizer?: 'adamw' | 'sgd';
  readonly weightDecay?: number;
  readonly momentum?: number;
  readonly gradCorrection?: boolean;
  readonly gradAccum?: number;
  /** --loss-scale (default: dynamic for f16 storage, else none). */
  readonly lossScale?: LossScaleSetting;
  /** The dynamic scaler's initial scale, factors and growth interval (PyTorch's by default). */
  readonly lossScaler?: LossScalerOptions;
  readonly evalBatch?: number;
  readonly steps?: number;
  readonly lr?: number;
  readonly lrSchedule?: LrScheduleName;
  readonly warmup?: number;
  readonly minLrRatio?: number;
  readonly seed?: number;
  readonly evalEvery?: number;
  readonly checkpointEvery?: number;
  readonly resume?: boolean;
  readonly resumeFrom?: string;
  readonly out?: string;
  /** Base weights (a safetensors file or folder); a preset's shipped base by default; null: from the seeded init. */
  readonly base?: string | null;
  readonly initAdapter?: string;
  /** Initialise weights the base lacks from the model's init, instead of failing. */
  readonly initMissing?: boolean;
  readonly merged?: boolean;
  /** Plan the other two modes too, for the report (default true). */
  readonly compare?: boolean;
  /** Presets: evaluate on the test split (default) or on every 10th training row. */
  readonly evalOn?: 'test' | 'validation';
  /**
   * The preset's classical baselines beside the accuracy (src/train/baselines.ts): default on for
   * spam (naive Bayes, about a second), off for fashion-mnist (logistic regression, several seconds).
   */
  readonly baselines?: boolean;
  readonly verify?: boolean;
  /** Storage of frozen weights and activations on the GPU: f32 (default), f16 or bf16. */
  readonly dtype?: string;
  /** GPU bytes the step must fit: backward recomputes forward values until its plan does (remat.ts). */
  readonly budget?: number;
  /** --kernels: auto (default) or portable (no kernel that needs subgroups). */
  readonly kernels?: string;
  readonly progress?: ProgressMode;
  readonly logEvery?: number;
  /** Profile this many steps after the first (TrainOptions.profile), timed by `profileClock`. */
  readonly profile?: number;
  readonly profileClock?: TrainOptions['profileClock'];
  readonly log?: (line: string) => void;
  readonly onStep?: TrainOptions['onStep'];
  /** Write weights and reports (default true with `out`). */
  readonly exportWeights?: boolean;
  readonly reports?: boolean;
  readonly command?: string;
  /** A dataset already opened for this program's inputs (the experiment reuses one across runs). */
  readonly dataset?: Dataset;
  readonly readFrozen?: boolean;
  /** Evaluate before training (default true). */
  readonly evalBefore?: boolean;
}

export interface FinetuneResult extends TrainResult {
  readonly program: TrainingProgram;
  readonly model: LoadedModel;
  readonly preset?: Preset;
  /** The plans of the three modes (with `compare`). */
  readonly plans?: ReadonlyMap<Mode, MemorySummary>;
  /** The preset's classical baselines, when computed. */
  readonly baselines?: readonly BaselineResult[];
}

/** Settings a run takes from its preset, or the general defaults. */
export interface ResolvedSetup {
  readonly model: LoadedModel;
  readonly preset?: Preset;
  readonly config: string;
  readonly mode: Mode;
  readonly lora?: LoraOptions;
  readonly optimizer: OptimizerOptions;
  readonly lossScale: LossScaleSetting;
  readonly overrides: Record<string, number>;
  readonly evalBatch?: number;
  readonly steps: number;
  readonly lr: number;
  readonly warmupCap?: number;
  readonly evalEvery: number;
  readonly base?: string;
  readonly baseLabel?: string;
  readonly baseFix?: string;
  readonly data?: string;
  /** Storage of frozen weights and activations (--dtype). */
  readonly dtype: StorageDType;
  readonly kernels: KernelChoice;
}

function checkPositiveInt(flag: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isInteger(v) && v >= 1)) throw new LorafaError(flag, `must be a positive integer, got ${v}`, `e.g. ${flag} 8`);
}

export async function resolveSetup(o: FinetuneOptions): Promise<ResolvedSetup> {
  const mode = o.mode ?? 'lora-fa';
  if (!isMode(mode)) throw new LorafaError('--mode', `unknown mode "${mode as string}"`, `use one of: ${MODES.join(', ')}`);
  if (o.gradCorrection && mode !== 'lora-fa') throw new LorafaError('--grad-correction', `the gradient correction is for LoRA-FA (A frozen); mode is ${mode}`, 'use --mode lora-fa, or drop --grad-correction');
  if (o.initAdapter && mode === 'full') throw new LorafaError('--init-adapter', 'full fine-tuning has no adapters to start from', 'use --mode lora or lora-fa');
  for (const [flag, v] of [['--batch', o.batch], ['--seq', o.seq], ['--rank', o.rank], ['--eval-batch', o.evalBatch], ['--grad-accum', o.gradAccum], ['--steps', o.steps]] as const) checkPositiveInt(flag, v);
  const preset = isPreset(o.model) && !existsSync(resolve(o.model)) ? PRESETS[o.model] : undefined;
  if (!preset && !existsSync(resolve(o.model)) && !/\.m?tsx?$/.test(o.model)) {
    throw new LorafaError(o.model, 'no model file, checkpoint folder or preset of that name', `pass a model file (.ts), a Hugging Face checkpoint folder, or one of the presets: ${PRESET_NAMES.join(', ')}`);
  }
  const choice = preset ? { model: await loadModel(presetModelFile(preset)), config: o.config ?? preset.config, base: o.base } : await chooseModel(o.model, { config: o.config, base: o.base });
  const model = choice.model;
  const d = preset?.defaults;
  const config = choice.config ?? model.def.defaultConfig;
  const overrides: Record<string, number> = {};
  if (o.batch !== undefined) overrides.batch = o.batch;
  if (o.seq !== undefined) overrides.seq = o.seq;
  const rank = o.rank ?? d?.rank ?? 8;
  const lora: LoraOptions | undefined =
    mode === 'full'
      ? undefined
      : {
          rank,
          alpha: o.alpha ?? d?.alpha ?? 2 * rank,
          targets: o.targetsRegex !== undefined ? compileRegex(o.targetsRegex) : (o.targets ?? d?.targets ?? model.def.defaultTargets ?? []),
          rslora: o.rslora,
          modulesToSave: o.modulesToSave ?? d?.modulesToSave ?? model.def.modulesToSave,
        };
  if (lora && o.modulesToSave) checkModulesToSave(trace(model, config, overrides), o.modulesToSave, '--modules-to-save');
  const kind = o.optimizer ?? d?.optimizer.kind ?? 'adamw';
  if (kind !== 'adamw' && kind !== 'sgd') throw new LorafaError('--optimizer', `unknown optimizer "${kind as string}"`, 'use one of: adamw, sgd');
  const optimizer: OptimizerOptions =
    kind === 'sgd'
      ? { kind: 'sgd', momentum: o.momentum, weightDecay: o.weightDecay }
      : { kind: 'adamw', weightDecay: o.weightDecay ?? (d?.optimizer.kind === 'adamw' ? d.optimizer.weightDecay : undefined) };
  if (o.momentum !== undefined && kind !== 'sgd') throw new LorafaError('--momentum', 'momentum is an SGD setting', 'use --optimizer sgd, or drop --momentum');
  let base: string | undefined;
  let baseLabel: string | undefined;
  let baseFix: string | undefined;
  if (choice.base === null) base = undefined;
  else if (choice.base !== undefined) base = choice.base;
  else if (preset?.base) {
    base = join(PRETRAINED_DIR, preset.base);
    baseLabel = `models/pretrained/${preset.base}/model.safetensors`;
    baseFix = 'restore the shipped base models with `git checkout models/pretrained` (or reinstall lorafa), or rebuild them with `npm run pretrain`';
  }
  if (o.base && preset) {
    baseFix = `pass --base a folder (or file) whose model.safetensors holds ${model.def.name}'s weights (e.g. written by \`npm run pretrain -- --out DIR\` or \`lorafa finetune --mode full\`), or drop --base to start from the shipped base model`;
  }
  return {
    model,
    preset,
    config,
    mode,
    lora,
    optimizer,
    // The storage dtype, where the options carry one, picks the default (f16 → dynamic).
    lossScale: o.lossScale ?? defaultLossScale(o.dtype),
    overrides,
    evalBatch: o.evalBatch ?? d?.evalBatch,
    steps: o.steps ?? d?.steps ?? 100,
    lr: o.lr ?? d?.lr[mode] ?? 1e-3,
    warmupCap: d?.warmup,
    evalEvery: o.evalEvery ?? d?.evalEvery ?? 0,
    base,
    baseLabel,
    baseFix,
    data: o.data ?? preset?.data,
    dtype: checkDtype(o.dtype),
    kernels: checkKernels(o.kernels),
  };
}

/** --kernels: auto by default. */
export function checkKernels(k: string | undefined): KernelChoice {
  if (k === undefined) return 'auto';
  if (!(KERNEL_CHOICES as readonly string[]).includes(k)) throw new LorafaError('--kernels', `unknown kernel choice "${k}"`, `use one of: ${KERNEL_CHOICES.join(', ')}`);
  return k as KernelChoice;
}

/** --dtype: f32 by default. */
export function checkDtype(d: string | undefined): StorageDType {
  if (d === undefined) return 'f32';
  if (!(STORAGE_DTYPES as readonly string[]).includes(d)) throw new LorafaError('--dtype', `unknown storage dtype "${d}"`, `use one of: ${STORAGE_DTYPES.join(', ')}`);
  return d as StorageDType;
}

/** How a plan's storage reads in a log line. */
export function storageLine(d: StorageDType): string {
  return d === 'f32' ? 'f32' : `${d} storage (trainable state f32)`;
}

/** `--targets-regex`: a pattern, checked here so that a bad one names the flag. */
export function compileRegex(source: string): RegExp {
  try {
    return new RegExp(source);
  } catch (e) {
    throw new LorafaError('--targets-regex', `not a valid regular expression: ${(e as Error).message}`, 'e.g. --targets-regex "layers\\.\\d+\\.self_attn\\.(q|v)_proj"');
  }
}

/** Plans of the step in all three modes for this device (the memory comparison). */
export function comparePlans(s: ResolvedSetup, gpu: Gpu, rank: number, alpha: number): Map<Mode, { compiled: ReturnType<typeof planStep>['compiled']; memory: ReturnType<typeof planStep>['memory'] }> {
  const graph = trace(s.model, s.config, s.overrides);
  const plans = new Map<Mode, ReturnType<typeof planStep>>();
  for (const mode of MODES) {
    const lora = mode === 'full' ? undefined : { ...(s.lora ?? { targets: s.model.def.defaultTargets ?? [], modulesToSave: s.model.def.modulesToSave }), rank, alpha };
    try {
      plans.set(mode, planStep(graph, { mode, lora, optimizer: s.optimizer, dtype: s.dtype, lossScaling: s.lossScale !== 'none' }, gpuLimits(gpu)));
    } catch (e) {
      // Another mode the model cannot train in (LoRA without linear layers): left out of the
      // comparison. The run's own mode must plan.
      if (mode === s.mode || !(e instanceof LorafaError)) throw e;
    }
  }
  return plans;
}

export async function finetune(o: FinetuneOptions): Promise<FinetuneResult> {
  const log = o.log ?? ((line: string) => void process.stdout.write(line + '\n'));
  const s = await resolveSetup(o);
  const gpu = await acquireGpu();
  const seed = o.seed ?? 0;
  const limits = { ...gpuLimits(gpu), preset: 'adapter' };
  const accumulate = (o.gradAccum ?? 1) > 1;
  let compared: ReturnType<typeof comparePlans> | undefined;
  if (o.compare !== false && !accumulate) {
    const rank = s.lora?.rank ?? o.rank ?? s.preset?.defaults.rank ?? 8;
    const alpha = s.lora?.alpha ?? o.alpha ?? s.preset?.defaults.alpha ?? 2 * rank;
    compared = comparePlans(s, gpu, rank, alpha);
  }
  // The comparison planned this very step (same model, LoRA settings, optimizer) unless the
  // gradient correction changes it.
  const planned = compared && !o.gradCorrection && o.budget === undefined ? compared.get(s.mode) : undefined;
  const program = compileProgram(s.model, {
    config: s.config,
    overrides: s.overrides,
    mode: s.mode,
    lora: s.lora,
    optimizer: s.optimizer,
    gradCorrection: o.gradCorrection,
    accumulate,
    lossScale: s.lossScale,
    evalBatch: s.evalBatch,
    seed,
    command: o.command ?? '',
    verify: o.verify,
    limits,
    ...kernelOptionsFor(gpu, s.kernels),
    dtype: s.dtype,
    budget: o.budget,
    planned,
  });
  const plans = compared ? new Map([...compared].map(([m, p]) => [m, memorySummary(p.memory, limits)])) : undefined;
  log(s.preset ? `${s.preset.name}: ${s.preset.description}` : `${s.model.displayFile} (${s.model.def.name}), config ${s.config}`);
  if (plans) {
    log(`memory plan of one training step (${s.preset?.model ?? s.model.displayFile} config ${s.config}, ${s.optimizer.kind === 'adamw' ? 'AdamW' : 'SGD'}, ${storageLine(s.dtype)}, this device's limits)`);
    for (const l of compareLines(plans)) log('  ' + l);
  }
  log(`training: ${s.mode}${o.gradCorrection ? ' + gradient correction' : ''}${s.dtype !== 'f32' ? `, ${storageLine(s.dtype)}` : ''}`);
  // A pretraining preset reads text with the tokenizer shipped beside what it produces (the one
  // `npm run pretrain` learnt for it), unless --tokenizer says otherwise.
  const shipped = s.preset?.produces && s.data === s.preset.data ? join(PRETRAINED_DIR, s.preset.produces, 'tokenizer.json') : undefined;
  const tokenizer = o.tokenizer ?? (shipped && existsSync(shipped) ? shipped : undefined);
  const data = o.dataset ?? (await openTrainingData(program, { ...o, data: s.data, tokenizer }, { seed, base: s.base, evalOn: o.evalOn }));
  // Only where the loop reads the preset's own rows and input: other data, another tokenizer or a
  // held-out slice of its own would make the comparison unfair.
  const preset = s.preset && s.data === s.preset.data && !o.dataset && !o.evalData && o.evalSplit === undefined && !o.tokenizer && BASELINE_PRESETS.includes(s.preset.data) ? s.preset.data : undefined;
  let baselines: BaselineResult[] | undefined;
  if (preset && (o.baselines ?? preset === 'spam')) {
    baselines = await presetBaselines(preset, { evalOn: o.evalOn, seed });
    for (const b of baselines) log(`baseline: ${b.name}: ${(100 * b.accuracy).toFixed(2)}% on ${b.evalRows} ${o.evalOn === 'validation' ? 'validation' : 'test'} rows (fitted on ${b.trainRows} training rows in ${(b.ms / 1000).toFixed(1)} s)`);
  }
  try {
    const r = await runTraining(program, {
      steps: s.steps,
      lr: s.lr,
      schedule: o.lrSchedule,
      warmup: o.warmup,
      warmupCap: s.warmupCap,
      minLrRatio: o.minLrRatio,
      gradAccum: o.gradAccum,
      lossScaler: o.lossScaler,
      seed,
      data,
      evalEvery: s.evalEvery,
      evalBefore: o.evalBefore,
      checkpointEvery: o.checkpointEvery,
      resume: o.resume,
      resumeFrom: o.resumeFrom,
      out: o.out,
      base: s.base,
      baseLabel: s.baseLabel,
      baseFix: s.baseFix,
      initAdapter: o.initAdapter,
      initMissing: o.initMissing,
      export: {
        weights: o.exportWeights,
        merged: o.merged,
        reports: o.reports,
        baseModel: s.preset?.base ? `models/pretrained/${s.preset.base}` : undefined,
        metadata: s.preset ? { 'lorafa.task': s.preset.name } : undefined,
      },
      compare: plans,
      baselines,
      command: o.command,
      title: s.preset ? `${s.preset.name}: ${s.mode}${o.gradCorrection ? ' + gradient correction' : ''}` : undefined,
      progress: o.progress,
      logEvery: o.logEvery,
      profile: o.profile,
      profileClock: o.profileClock,
      log,
      onStep: o.onStep,
      readFrozen: o.readFrozen,
      gpu,
    });
    if (baselines && r.after?.accuracy !== undefined) {
      log(`${s.mode} ${(100 * r.after.accuracy).toFixed(2)}% beside the classical baselines: ${baselines.map((b) => `${b.name} ${(100 * b.accuracy).toFixed(2)}%`).join(', ')}`);
    }
    return { ...r, program, model: s.model, preset: s.preset, plans, baselines };
  } finally {
    if (!o.dataset) data.close();
  }
}
