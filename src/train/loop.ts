// The training loop: the one every entry point runs (`lorafa finetune`, a generated trainer through
// `lorafa train` or `npx tsx trainer.ts`, `npm start`, `npm run pretrain`, the experiment, and
// the `train` function of the API).
//
// 1. Start: every parameter from its seeded init, then the base weights (--base), then a PEFT
//    adapter (--init-adapter); derived buffers ((AᵀA)⁻¹) from the values actually used; uploaded
//    as f32 into buffers exactly as planned. With --resume, a checkpoint that passes every check
//    (integrity, the same program, data, base and schedule) then overrides the trainable
//    parameters, the optimizer state and the adapters.
// 2. Evaluate the starting point (loss, and accuracy or perplexity) when there is evaluation data.
// 3. Optimizer step t = start+1 … steps: the effective batch of t (batch × grad-accum rows, a
//    function of (seed, t) only) in K micro-batches; each runs forward and backward into the
//    gradient accumulators, the last one also the update, at lrAt(schedule, t) with t's bias
//    corrections. A non-finite loss stops the run. Under loss scaling (loss-scale.ts) the step
//    skips its own update on the GPU when its gradients overflowed; the scaler then backs off,
//    and the optimizer's step count (bias corrections) is t minus the steps skipped so far,
//    while the lr schedule and the data go on with t (as PyTorch's scheduler does). Every --eval-every steps: evaluate; every
//    --checkpoint-every steps and at the end: a checkpoint (atomic; the newest two are kept).
//    With --profile N, steps start+2 … start+N+1 run through a StepProfiler (runtime/profile.ts):
//    training steps like the others, bit for bit, with every kernel timed; the profile is printed
//    after the run, against the wall time of the steps that ran unprofiled, and reported.
// 4. Evaluate the result; write the outputs: the weights (a PEFT adapter with A and B, or
//    model.safetensors for full fine-tuning; merged.safetensors with --merged), report.md and
//    report.json, loss.svg (training loss and evaluations), memory.svg.
// GPU bytes are measured, not assumed: the device's createBuffer/destroy are counted (BufferMeter).
import type { BaselineResult } from './baselines.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { rmSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileFingerprint, type Dataset, type Feeds } from '../data/dataset.ts';
import { LorafaError } from '../ir/errors.ts';
import { fmtBytes } from '../ir/format.ts';
import { numel, type Param } from '../ir/types.ts';
import { importPeftAdapter } from '../io/peft.ts';
import { openWeights } from '../io/checkpoint-dir.ts';
import { checkOutputPath, checkWritable, cleanStale, replaceDir } from '../io/output.ts';
import { listSome, loadStateDict } from '../io/weights.ts';
import type { Mode } from '../passes/compile.ts';
import { accumFeeds, optimizerFeeds, type OptimizerOptions } from '../passes/optimizer.ts';
import { StepRunner } from '../runtime/executor.ts';
import { acquireGpu, type Gpu } from '../runtime/gpu.ts';
import { median, profileTable, StepProfiler, type ProfileClock, type StepProfile } from '../runtime/profile.ts';
import { initParam, resolveDerived } from '../runtime/init.ts';
import { listCheckpoints, readCheckpoint, removeStaleTemps, writeCheckpoint, type Checkpoint, type CheckpointTensor } from './checkpoint.ts';
import { OUTPUT_NAMES, writeOutputs } from './outputs.ts';
import { keyForLayout, layoutGraph, type MemorySummary, type TrainingProgram } from './program.ts';
import { progress, type ProgressMode } from './progress.ts';
import { checkSchedule, defaultWarmup, describeSchedule, lrAt, type LrSchedule, type LrScheduleName } from './schedule.ts';
import { evaluate, fmtMetrics, type Metrics } from './metrics.ts';
import { applyTuning, type LoadedTuning } from './tuning.ts';
import { describeLossScale, LossScaler, type LossScaleSetting, type LossScalerOptions, type LossScalerState } from './loss-scale.ts';

export interface ExportOptions {
  /** Write the weights (adapter or model.safetensors); default true when there is an out dir. */
  readonly weights?: boolean;
  /** Also merged.safetensors (adapters folded into the base weights). */
  readonly merged?: boolean;
  /** adapter_config.json's task_type (default: from the data: SEQ_CLS for text classification, CAUSAL_LM for language modelling). */
  readonly taskType?: string | null;
  /** adapter_config.json's base_model_name_or_path (default: --base as given). */
  readonly baseModel?: string | null;
  /** Extra safetensors metadata on every weights file. */
  readonly metadata?: Readonly<Record<string, string>>;
  /** report.md/report.json, loss.svg, memory.svg (default true when there is an out dir). */
  readonly reports?: boolean;
}

