// The lorafa command line.
import { Command, InvalidArgumentError, Option } from 'commander';
import { asCommand, LorafaError } from '../ir/errors.ts';
import { printGraph } from '../ir/print.ts';
import { compileTraining, isMode, MODES, type Mode } from '../passes/compile.ts';
import { LIMIT_PRESETS, planMemory, STORAGE_DTYPES, type Limits, type StorageDType } from '../passes/memory-plan.ts';
import { OPTIMIZERS, type OptimizerOptions } from '../passes/optimizer.ts';
import { compareTable, planJson, planTable, topTable, writeSvg, type PlannedMode } from './plan.ts';
import { resolveConfig } from '../model.ts';
import { formatAdapterReport, probeAdapter } from '../runtime/device.ts';
import { loadModel, trace } from './load.ts';
import { summarize } from './summary.ts';
import { writeTrainer } from './trainer.ts';
import { finetuneCommand, type FinetuneFlags } from './finetune.ts';
import { TASK_NAMES } from '../finetune/tasks.ts';
import { addTrainOptions, type TrainFlags } from '../runtime/train.ts';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

function positiveInt(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got "${v}"`);
    return n;
  };
}

function nonNegativeNumber(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!(n >= 0)) throw new InvalidArgumentError(`${name} must be a number ≥ 0, got "${v}"`);
    return n;
  };
}

function positiveNumber(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!(n > 0)) throw new InvalidArgumentError(`${name} must be a positive number, got "${v}"`);
    return n;
  };
}

interface CommonFlags {
  mode: string;
  rank: number;
  alpha?: number;
  targets?: string;
  targetsRegex?: string;
  rslora?: boolean;
  config?: string;
  batch?: number;
  seq?: number;
  verify?: boolean;
}

interface OptimizerFlags {
  optimizer: string;
  momentum?: number;
  weightDecay?: number;
}

interface LimitFlags {
  limits: string;
  maxBindingSize?: number;
  maxBufferSize?: number;
  alignment?: number;
}

export interface CompileFlags extends CommonFlags, OptimizerFlags, Partial<LimitFlags> {
  emit: 'ir' | 'summary';
  stage?: string;
  locations?: boolean;
  out?: string;
  seed: number;
}

interface PlanFlags extends CommonFlags, OptimizerFlags, LimitFlags {
  dtype: string;
  compare?: boolean;
  top?: number;
  json?: boolean;
  svg?: string;
}

function checkMode(mode: string): Mode {
  if (!isMode(mode)) throw new LorafaError('--mode', `unknown mode "${mode}"`, `use one of: ${MODES.join(', ')}`);
  return mode;
}

export type Setup = Awaited<ReturnType<typeof setup>>;

async function setup(modelPath: string, flags: CommonFlags) {
  const m = await loadModel(modelPath);
  const overrides: Record<string, number> = {};
  if (flags.batch !== undefined) overrides.batch = flags.batch;
  if (flags.seq !== undefined) overrides.seq = flags.seq;
  const graph = trace(m, flags.config, overrides);
  const targets = flags.targetsRegex
    ? new RegExp(flags.targetsRegex)
    : flags.targets
      ? flags.targets.split(',').map((s) => s.trim()).filter(Boolean)
      : m.def.defaultTargets ?? [];
  const lora = {
    rank: flags.rank,
    alpha: flags.alpha ?? 2 * flags.rank,
    targets,
    rslora: flags.rslora,
    modulesToSave: m.def.modulesToSave,
  };
  const config = flags.config ?? m.def.defaultConfig;
  return { m, graph, lora, config, cfg: resolveConfig(m.def, { config, overrides }) };
}

async function compileCommand(modelPath: string, flags: CompileFlags, cmd: Command): Promise<void> {
  const mode = checkMode(flags.mode);
  const setupResult = await setup(modelPath, flags);
  const { m, graph, lora, config, cfg } = setupResult;
  if (flags.out) {
    const optimizer = optimizerOptions(flags);
    const preset = flags.limits ?? 'adapter';
    const limits = await resolveLimits({ ...flags, limits: preset });
    await writeTrainer(setupResult, { mode, flags, optimizer, limits, preset, command: commandLine() });
    // --emit given explicitly still prints; by default -o prints only what it wrote.
    if (cmd.getOptionValueSource('emit') !== 'cli') return;
  }
  const compiled = compileTraining(graph, { mode, verify: flags.verify, lora });
  if (flags.emit === 'ir') {
    const stage = flags.stage ?? 'dce';
    const s = compiled.stages.find((x) => x.pass === stage);
    if (!s) {
      throw new LorafaError('--stage', `no stage "${stage}" in mode ${mode}`, `stages: ${compiled.stages.map((x) => x.pass).join(', ')}`);
    }
    process.stdout.write(printGraph(s.graph, { locations: flags.locations }));
    return;
  }
  console.log(summarize(compiled, { file: m.displayFile, config, cfg }));
}

function optimizerOptions(flags: OptimizerFlags): OptimizerOptions {
  if (flags.optimizer === 'sgd') return { kind: 'sgd', momentum: flags.momentum, weightDecay: flags.weightDecay };
  if (flags.optimizer === 'adamw') return { kind: 'adamw', weightDecay: flags.weightDecay };
  throw new LorafaError('--optimizer', `unknown optimizer "${flags.optimizer}"`, `use one of: ${OPTIMIZERS.join(', ')}`);
}

export interface ResolvedLimits extends Limits {
  /** The adapter's, with --limits adapter (kernels fold larger grids into 2-D). */
  readonly maxWorkgroupsPerDimension?: number;
}

async function resolveLimits(flags: LimitFlags): Promise<ResolvedLimits> {
  let base: Limits;
  let maxWorkgroupsPerDimension: number | undefined;
  if (flags.limits === 'adapter') {
    const r = await probeAdapter();
    if (!r.ok) throw new LorafaError('--limits adapter', r.reason, `${r.fix}; or plan for a preset: --limits webgpu`);
    base = {
      alignment: r.limits.minStorageBufferOffsetAlignment,
      maxBindingSize: r.limits.maxStorageBufferBindingSize,
      maxBufferSize: r.limits.maxBufferSize,
    };
    maxWorkgroupsPerDimension = r.limits.maxComputeWorkgroupsPerDimension;
  } else if (flags.limits in LIMIT_PRESETS) {
    base = LIMIT_PRESETS[flags.limits as keyof typeof LIMIT_PRESETS];
  } else {
    throw new LorafaError('--limits', `unknown limits "${flags.limits}"`, `use one of: ${[...Object.keys(LIMIT_PRESETS), 'adapter'].join(', ')}`);
  }
  const limits: ResolvedLimits = {
    alignment: flags.alignment ?? base.alignment,
    maxBindingSize: flags.maxBindingSize ?? base.maxBindingSize,
    maxBufferSize: flags.maxBufferSize ?? base.maxBufferSize,
  };
  return maxWorkgroupsPerDimension ? { ...limits, maxWorkgroupsPerDimension } : limits;
}

async function planCommand(modelPath: string, flags: PlanFlags): Promise<void> {
  const optimizer = optimizerOptions(flags);
  if (!(STORAGE_DTYPES as readonly string[]).includes(flags.dtype)) {
    throw new LorafaError('--dtype', `unknown storage dtype "${flags.dtype}"`, `use one of: ${STORAGE_DTYPES.join(', ')}`);
  }
  const dtype = flags.dtype as StorageDType;
  const { maxWorkgroupsPerDimension: _, ...limits } = await resolveLimits(flags);
  const { m, graph, lora, config, cfg } = await setup(modelPath, flags);
  const modes: Mode[] = flags.compare ? [...MODES] : [checkMode(flags.mode)];
  const planned: PlannedMode[] = [];
  for (const mode of modes) {
    const t0 = performance.now();
    const compiled = compileTraining(graph, { mode, lora, optimizer, verify: flags.verify });
    // LoRA-FA does a subset of LoRA's work: LoRA's layout, restricted, is one of its candidates.
    const loraPlan = mode === 'lora-fa' ? planned.find((p) => p.mode === 'lora') : undefined;
    const dominating = loraPlan ? { graph: loraPlan.compiled.step!, plan: loraPlan.plan } : undefined;
    const plan = planMemory(compiled.step!, { limits, dtype, gradients: compiled.gradients, dominating });
    planned.push({ mode, compiled, plan, ms: performance.now() - t0 });
  }
  const ctx = { file: m.displayFile, config, cfg, optimizer: describeOptimizer(optimizer), limitsName: flags.limits };
  if (flags.json) {
    const doc = flags.compare ? Object.fromEntries(planned.map((p) => [p.mode, planJson(ctx, p)])) : planJson(ctx, planned[0]);
    process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
  } else {
    console.log(flags.compare ? compareTable(ctx, planned) : planTable(ctx, planned[0]));
    if (flags.top) for (const p of planned) console.log(`\n[${p.mode}] ${topTable(p, flags.top)}`);
  }
  if (flags.svg) {
    const target = planned.find((p) => p.mode === (flags.compare ? 'lora-fa' : planned[0].mode))!;
    writeSvg(flags.svg, ctx, target);
    if (!flags.json) console.log(`\nwrote ${flags.svg}`);
  }
}

export function describeOptimizer(o: OptimizerOptions): string {
  if (o.kind === 'sgd') return `SGD${o.momentum ? ` momentum=${o.momentum}` : ''}${o.weightDecay ? ` weight_decay=${o.weightDecay}` : ''}`;
  return `AdamW weight_decay=${o.weightDecay ?? 0.01}`;
}

/** Byte sizes: a plain number, or with a unit (KiB, MiB, GiB, KB, MB, GB). */
function byteSize(name: string) {
  return (v: string) => {
    const m = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$/i.exec(v.trim());
    if (!m) throw new InvalidArgumentError(`${name} must be a byte count like 134217728 or 128MiB, got "${v}"`);
    const unit = (m[2] ?? 'B').toLowerCase();
    const mult: Record<string, number> = { b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, kb: 1e3, mb: 1e6, gb: 1e9 };
    const n = Math.floor(Number(m[1]) * mult[unit]);
    if (n < 1) throw new InvalidArgumentError(`${name} must be positive, got "${v}"`);
    return n;
  };
}

function commonOptions(c: Command, defaultMode: Mode): Command {
  return c
    .argument('<model>', 'model file, e.g. models/llama.ts')
    .addOption(new Option('--mode <mode>', 'what trains').choices([...MODES]).default(defaultMode))
    .option('--rank <r>', 'LoRA rank', positiveInt('--rank'), 8)
    .option('--alpha <a>', 'LoRA alpha (scale = alpha/rank); default 2·rank', positiveNumber('--alpha'))
    .option('--targets <names>', "comma-separated linear layer names or suffixes (PEFT target_modules); default: the model's")
    .option('--targets-regex <re>', 'a regular expression that must match the whole linear layer name')
    .option('--rslora', 'rank-stabilised scale alpha/√rank')
    .option('--config <name>', "a named size from the model file (default: the model's default)")
    .option('--batch <n>', 'override the batch size', positiveInt('--batch'))
    .option('--seq <n>', 'override the sequence length', positiveInt('--seq'))
    .option('--verify', 'run the IR verifier after every pass');
}

export function program(): Command {
  const p = new Command('lorafa')
    .description('compile neural-network training to WGSL for WebGPU, built around LoRA-FA')
    .showHelpAfterError();
  const optimizerAndLimits = (c: Command, defaultLimits: string | undefined) =>
    c
      .option('--optimizer <name>', `optimizer: ${OPTIMIZERS.join(' | ')}`, 'adamw')
      .option('--momentum <m>', 'SGD momentum', positiveNumber('--momentum'))
      .option('--weight-decay <w>', 'weight decay (AdamW: decoupled, default 0.01; SGD: L2, default 0)', nonNegativeNumber('--weight-decay'))
      .option(
        '--limits <preset>',
        `device limits: webgpu (spec defaults), discrete (4 GiB buffers, 2 GiB bindings), adapter (this machine), none${defaultLimits ? '' : ' (default with -o: adapter)'}`,
        defaultLimits,
      )
      .option('--max-binding-size <bytes>', 'override maxStorageBufferBindingSize', byteSize('--max-binding-size'))
      .option('--max-buffer-size <bytes>', 'override maxBufferSize', byteSize('--max-buffer-size'))
      .option('--alignment <bytes>', 'override minStorageBufferOffsetAlignment', positiveInt('--alignment'));
  optimizerAndLimits(commonOptions(p.command('compile').description('trace a model file and compile its training step (forward, loss, gradients); with -o, a runnable trainer'), 'lora-fa'), undefined)
    .addOption(new Option('--emit <what>', 'output').choices(['summary', 'ir']).default('summary'))
    .option('--stage <pass>', 'with --emit ir: the graph after this pass (trace, lora, lora-fa, autodiff, dce)')
    .option('--locations', 'with --emit ir: annotate nodes with model file:line')
    .option('-o, --out <dir>', 'write a runnable trainer there: trainer.ts, plan.json, kernels/*.wgsl')
    .option('--seed <n>', "with -o: the trainer's default seed of the init and the synthetic data", (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`--seed must be an integer ≥ 0, got "${v}"`);
      return n;
    }, 0)
    .action(compileCommand);
  optimizerAndLimits(commonOptions(p.command('plan').description('plan every byte of one training step (forward, backward, optimizer update)'), 'lora-fa'), 'discrete')
    .option('--dtype <d>', `storage of frozen weights and activations: ${STORAGE_DTYPES.join(' | ')} (trainable state stays f32)`, 'f32')
    .option('--compare', 'full vs LoRA vs LoRA-FA side by side, with ratios')
    .option('--top <n>', 'the n largest saved activations, and whether each adapted layer keeps its input', positiveInt('--top'))
    .option('--json', 'the whole plan as JSON')
    .option('--svg <file>', 'write a picture of live bytes along the schedule')
    .action(planCommand);
  addTrainOptions(
    p
      .command('train')
      .description("train a compiled trainer (lorafa compile … -o <dir>) on this machine's GPU; the same as npx tsx <dir>/trainer.ts")
      .argument('<dir>', 'the directory lorafa compile -o wrote'),
  ).action(trainCommand);
  p.command('finetune')
    .description('fine-tune a shipped base model on a real data set (fashion-mnist, spam) or pretrain one (mnist, brown), with a report')
    .argument('<task>', `one of: ${TASK_NAMES.join(', ')}`)
    .option('--mode <mode>', 'full | lora | lora-fa', 'lora-fa')
    .option('--grad-correction', "LoRA-FA's gradient correction: gB ← (r/alpha)²·(AᵀA)⁻¹·gB")
    .option('--steps <n>', "training steps (default: the task's)", positiveInt('--steps'))
    .option('--lr <x>', "peak learning rate (default: the task's, per mode)", positiveNumber('--lr'))
    .option('--seed <n>', 'seed of the init, the adapters and the data order', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`--seed must be an integer ≥ 0, got "${v}"`);
      return n;
    }, 0)
    .option('--rank <r>', "LoRA rank (default: the task's)", positiveInt('--rank'))
    .option('--alpha <a>', "LoRA alpha (default: the task's)", positiveNumber('--alpha'))
    .option('--targets <list>', 'LoRA target modules, comma-separated (PEFT target_modules)')
    .option('--base <dir>', "base model directory holding model.safetensors (default: the task's shipped one)")
    .option('--from-scratch', 'start from the seeded init, not a base model')
    .option('--init-adapter <dir>', 'start the adapters from a PEFT adapter directory')
    .option('--merged', 'also write merged.safetensors (adapters folded into the base weights)')
    .option('--out <dir>', 'where the report, adapter and weights go (default out/finetune-<task>-<mode>)')
    .addOption(new Option('--progress <how>', 'a progress bar (on a terminal), plain lines, or nothing').choices(['auto', 'bar', 'lines', 'none']).default('auto'))
    .action(async (task: string, flags: FinetuneFlags) => {
      await finetuneCommand(task, flags, commandLine());
    });
  p.command('doctor')
    .description('report the WebGPU adapter Dawn finds, and its limits, or why there is none')
    .action(async () => {
      const r = await probeAdapter();
      console.log(formatAdapterReport(r));
      if (!r.ok) process.exitCode = 1;
    });
  return p;
}

/** `lorafa train <dir>`: imports <dir>/trainer.ts and calls its run(), so both ways run the same code. */
async function trainCommand(dir: string, flags: TrainFlags): Promise<void> {
  const trainer = resolve(dir, 'trainer.ts');
  if (!existsSync(trainer) || !existsSync(join(dir, 'plan.json'))) {
    throw new LorafaError(dir, 'no compiled trainer here (trainer.ts and plan.json)', `compile one first: lorafa compile models/mlp.ts --mode lora-fa -o ${dir}`);
  }
  const mod = (await import(pathToFileURL(trainer).href)) as { run?: (f: TrainFlags) => Promise<unknown> };
  if (typeof mod.run !== 'function') throw new LorafaError(trainer, 'exports no run(flags)', `regenerate it with lorafa compile … -o ${dir}`);
  await mod.run(flags);
}

let invocation: readonly string[] = [];

/** The command line as typed, for the trainer's "re-run this" note. */
function commandLine(): string {
  const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  return ['lorafa', ...invocation].map(quote).join(' ');
}

export async function main(argv: readonly string[]): Promise<number> {
  invocation = argv;
  return asCommand(async () => {
    await program().parseAsync([...argv], { from: 'user' });
  });
}
