// A TrainingProgram: everything the training loop runs, compiled, planned and lowered for one
// device, and nothing about data or files. `lorafa finetune` builds one in process; `lorafa
// compile -o` builds the same one and writes it to a trainer folder (trainer-files.ts), which
// `lorafa train` and `npx tsx trainer.ts` read back: the two doors run the same plan, so they give
// the same losses bit for bit.
//
// 1. Trace the model at its config (batch and seq overrides), apply LoRA (PEFT's targets), compile
//    the training step with its optimizer (and gradient accumulators when asked), plan it for the
//    device's limits (LoRA-FA also tried in LoRA's layout: planStep) and lower it to kernels.
// 2. Trace it again at the evaluation batch: the forward graph (loss and logits), planned and
//    lowered on its own; it shares parameter names with the step.
// 3. Keep what the loop needs besides kernels: every parameter's init, the forward graph's weights
//    (parameters, linear layers, adapters: for --base and the adapter export) with their state-dict
//    keys, the data inputs, the classifier's class count and the vocabulary.
import { createHash } from 'node:crypto';
import { dirname, isAbsolute, resolve as resolvePath } from 'node:path';
import type { KernelChoice } from '../codegen/kernel.ts';
import { buildKernelPlan, type KernelPlan } from '../codegen/kernel-plan.ts';
import { LorafaError } from '../ir/errors.ts';
import type { DType, Graph, Init, LinearModule, LoraAdapter, Param } from '../ir/types.ts';
import { resolveConfig, type ModelConfig } from '../model/define.ts';
import { trace, type LoadedModel } from '../model/load.ts';
import type { Compiled, Mode } from '../passes/compile.ts';
import { planStep } from '../passes/plan-step.ts';
import { overheadPercent, type RematReport } from '../passes/remat.ts';
import { applyLora, type LoraOptions } from '../passes/lora.ts';
import { planMemory, type Category, type Limits, type MemoryPlan, type StorageDType } from '../passes/memory-plan.ts';
import type { OptimizerOptions } from '../passes/optimizer.ts';
import type { InputSpec } from '../data/dataset.ts';
import { defaultLossScale, type LossScaleSetting } from './loss-scale.ts';

/** What a program trains; embedded in trainer.ts and plan.json, recorded in every checkpoint. */
export interface ProgramSpec {
  /** The model's name (defineModel's `name`). */
  readonly model: string;
  /** The model file, absolute, as compiled (for the record: a trainer never re-reads it). */
  readonly modelFile: string;
  readonly config: string;
  readonly sizes: Readonly<Record<string, number | string | boolean>>;
  readonly mode: Mode;
  readonly lora?: {
    readonly rank: number;
    readonly alpha: number;
    readonly targets: readonly string[];
    readonly targetsRegex?: string;
    readonly rslora: boolean;
    readonly modulesToSave: readonly string[];
  };
  readonly optimizer: OptimizerOptions;
  /**
   * Modules that train in full under LoRA (PEFT's modules_to_save): a classifier head, which a
   * base checkpoint may lack (it is then initialised here, and said so).
   */
  readonly modulesToSave: readonly string[];
  /** LoRA-FA's gradient correction compiled in. */
  readonly gradCorrection: boolean;
  /**
   * Storage of frozen weights and activations on the GPU (trainable parameters, gradients and
   * optimizer state are f32). Absent in trainers compiled before half storage: f32.
   */
  readonly dtype?: StorageDType;
  /**
   * --kernels portable: only kernels that need no optional feature (no subgroups), so the trainer
   * runs on any adapter. Absent: auto (what the compiling adapter offers).
   */
  readonly kernels?: 'portable';
  /**
   * The GPU-memory budget the step was compiled for (--budget), and what fitting it cost: backward
   * recomputes `recomputed` forward values, `extraFlops` more FLOPs (`percent` of the step).
   */
  readonly budget?: { readonly bytes: number; readonly recomputed: number; readonly extraFlops: number; readonly percent: number };
  /** Gradient accumulators compiled in (any --grad-accum K then runs); false: K must be 1. */
  readonly accumulate: boolean;
  /**
   * Loss scaling compiled in (src/passes/loss-scale.ts), and the run's default --loss-scale:
   * dynamic, or a static scale. Absent: the step has no loss scaling (--loss-scale none).
   */
  readonly lossScale?: 'dynamic' | number;
  /** Rows of one (micro-)batch: the traced batch. */
  readonly batch: number;
  /** Rows of the evaluation plan. */
  readonly evalBatch: number;
  /** Default seed of the init and the data order (`--seed` overrides it). */
  readonly seed: number;
  /** sha256 of the kernel plans and inits (see programHash). */
  readonly planHash: string;
  /** The command that compiled it: re-run it rather than edit a trainer's files. */
  readonly command: string;
}