export interface TrainOptions {
  /** Train until this optimizer step (a resumed run keeps its numbering). */
  readonly steps: number;
  /** Peak learning rate. */
  readonly lr: number;
  readonly schedule?: LrScheduleName;
  /** Warm-up steps (default: a tenth of the run, at most `warmupCap`). */
  readonly warmup?: number;
  readonly warmupCap?: number;
  readonly minLrRatio?: number;
  /** K micro-batches per optimizer step (default 1); K > 1 needs a program compiled with accumulators. */
  readonly gradAccum?: number;
  /**
   * --loss-scale: dynamic, or a static scale, for a program compiled with loss scaling; none for
   * one without. Default: the program's (spec.lossScale, else none).
   */
  readonly lossScale?: LossScaleSetting;
  /** The dynamic scaler's initial scale, factors and growth interval (PyTorch's by default). */
  readonly lossScaler?: LossScalerOptions;
  /** Default: the program's seed. */
  readonly seed?: number;
  readonly data: Dataset;
  /** Evaluate every N steps (0: before and after only). */
  readonly evalEvery?: number;
  /** Evaluate before training (default true). */
  readonly evalBefore?: boolean;
  readonly checkpointEvery?: number;
  /** Continue from the newest checkpoint in <out>/checkpoints (from scratch if there is none). */
  readonly resume?: boolean;
  readonly resumeFrom?: string;
  /** Where checkpoints, weights and reports go; nothing is written without it. */
  readonly out?: string;
  /** Base weights: a safetensors file or a folder holding model.safetensors. */
  readonly base?: string;
  /** What to call the base in messages (a preset's shipped model, say). */
  readonly baseLabel?: string;
  /** Fix line when the base does not fit. */
  readonly baseFix?: string;
  /** Start the adapters from a PEFT adapter folder. */
  readonly initAdapter?: string;
  /** Initialise weights the base checkpoint lacks from the model's init, instead of failing. */
  readonly initMissing?: boolean;
  readonly export?: ExportOptions;
  /** Plans of the other modes (finetune's comparison), for the report and memory.svg. */
  readonly compare?: ReadonlyMap<Mode, MemorySummary>;
  /** The command line, for reports and metadata. */
  readonly command?: string;
  /** Title of the reports (default: the model and mode). */
  readonly title?: string;
  /** Classical baselines on the same split and input (src/train/baselines.ts), shown beside the accuracy in the reports. */
  readonly baselines?: readonly BaselineResult[];
  readonly progress?: ProgressMode;
  readonly logEvery?: number;
  readonly log?: (line: string) => void;
  readonly onStep?: (step: number, steps: number, loss: number, ms: number) => void;
  /** Also return the frozen parameters' final values (tests). */
  readonly readFrozen?: boolean;
  readonly gpu?: Gpu;
  /**
   * --profile: run this many optimizer steps, the ones after the run's first (which compiles the
   * pipelines), in profiled mode (runtime/profile.ts): they train as any other step, bit for bit,
   * and their kernels are timed. The profile is printed at the end, returned and reported.
   */
  readonly profile?: number;
  /** How the profile times kernels (default 'auto': timestamp queries where the device has them). */
  readonly profileClock?: ProfileClock | 'auto';
  /**
   * A trainer folder's tuning.json (tuning.ts): this adapter's tuned matmul kernels replace the
   * heuristic's; an entry for another adapter is ignored, and the run says so.
   */
  readonly tuning?: LoadedTuning;
}

export interface TrainResult {
  readonly startStep: number;
  readonly endStep: number;
  readonly lr: number;
  readonly schedule: LrSchedule;
  readonly gradAccum: number;
  /** Loss scaling: the setting, the scaler's final state, and the steps skipped by this run. */
  readonly lossScale?: { readonly setting: 'dynamic' | number; readonly state: LossScalerState; readonly skippedSteps: readonly number[] };
  readonly seed: number;
  readonly data: string;
  readonly classes?: readonly string[];
  readonly losses: readonly { readonly step: number; readonly loss: number }[];
  readonly evals: readonly { readonly step: number; readonly metrics: Metrics }[];
  readonly before?: Metrics;
  readonly after?: Metrics;
  /** Final values read back from the GPU: trainable parameters, optimizer state and adapters (all with readFrozen). */
  readonly params: ReadonlyMap<string, Float32Array>;
  /** Final values of the forward graph's parameters (base, adapters, heads). */
  readonly forwardValues: ReadonlyMap<string, Float32Array>;
  /** Initial values uploaded (f32). */
  readonly initial: ReadonlyMap<string, Float32Array>;
  readonly allocatedBytes: number;
  /** Peak GPU bytes created while the training step ran (BufferMeter), readbacks included. */
  readonly measuredBytes: number;
  readonly checkpoints: readonly string[];
  readonly resumedFrom?: string;
  /** Mean optimizer-step time, the first step of the process (shader compilation) left out. */
  readonly msPerStep: number;
  readonly firstStepMs: number;
  readonly trainable: number;
  readonly device: string;
  /** Files written under `out`. */
  readonly files: readonly string[];
  /** With `profile`: where a step's time went, kernel by kernel. */
  readonly profile?: StepProfile;
}

export function rel(p: string): string {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}

export function checkpointDir(outDir: string): string {
  return join(outDir, 'checkpoints');
}

/** The tensors a checkpoint holds: what training changes, and the adapters (A too: exact resume, export). */
export function checkpointed(p: TrainingProgram) {
  return p.step.params.filter((q) => q.trainable || q.role === 'optimizer_state' || q.role === 'lora_A' || q.role === 'lora_B');
}

/**
 * About how many bytes a run adds to its --out folder: the checkpoints (the two kept and the one
 * being written) and the outputs (the weights it exports, reports).
 */
export function outputBytes(p: TrainingProgram, o: Pick<TrainOptions, 'export'>): number {
  const ckpt = checkpointed(p).reduce((s, q) => s + 4 * numel(q.shape), 0);
  const weights = p.weights.params.reduce((s, q) => s + 4 * numel(q.value.type.shape), 0);
  const adapters = p.weights.params.filter((q) => q.role === 'lora_A' || q.role === 'lora_B' || q.trainable).reduce((s, q) => s + 4 * numel(q.value.type.shape), 0);
  const exported = o.export?.weights === false ? 0 : p.spec.mode === 'full' ? weights : adapters + (o.export?.merged ? weights : 0);
  return 3 * ckpt + exported + (1 << 20);
}

/** A Param record for a plan parameter (initParam takes the IR's). */
function paramOf(name: string, shape: readonly number[], dtype: string, init: TrainingProgram['inits'][string], src?: Param['src']): Param {
  return { value: { id: 0, name, type: { dtype: dtype as never, shape } }, init, trainable: false, role: 'weight', ...(src ? { src } : {}) };
}

/** Seeded initial values of every parameter of the step and the evaluation plan (float64). */
export function seededValues(p: TrainingProgram, seed: number): Map<string, Float64Array> {
  const out = new Map<string, Float64Array>();
  const files = new Map();
  // Where each parameter was declared (the model file's line), for errors in its init.
  const declared = new Map(p.weights.params.map((w) => [w.value.name, w.src]));
  for (const q of [...p.step.params, ...p.eval.params]) {
    if (out.has(q.name)) continue;
    const init = p.inits[q.name];
    if (!init) throw new LorafaError(q.name, 'the program has no init for this parameter', 'recompile the trainer');
    // The init is of the f32 value; half storage rounds it when it is written to the GPU.
    out.set(q.name, initParam(paramOf(q.name, q.shape, q.dtype === 'i32' ? 'i32' : 'f32', init, declared.get(q.name)), { seed }, files).data);
  }
  return out;
}

/** What the run's metadata records so that --resume refuses a different run. */
function runMeta(p: TrainingProgram, s: LrSchedule, o: { seed: number; gradAccum: number; data: Dataset; baseFp: string; adapterFp: string; lossScale?: string }): Record<string, string> {
  const spec = p.spec;
  return {
    // Only under loss scaling, so that runs without it keep their checkpoints' metadata.
    ...(o.lossScale ? { loss_scale: o.lossScale } : {}),
    model: spec.model,
    config: spec.config,
    sizes: JSON.stringify(spec.sizes),
    mode: spec.mode,
    lora: JSON.stringify(spec.lora ?? null),
    optimizer: JSON.stringify(spec.optimizer),
    plan_hash: spec.planHash,
    lr: String(s.lr),
    schedule: JSON.stringify({ kind: s.kind, warmup: s.warmup, minRatio: s.minRatio, steps: s.kind === 'constant' ? null : s.steps }),
    seed: String(o.seed),
    grad_accum: String(o.gradAccum),
    data: o.data.fingerprint,
    classes: JSON.stringify(o.data.classes ?? []),
    base: o.baseFp,
    init_adapter: o.adapterFp,
  };
}

const META_NAMES: Record<string, string> = {
  lr: '--lr',
  schedule: 'learning-rate schedule (--lr-schedule, --warmup, --min-lr-ratio, and --steps for a decaying schedule)',
  seed: '--seed',
  grad_accum: '--grad-accum',
  loss_scale: '--loss-scale (and the scaler\'s options)',
  data: 'data (--data, --eval-data, fields)',
  classes: 'class names in the data',
  base: '--base',
  init_adapter: '--init-adapter',
};