/** The forward graph's weights: parameters, linear layers and adapters, without nodes. */
export interface WeightLayout {
  readonly name: string;
  readonly file?: string;
  readonly params: readonly Param[];
  readonly linears: readonly LinearModule[];
  readonly adapters: readonly LoraAdapter[];
  /** lorafa module name → its Hugging Face state-dict module name, where they differ. */
  readonly keys: Readonly<Record<string, string>>;
}

export interface MemorySummary {
  readonly peak: number;
  readonly lowerBound: number;
  readonly fragmentation: number;
  readonly peakStep: number;
  readonly schedule: string;
  readonly limits: Limits & { readonly preset: string };
  /** Live bytes per category at the peak step. */
  readonly atPeak: Readonly<Record<Category, number>>;
}

export interface TrainingProgram {
  readonly spec: ProgramSpec;
  readonly step: KernelPlan;
  readonly eval: KernelPlan;
  /** How every parameter of the step and the evaluation plan starts. */
  readonly inits: Readonly<Record<string, Init>>;
  readonly weights: WeightLayout;
  /** The step's data inputs (optimizer scalars excluded). */
  readonly inputs: readonly InputSpec[];
  /** The classifier's classes (the width of its `logits`), when it has them. */
  readonly classes?: number;
  /** The model's vocabulary (config `vocab`), when it has one. */
  readonly vocab?: number;
  readonly memory: MemorySummary;
}

export interface CompileProgramOptions {
  readonly config?: string;
  /** batch / seq / other config field overrides. */
  readonly overrides?: Readonly<Record<string, number>>;
  readonly mode: Mode;
  readonly lora?: LoraOptions;
  readonly optimizer: OptimizerOptions;
  readonly gradCorrection?: boolean;
  readonly accumulate?: boolean;
  /**
   * --loss-scale: anything but none compiles loss scaling in. Default: dynamic when the storage
   * dtype is f16, else none (defaultLossScale).
   */
  readonly lossScale?: LossScaleSetting;
  /** Rows of the evaluation plan (default: the training batch). */
  readonly evalBatch?: number;
  readonly seed: number;
  readonly command: string;
  readonly verify?: boolean;
  /** Bytes the step's plan must fit; backward recomputes forward values to fit it (StepSetup.budget). */
  readonly budget?: number;
  /** The limits to plan for, with the preset name for the record. */
  readonly limits: Limits & { readonly preset: string };
  readonly maxWorkgroupsPerDimension?: number;
  readonly subgroupSize?: number;
  /** A CPU adapter (lavapipe): the matmul heuristic keeps to barrier-free kernels (EmitContext.cpuAdapter). */
  readonly cpuAdapter?: boolean;
  readonly maxWorkgroupStorageSize?: number;
  readonly maxInvocationsPerWorkgroup?: number;
  /** --kernels: auto (default) or portable (no subgroups; recorded in the spec). */
  readonly kernels?: KernelChoice;
  /** Storage of frozen weights and activations (default f32). */
  readonly dtype?: StorageDType;
  /** The device has shader-f16 (an f16 plan then stores array<f16>; else packed u32). */
  readonly shaderF16?: boolean;
  /** The step already planned for these options and limits (finetune's mode comparison). */
  readonly planned?: { readonly compiled: Compiled; readonly memory: MemoryPlan; readonly remat?: RematReport };
}