/** Why checkpoint `c` cannot continue this run, or undefined when it can. */
export function incompatibility(p: TrainingProgram, c: Checkpoint, want: Record<string, string>): { problem: string; fix: string } | undefined {
  const program = ['model', 'config', 'sizes', 'mode', 'lora', 'optimizer', 'plan_hash'];
  const diffs = program.filter((k) => c.meta[k] !== want[k]).map((k) => `${k} ${c.meta[k] ?? '(missing)'} ≠ ${want[k]} (this trainer)`);
  if (diffs.length) {
    return {
      problem: `was written by a different program: ${diffs.join('; ')}`,
      fix: `resume it with the trainer compiled for ${c.meta.model ?? 'its model'} (${c.meta.mode ?? '?'}), or move the checkpoints away and start from scratch (drop --resume)`,
    };
  }
  for (const q of checkpointed(p)) {
    const got = c.tensors.get(q.name);
    if (!got) return { problem: `has no tensor "${q.name}"`, fix: 'resume from a checkpoint this program wrote' };
    if (got.shape.join(',') !== q.shape.join(',')) return { problem: `holds "${q.name}" as [${got.shape.join(',')}], this program's is [${q.shape.join(',')}]`, fix: 'resume from a checkpoint this program wrote' };
  }
  const names = new Set(checkpointed(p).map((q) => q.name));
  const extra = [...c.tensors.keys()].filter((k) => !names.has(k));
  if (extra.length) return { problem: `holds tensors this program does not have: ${extra.slice(0, 5).join(', ')}`, fix: 'resume from a checkpoint this program wrote' };
  for (const k of Object.keys(META_NAMES)) {
    if (c.meta[k] !== want[k]) {
      let fix = `resume with the run's own settings (${k === 'lr' ? `--lr ${c.meta.lr}` : k === 'seed' ? `--seed ${c.meta.seed}` : 'as it was started'}), or start a new run in another --out`;
      if (k === 'schedule') {
        const [was, now] = [JSON.parse(c.meta[k] ?? '{}'), JSON.parse(want[k])] as Record<string, unknown>[];
        if (was.steps !== now.steps && JSON.stringify({ ...was, steps: 0 }) === JSON.stringify({ ...now, steps: 0 })) {
          fix = `resume with --steps ${was.steps} (a decaying schedule is planned over the run's --steps); to train on past it, start a new run from its weights (--init-adapter <out>/adapter), or use --lr-schedule constant for runs you extend`;
        }
      }
      return { problem: `was trained with a different ${META_NAMES[k]}: ${c.meta[k] ?? '(missing)'} there, ${want[k]} now`, fix };
    }
  }
  return undefined;
}

function loadCompatible(p: TrainingProgram, file: string, want: Record<string, string>): Checkpoint {
  const c = readCheckpoint(file);
  const why = incompatibility(p, c, want);
  if (why) throw new LorafaError(rel(file), `cannot resume: this checkpoint ${why.problem}`, why.fix);
  return c;
}

/** The newest checkpoint, which must be usable; a damaged newest one is refused, naming the newest usable. */
function findResume(p: TrainingProgram, dir: string, want: Record<string, string>): Checkpoint | undefined {
  const all = listCheckpoints(dir);
  if (!all.length) return undefined;
  try {
    return loadCompatible(p, all[0].file, want);
  } catch (e) {
    if (!(e instanceof LorafaError)) throw e;
    const previous = all.slice(1).find((c) => {
      try {
        loadCompatible(p, c.file, want);
        return true;
      } catch {
        return false;
      }
    });
    const fix = previous
      ? `continue from the previous checkpoint (step ${previous.step}): --resume-from ${rel(previous.file)}${e.fix ? `; or ${e.fix}` : `; or delete ${rel(all[0].file)}`}`
      : (e.fix ?? `delete ${rel(all[0].file)} and train from scratch (no usable checkpoint is left)`);
    throw new LorafaError(rel(all[0].file), `newest checkpoint: ${e.problem}`, fix);
  }
}

/** Rows [r0, r1) of every feed of an effective batch of `rows` rows. */
function sliceRows(feeds: Feeds, rows: number, r0: number, r1: number): Feeds {
  const out: Feeds = {};
  for (const [k, v] of Object.entries(feeds)) {
    const per = v.length / rows;
    out[k] = v.subarray(r0 * per, r1 * per) as Int32Array | Float32Array;
  }
  return out;
}