export function memorySummary(plan: MemoryPlan, limits: Limits & { preset: string }): MemorySummary {
  return {
    peak: plan.peak,
    lowerBound: plan.lowerBound,
    fragmentation: Number(plan.fragmentation.toFixed(6)),
    peakStep: plan.peakStep,
    schedule: plan.scheduleName,
    limits,
    atPeak: plan.atPeak,
  };
}

/** JSON with object keys sorted, so equal data hashes equally however it was built. */
export function canonicalJson(x: unknown): string {
  if (Array.isArray(x)) return `[${x.map(canonicalJson).join(',')}]`;
  if (x && typeof x === 'object') {
    const o = x as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(x);
}

/** sha256 of the kernel plans (WGSL included) and the inits. */
export function programHash(step: KernelPlan, evalPlan: KernelPlan, inits: Readonly<Record<string, Init>>): string {
  return 'sha256:' + createHash('sha256').update(canonicalJson({ step, eval: evalPlan, inits })).digest('hex');
}

/** The state-dict key table of a forward graph: every module whose key differs from its name. */
function keyTable(g: Graph, keyFor: ((n: string) => string) | undefined): Record<string, string> {
  if (!keyFor) return {};
  const modules = new Set<string>();
  for (const p of g.params) {
    const n = p.value.name;
    const dot = n.lastIndexOf('.');
    modules.add(dot < 0 ? n : n.slice(0, dot));
  }
  for (const l of g.linears) modules.add(l.name);
  const out: Record<string, string> = {};
  for (const m of [...modules].sort()) {
    const k = keyFor(m);
    if (k !== m) out[m] = k;
  }
  return out;
}

/** The keyFor of a layout's table. */
export function keyForLayout(w: WeightLayout): (name: string) => string {
  return (n) => w.keys[n] ?? n;
}

/** A Graph view of a layout (no nodes), for the weight and PEFT functions in src/io. */
export function layoutGraph(w: WeightLayout): Graph {
  return { name: w.name, file: w.file, params: w.params, linears: w.linears, adapters: w.adapters, inputs: [], nodes: [], outputs: {}, updates: [], nextId: 0 };
}

export function weightLayout(forward: Graph, keyFor: ((n: string) => string) | undefined): WeightLayout {
  return { name: forward.name, file: forward.file, params: forward.params, linears: forward.linears, adapters: forward.adapters, keys: keyTable(forward, keyFor) };
}

function inputSpecs(g: Graph): InputSpec[] {
  return g.inputs.filter((i) => !i.value.name.startsWith('optim.')).map((i) => ({ name: i.value.name, shape: i.value.type.shape, dtype: i.value.type.dtype as DType }));
}

/**
 * The default --loss-scale of a program: from its storage dtype where the options carry one
 * (`dtype`, f16 → dynamic), else none (f32).
 */
export function programLossScale(o: { readonly dtype?: StorageDType }): LossScaleSetting {
  return defaultLossScale(o.dtype);
}

export function compileProgram(m: LoadedModel, o: CompileProgramOptions): TrainingProgram {
  const cfg: ModelConfig = resolveConfig(m.def, { config: o.config, overrides: o.overrides, displayFile: m.displayFile });
  const config = o.config ?? m.def.defaultConfig;
  const graph = trace(m, config, { ...o.overrides });
  const { preset: _preset, ...limits } = o.limits;
  const lossScale = o.lossScale ?? programLossScale(o);
  const { compiled, memory, remat } = o.planned ?? planStep(graph, { mode: o.mode, lora: o.lora, optimizer: o.optimizer, gradCorrection: o.gradCorrection, accumulate: o.accumulate, lossScaling: lossScale !== 'none', verify: o.verify, dtype: o.dtype, budget: o.budget }, limits);
  const dtype = o.dtype ?? 'f32';
  if (memory.dtype !== dtype) throw new LorafaError('--dtype', `the step was planned with ${memory.dtype} storage, not ${dtype}`, 'plan it with the same --dtype');
  const kernelOptions = {
    maxWorkgroupsPerDimension: o.maxWorkgroupsPerDimension,
    subgroupSize: o.subgroupSize,
    shaderF16: o.shaderF16,
    cpuAdapter: o.cpuAdapter,
    maxWorkgroupStorageSize: o.maxWorkgroupStorageSize,
    maxInvocationsPerWorkgroup: o.maxInvocationsPerWorkgroup,
    kernels: o.kernels,
  };
  const step = buildKernelPlan(compiled.step!, memory, kernelOptions);

  const batch = cfg.batch;
  const evalBatch = o.evalBatch ?? batch;
  if (!(Number.isInteger(evalBatch) && evalBatch >= 1)) throw new LorafaError('--eval-batch', `must be a positive integer, got ${evalBatch}`, 'e.g. --eval-batch 64');
  const evalModel = evalBatch === batch ? graph : trace(m, config, { ...o.overrides, batch: evalBatch });
  const evalGraph = o.mode === 'full' ? evalModel : applyLora(evalModel, o.lora!).graph;
  const evalMemory = planMemory(evalGraph, { limits, dtype });
  const evalPlan = buildKernelPlan(evalGraph, evalMemory, kernelOptions);

  // File inits name paths relative to the model file; the program may run from anywhere.
  const inits: Record<string, Init> = {};
  for (const p of [...compiled.step!.params, ...evalGraph.params]) {
    inits[p.value.name] = p.init.kind === 'file' && !isAbsolute(p.init.path) ? { ...p.init, path: resolvePath(dirname(m.file), p.init.path) } : p.init;
  }
  const forward = compiled.forward;
  const logits = forward.outputs.logits;
  const classes = logits && logits.type.shape.length === 2 && forward.inputs.some((i) => i.value.name === 'labels' && i.value.type.shape.length === 1) ? logits.type.shape[1] : undefined;
  const sizes = Object.fromEntries(Object.entries(cfg).filter(([, v]) => v !== undefined)) as ProgramSpec['sizes'];
  const lora = o.mode === 'full' || !o.lora
    ? undefined
    : {
        rank: o.lora.rank,
        alpha: o.lora.alpha,
        targets: o.lora.targets instanceof RegExp ? [] : [...o.lora.targets],
        ...(o.lora.targets instanceof RegExp ? { targetsRegex: o.lora.targets.source } : {}),
        rslora: !!o.lora.rslora,
        modulesToSave: [...(o.lora.modulesToSave ?? [])],
      };
  const spec: ProgramSpec = {
    model: m.def.name,
    modelFile: m.file,
    config,
    sizes,
    mode: o.mode,
    ...(lora ? { lora } : {}),
    optimizer: o.optimizer,
    modulesToSave: [...(m.def.modulesToSave ?? [])],
    gradCorrection: !!o.gradCorrection,
    ...(dtype !== 'f32' ? { dtype } : {}),
    ...(o.kernels === 'portable' ? { kernels: 'portable' as const } : {}),
    ...(o.budget !== undefined
      ? { budget: { bytes: o.budget, recomputed: remat?.recomputeNodes ?? 0, extraFlops: remat?.extraFlops ?? 0, percent: overheadPercent(remat) } }
      : {}),
    accumulate: !!o.accumulate,
    ...(lossScale !== 'none' ? { lossScale } : {}),
    batch,
    evalBatch,
    seed: o.seed,
    planHash: programHash(step, evalPlan, inits),
    command: o.command,
  };
  return {
    spec,
    step,
    eval: evalPlan,
    inits,
    weights: weightLayout(forward, m.def.stateDictKey ? (n) => m.def.stateDictKey!(n, cfg) : undefined),
    inputs: inputSpecs(compiled.step!),
    classes,
    vocab: typeof cfg.vocab === 'number' ? cfg.vocab : undefined,
    memory: memorySummary(memory, o.limits),
  };
}

export { planStep };