export async function runTraining(program: TrainingProgram, o: TrainOptions): Promise<TrainResult> {
  let p = program;
  const log = o.log ?? ((s: string) => void process.stdout.write(s + '\n'));
  const spec = p.spec;
  const data = o.data;
  if (!(Number.isInteger(o.steps) && o.steps >= 1)) throw new LorafaError('--steps', `must be a positive integer, got ${o.steps}`, 'e.g. --steps 100');
  const K = o.gradAccum ?? 1;
  if (!(Number.isInteger(K) && K >= 1)) throw new LorafaError('--grad-accum', `must be a positive integer, got ${K}`, 'e.g. --grad-accum 4');
  if (o.profile !== undefined && !(Number.isInteger(o.profile) && o.profile >= 0)) throw new LorafaError('--profile', `must be a whole number of steps, got ${o.profile}`, 'e.g. --profile 3');
  if (K > 1 && !spec.accumulate) {
    throw new LorafaError('--grad-accum', `this program was compiled without gradient accumulators, so it cannot run ${K} micro-batches per step`, `recompile it with --grad-accum ${K} (lorafa compile … --grad-accum ${K} -o DIR), or drop --grad-accum`);
  }
  const seed = o.seed ?? spec.seed;
  const schedule = checkSchedule({
    kind: o.schedule ?? 'cosine',
    lr: o.lr,
    warmup: o.warmup ?? defaultWarmup(o.steps, o.warmupCap),
    steps: o.steps,
    minRatio: o.minLrRatio ?? 0.1,
  });
  const optimizer: OptimizerOptions = spec.optimizer;
  const lossScale = o.lossScale ?? spec.lossScale ?? 'none';
  if ((lossScale === 'none') !== (spec.lossScale === undefined)) {
    throw new LorafaError(
      '--loss-scale',
      spec.lossScale === undefined
        ? `this program was compiled without loss scaling, so it cannot run with ${describeLossScale(lossScale)}`
        : 'this program was compiled with loss scaling: its step takes a scale every step',
      spec.lossScale === undefined ? `recompile it with --loss-scale ${lossScale}, or drop --loss-scale` : 'pass --loss-scale dynamic or a fixed scale (e.g. 1), or recompile with --loss-scale none',
    );
  }
  const scaler = lossScale === 'none' ? undefined : new LossScaler(lossScale, o.lossScaler);
  const skippedSteps: number[] = [];
  const gpu = o.gpu ?? (await acquireGpu());
  if (o.tuning) {
    const tuned = applyTuning(p, o.tuning, gpu);
    p = tuned.program;
    log(tuned.note);
  }
  const out = o.out ? resolve(o.out) : undefined;
  if (out) checkOutputPath(out, 'folder', '--out');

  // 1. Starting values.
  const values = seededValues(p, seed);
  const layout = layoutGraph(p.weights);
  const keyFor = keyForLayout(p.weights);
  let baseFp = 'none';
  if (o.base) {
    const src = openWeights(resolve(o.base), o.baseFix ?? 'pass --base a safetensors file, or a folder holding model.safetensors (or model.safetensors.index.json and its shards)');
    const isHead = (name: string) => spec.modulesToSave.some((m) => name === m || name.startsWith(m + '.'));
    let fresh: readonly string[] = [];
    let unused: readonly string[] = [];
    let loaded: Map<string, Float32Array>;
    try {
      loaded = loadStateDict(src, layout, {
        keyFor,
        strict: false,
        mayBeMissing: (name) => !!o.initMissing || isHead(name),
        missingFix: `load the checkpoint ${spec.model} was saved from, or pass --init-missing to initialise what it lacks from the model's own init (a new head${spec.modulesToSave.length ? `, ${spec.modulesToSave.join(', ')},` : ''} is initialised without it)`,
        onKeys: (k) => ([fresh, unused] = [k.missing, k.unexpected]),
      });
    } catch (e) {
      if (e instanceof LorafaError && o.baseFix && !/lacks \d+ weight/.test(e.problem)) throw new LorafaError(e.where, e.problem, o.baseFix);
      throw e;
    } finally {
      src.close();
    }
    for (const [k, v] of loaded) values.set(k, Float64Array.from(v));
    log(`base: ${loaded.size} tensors from ${o.baseLabel ?? src.where}` + (fresh.length ? `; new (initialised here): ${fresh.join(', ')}` : '') + (unused.length ? `; not used by this model: ${listSome(unused, 6)}` : ''));
    baseFp = src.files.map((f) => fileFingerprint(f)).join('+');
  }
  let adapterFp = 'none';
  if (o.initAdapter) {
    if (spec.mode === 'full') throw new LorafaError('--init-adapter', 'full fine-tuning has no adapters to start from', 'use --mode lora or lora-fa');
    const a = importPeftAdapter(o.initAdapter, layout, { keyFor });
    for (const [k, v] of a.values) values.set(k, Float64Array.from(v));
    log(`adapter: ${a.values.size} tensors from ${rel(resolve(o.initAdapter))}`);
    adapterFp = fileFingerprint(join(o.initAdapter, 'adapter_model.safetensors'));
  }
  const allParams = [...p.step.params, ...p.eval.params];
  resolveDerived(
    allParams.map((q) => ({ name: q.name, shape: q.shape, init: p.inits[q.name] })),
    (n) => values.get(n),
    (n, d) => values.set(n, Float64Array.from(d)),
  );
  const initial = new Map([...values].map(([k, v]) => [k, Float32Array.from(v)]));

  // 2. Resume.
  if (out) {
    // Before the first step (the inputs are loaded and checked by now): the folder (created if missing) and its checkpoints/ take files, the
    // folder beside it takes the temporary copy the outputs are built in, and where the file system
    // says how much is free, there is room for them; what a killed run left is removed (and said).
    for (const line of cleanStale(out)) log(line);
    checkWritable(dirname(out), 0, '--out', out);
    checkWritable(out, outputBytes(p, o), '--out');
    checkWritable(checkpointDir(out), 0, '--out');
  }
  const scalerMeta = scaler && JSON.stringify({ setting: lossScale, growthFactor: scaler.growthFactor, backoffFactor: scaler.backoffFactor, growthInterval: scaler.growthInterval, maxScale: scaler.maxScale });
  const want = runMeta(p, schedule, { seed, gradAccum: K, data, baseFp, adapterFp, lossScale: scalerMeta });
  const dir = out ? checkpointDir(out) : undefined;
  if (dir) removeStaleTemps(dir);
  if ((o.resume || o.resumeFrom) && !dir) throw new LorafaError('--resume', 'resuming needs the folder that holds the checkpoints', 'pass --out, the folder of the run to continue');
  const resumed = o.resumeFrom ? loadCompatible(p, o.resumeFrom, want) : o.resume && dir ? findResume(p, dir, want) : undefined;
  const existing = dir ? listCheckpoints(dir) : [];
  if (!resumed && existing.length) {
    throw new LorafaError(rel(dir!), `holds checkpoints of an earlier run (newest: step ${existing[0].step})`, `continue it with --resume, or delete ${rel(dir!)} (or use another --out) to start over`);
  }
  const start = resumed?.step ?? 0;
  if (start > o.steps) throw new LorafaError(rel(resumed!.file), `this checkpoint is at step ${start}, past --steps ${o.steps}`, `pass --steps greater than ${start}`);
  const current = new Map<string, Float32Array>(initial);
  if (resumed) for (const [k, t] of resumed.tensors) current.set(k, t.data as Float32Array);
  if (resumed && scaler) {
    const state = resumed.meta.loss_scaler;
    if (!state) throw new LorafaError(rel(resumed.file), 'cannot resume: this checkpoint has no loss scaler state', 'resume from a checkpoint this run wrote');
    scaler.restore(JSON.parse(state) as LossScalerState);
  }

  log(`device: ${gpu.description}`);
  log(`data: ${data.description}`);
  for (const n of data.notes) log(`data: ${n}`);
  if (o.resume && !resumed) log(`no checkpoint in ${rel(dir!)}: starting at step 0`);
  if (resumed) log(`resuming from ${rel(resumed.file)} (step ${start})`);

  // 3. The evaluation runner first (its bytes are not the training step's), then the training
  //    runner, measured from here.
  const evalRunner = await StepRunner.create(p.eval, gpu);
  const checkpoints: string[] = [];
  try {
    const evalNames = new Set(p.eval.params.map((q) => q.name));
    const toEval = (vals: ReadonlyMap<string, Float32Array>) => evalRunner.writeParams(new Map([...vals].filter(([k]) => evalNames.has(k)).map(([k, v]) => [k, { data: v }])));
    const classes = p.classes;
    const evals: { step: number; metrics: Metrics }[] = [];
    const runEval = async (t: number, vals: ReadonlyMap<string, Float32Array>) => {
      if (!data.evalCount) return undefined;
      toEval(vals);
      const m = await evaluate(evalRunner, data.evalBatches(spec.evalBatch), data.kind, classes);
      if (m) evals.push({ step: t, metrics: m });
      return m;
    };
    const before = o.evalBefore === false || resumed ? undefined : await runEval(start, current);
    if (before) log(`step ${start} (before training): ${fmtMetrics(before, data.unit)}`);

    // The profiler's buffers are made before the measurement starts: they are not the step's.
    const profiler = o.profile ? new StepProfiler(gpu, p.step, { clock: o.profileClock }) : undefined;
    // The profiled steps: the first `profile` after the run's first step (its pipelines' first use
    // compiles them on some drivers), or the first itself when the run has no other.
    const profileFrom = o.steps - start >= 2 ? start + 2 : start + 1;
    const profileTo = profiler ? Math.min(o.steps, profileFrom + o.profile! - 1) : 0;
    const profiled = (t: number) => !!profiler && t >= profileFrom && t <= profileTo;
    const baseline = gpu.memory.live;
    gpu.memory.resetPeak();
    const runner = await StepRunner.create(p.step, gpu);
    let measured = 0;
    const losses: { step: number; loss: number }[] = [];
    const times: number[] = [];
    let profile: StepProfile | undefined;
    let finalValues: Map<string, Float32Array>;
    const rows = spec.batch * K;
    const perStep = rows * data.unitsPerRow;
    const meta = (step: number) => ({ ...want, data_description: data.description, step: String(step), command: o.command ?? '', ...(scaler ? { loss_scaler: JSON.stringify(scaler.state()) } : {}) });
    try {
      runner.writeParams(new Map([...current].map(([k, v]) => [k, { data: v }])));
      log(`GPU buffers ${fmtBytes(runner.allocatedBytes)} (plan peak ${fmtBytes(p.step.bytes)}${spec.dtype && spec.dtype !== 'f32' ? `, ${spec.dtype} storage: frozen weights and activations; trainable state f32` : ''}${spec.budget ? `, budget ${fmtBytes(spec.budget.bytes)}: ${spec.budget.recomputed ? `backward recomputes ${spec.budget.recomputed} forward values, +${spec.budget.percent}% FLOPs` : 'fits without recomputing'}` : ''}); ${spec.batch} rows × ${K} micro-batch${K > 1 ? 'es' : ''} per step; ${describeSchedule(schedule)}${scaler ? `; ${describeLossScale(lossScale)} (${scaler.describe()})` : ''}`);
      if (start === o.steps) log(`already at step ${start}: nothing to do`);
      const bar = progress({ mode: o.progress ?? 'auto', first: start, total: o.steps, unit: data.unit, perStep, suffix: `GPU ${fmtBytes(runner.allocatedBytes)}`, every: o.logEvery, log });
      const replaced = existing.filter((c) => c.step > start);
      const delay = Number(process.env.LORAFA_STEP_DELAY_MS ?? 0);
      const save = async (step: number): Promise<string> => {
        const vals = await runner.readParams();
        const tensors = new Map<string, CheckpointTensor>(checkpointed(p).map((q) => [q.name, { shape: q.shape, data: vals.get(q.name)! }]));
        try {
          return writeCheckpoint(dir!, step, tensors, meta(step));
        } catch (e) {
          if (!(e instanceof LorafaError)) throw e;
          const last = listCheckpoints(dir!)[0];
          throw new LorafaError(e.where, `${e.problem} (writing the checkpoint of step ${step})`, `${e.fix ?? 'fix the folder'}; then continue with --resume${last ? ` (the newest complete checkpoint is step ${last.step})` : ''}`);
        }
      };
      try {
        for (let t = start + 1; t <= o.steps; t++) {
          const big = await data.batch(t, rows);
          // A skipped step does not count for the optimizer (its bias corrections).
          const opt = optimizerFeeds(optimizer, lrAt(schedule, t), scaler ? scaler.optimizerStep(t) : t);
          const scaling = scaler?.feeds(spec.accumulate) ?? {};
          const t0 = performance.now();
          let loss = 0;
          let overflow = 0;
          for (let j = 0; j < K; j++) {
            const feeds = K === 1 ? big : sliceRows(big, rows, j * spec.batch, (j + 1) * spec.batch);
            const stepFeeds = { ...feeds, ...opt, ...scaling, ...(spec.accumulate ? accumFeeds(j, K, scaler?.scale) : {}) };
            const r = profiled(t) ? await profiler!.runStep(runner, stepFeeds, { update: j === K - 1 }) : await runner.runStep(stepFeeds, { update: j === K - 1 });
            loss += r.loss / K;
            overflow = r.overflow ?? 0;
          }
          if (scaler?.update(overflow)) skippedSteps.push(t);
          const ms = performance.now() - t0;
          times.push(ms);
          if (!Number.isFinite(loss)) {
            // The first step's loss comes from the starting weights alone: no learning rate is
            // involved yet, so blaming it would send the user the wrong way.
            if (t === start + 1) {
              const from = [o.base && `--base ${o.base}`, o.initAdapter && `--init-adapter ${o.initAdapter}`, resumed && rel(resumed.file)].filter(Boolean).join(', ');
              throw new LorafaError(`step ${t}`, `the loss is ${loss} before any update (the starting weights${from ? ` from ${from}` : ''} and the first batch give it): every loaded tensor was finite, so values overflow float32 in the forward pass`, `check the weights' magnitudes (a base trained or converted badly) and the data's scale; a lower --lr does not help here`);
            }
            throw new LorafaError(`step ${t}`, `the loss is ${loss} (it was ${losses[losses.length - 1]?.loss.toFixed(4) ?? '?'} at step ${t - 1}): training diverged`, `train again with a lower --lr (${schedule.lr} now) or more --warmup`);
          }
          losses.push({ step: t, loss });
          bar.step(t, loss, ms, scaler?.describe());
          o.onStep?.(t, o.steps, loss, ms);
          if (t === o.steps) measured = gpu.memory.peak - baseline;
          if (o.evalEvery && t % o.evalEvery === 0 && t !== o.steps) {
            const m = await runEval(t, await runner.readParams());
            if (m) bar.note(`step ${t}: train loss ${loss.toFixed(4)}, eval ${fmtMetrics(m, data.unit)}`);
          }
          if (dir && (t === o.steps || (o.checkpointEvery && t % o.checkpointEvery === 0))) {
            // Checkpoints after the one this run resumed from belong to the timeline it replaces.
            for (const c of replaced.splice(0)) {
              rmSync(c.file, { force: true });
              bar.note(`removed ${rel(c.file)} (after step ${start}: replaced by this run)`);
            }
            const file = await save(t);
            checkpoints.push(file);
            if (t !== o.steps) bar.note(`checkpoint ${rel(file)}`);
          }
          if (delay > 0) await sleep(delay);
        }
      } finally {
        bar.end();
      }
      if (start === o.steps) measured = gpu.memory.peak - baseline;
      finalValues = await runner.readParams();
      if (profiler?.profiledSteps) {
        // The wall time of the steps that ran unprofiled (past the first), which profiling did not slow.
        const plain = times.map((ms, i) => ({ ms, t: start + 1 + i })).filter((x) => x.t > start + 1 && !profiled(x.t));
        profile = profiler.result({
          which: profileFrom === profileTo ? `step ${profileFrom}` : `steps ${profileFrom}–${profileTo}`,
          wall: plain.length ? { ms: median(plain.map((x) => x.ms)), of: `the median of ${plain.length} unprofiled step${plain.length === 1 ? '' : 's'}` } : undefined,
        });
      }
    } finally {
      runner.destroy();
      profiler?.destroy();
    }
    // Frozen parameters that training never touched keep their uploaded values.
    const forwardValues = new Map<string, Float32Array>();
    for (const q of p.weights.params) forwardValues.set(q.value.name, finalValues.get(q.value.name) ?? current.get(q.value.name)!);
    const after = await runEval(o.steps, finalValues);
    // Past the first step (shader compilation), and unprofiled unless every such step was profiled.
    const rest = times.slice(1);
    const unprofiled = rest.filter((_, i) => !profiled(start + 2 + i));
    const steady = unprofiled.length ? unprofiled : rest.length ? rest : times;
    const msPerStep = steady.reduce((a, b) => a + b, 0) / Math.max(1, steady.length);
    if (losses.length) {
      log(`done: steps ${start + 1}–${o.steps}, loss ${losses[0].loss.toFixed(4)} → ${losses[losses.length - 1].loss.toFixed(4)}, ${msPerStep.toFixed(1)} ms/step (first step ${(times[0] ?? 0).toFixed(0)} ms, with shader compilation)${scaler ? `; loss ${scaler.describe()}${skippedSteps.length ? ` (skipped by this run: ${listSome(skippedSteps.map(String), 8)})` : ''}` : ''}`);
    }
    if (profile) log(profileTable(profile));
    if (after) log(`after ${o.steps} steps: ${fmtMetrics(after, data.unit)}`);
    if (before?.accuracy !== undefined && after?.accuracy !== undefined) {
      log(`accuracy: ${(100 * before.accuracy).toFixed(2)}% (start) → ${(100 * after.accuracy).toFixed(2)}% (${spec.mode})`);
    }
    const keep = new Set(checkpointed(p).map((q) => q.name));
    const params = new Map([...finalValues].filter(([k]) => o.readFrozen || keep.has(k)));
    const trainable = p.step.params.filter((q) => q.trainable).reduce((s, q) => s + numel(q.shape), 0);
    const result: TrainResult = {
      startStep: start,
      endStep: o.steps,
      lr: schedule.lr,
      schedule,
      gradAccum: K,
      ...(scaler ? { lossScale: { setting: lossScale as 'dynamic' | number, state: scaler.state(), skippedSteps } } : {}),
      seed,
      data: data.description,
      classes: data.classes,
      losses,
      evals,
      before,
      after,
      params,
      forwardValues,
      initial,
      allocatedBytes: runner.allocatedBytes,
      measuredBytes: measured,
      checkpoints,
      resumedFrom: resumed?.file,
      msPerStep,
      firstStepMs: times[0] ?? 0,
      trainable,
      device: gpu.description,
      files: [],
      ...(profile ? { profile } : {}),
    };
    if (!out) return result;
    // The outputs replace the previous ones whole: built in a temporary sibling folder (with links
    // to the checkpoints and anything else already there), then renamed into place.
    // An adapter folder is carried too when this run exports one: the export then replaces its two
    // files and keeps anything else the user put there (a README).
    const exportsAdapter = spec.mode !== 'full' && o.export?.weights !== false;
    const files = replaceDir(out, (dir) => writeOutputs(dir, p, result, o, data), { keep: (f) => !OUTPUT_NAMES.has(f) || (f === 'adapter' && exportsAdapter), log });
    log(`wrote ${rel(out)}/: ${files.join(', ')}`);
    return { ...result, files };
  } finally {
    evalRunner.destroy();
  }
}
