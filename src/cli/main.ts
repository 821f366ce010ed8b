// The lorafa command line: thin shells over the package's API (src/index.ts), the same functions a
// script gets from `import … from 'lorafa'`.
//
//   compile <model>         the training step: summary, IR, or (-o) a runnable trainer folder
//   plan <model>            every byte of one step, by category; --compare, --top, --json, --svg
//   train <dir>             train a compiled trainer folder (same as npx tsx <dir>/trainer.ts)
//   finetune <model|preset> compile + train on data in one command, with a report
//   tune <dir>              time each matmul variant of a trainer's shapes here: <dir>/tuning.json
//   doctor                  the WebGPU adapter Dawn finds: limits, memory where reported, host RAM
//
// Exit codes: 0 success, 1 a failure (a LorafaError: bad model, data, weights, …), 2 a usage error
// (unknown command or flag, a flag value that does not parse).
import { existsSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command, InvalidArgumentError, Option } from 'commander';
import {
  type AttentionImpl,
  addCompiledOptions,
  addDataOptions,
  addRunOptions,
  addTrainOptions,
  acquireGpu,
  defaultLossScale,
  describeLossScale,
  LOSS_SCALE_HELP,
  lossScaleFlag,
  asCommand,
  checkOutputPath,
  chooseModel,
  compareTable,
  compileProgram,
  checkModulesToSave,
  compileRegex,
  compileTraining,
  emitTrainer,
  finetune,
  byteUnit,
  fitBatches,
  fitJson,
  fitTable,
  fmtBytes,
  formatAdapterReport,
  rematerialize,
  verify as verifyGraph,
  type Graph,
  type MemoryPlan,
  gpuLimits,
  LIMIT_PRESETS,
  loadModel,
  LorafaError,
  MODES,
  nonNegativeInt,
  nonNegativeNumber,
  OPTIMIZERS,
  planJson,
  planMemory,
  planStep,
  planSvgText,
  planTable,
  positiveInt,
  byteSize,
  positiveNumber,
  printGraph,
  probeAdapter,
  PRESET_NAMES,
  registerLoaders,
  resolveConfig,
  STORAGE_DTYPES,
  summarize,
  topTable,
  trace,
  usageOutput,
  regexFlag,
  writeFileAtomic,
  type Limits,
  type LossScaleSetting,
  type Mode,
  type OptimizerOptions,
  type PlannedMode,
  type StorageDType,
  type TrainFlags,
  KERNEL_CHOICES,
  KERNELS_HELP,
  kernelOptionsFor,
  tuneTrainer,
  type KernelChoice,
} from '../index.ts';

interface CommonFlags {
  mode: Mode;
  rank: number;
  alpha?: number;
  targets?: string;
  targetsRegex?: string;
  modulesToSave?: string;
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

interface CompileFlags extends CommonFlags, OptimizerFlags, Partial<LimitFlags> {
  emit: 'ir' | 'summary';
  stage?: string;
  locations?: boolean;
  out?: string;
  seed: number;
  gradAccum?: number;
  gradCorrection?: boolean;
  evalBatch?: number;
  dtype: StorageDType;
  lossScale?: LossScaleSetting;
  budget?: number;
  kernels?: KernelChoice;
  tune?: boolean;
}

interface PlanFlags extends CommonFlags, OptimizerFlags, LimitFlags {
  fitText?: string;
  dtype: string;
  attention?: AttentionImpl;
  composed?: boolean;
  compare?: boolean;
  top?: number;
  json?: boolean;
  svg?: string;
  budget?: number;
  fit?: number;
}

async function setup(modelPath: string, flags: CommonFlags & { attention?: AttentionImpl; composed?: boolean }) {
  // A model file, or a Hugging Face checkpoint folder (its config.json picks the model and sizes).
  const choice = await chooseModel(modelPath, { config: flags.config });
  const m = choice.model;
  flags = { ...flags, config: choice.config };
  const overrides: Record<string, number> = {};
  if (flags.batch !== undefined) overrides.batch = flags.batch;
  if (flags.seq !== undefined) overrides.seq = flags.seq;
  const graph = trace(m, flags.config, overrides, { composed: flags.composed, attention: flags.attention });
  const targets = flags.targetsRegex !== undefined ? compileRegex(flags.targetsRegex) : flags.targets ? splitList(flags.targets) : (m.def.defaultTargets ?? []);
  const modulesToSave = flags.modulesToSave !== undefined ? splitList(flags.modulesToSave) : m.def.modulesToSave;
  if (flags.modulesToSave !== undefined && flags.mode !== 'full') checkModulesToSave(graph, modulesToSave ?? [], '--modules-to-save');
  const lora = { rank: flags.rank, alpha: flags.alpha ?? 2 * flags.rank, targets, rslora: flags.rslora, modulesToSave };
  const config = flags.config ?? m.def.defaultConfig;
  return { m, graph, lora, config, overrides, cfg: resolveConfig(m.def, { config, overrides }) };
}

const splitList = (s: string) => s.split(',').map((x) => x.trim()).filter(Boolean);

function optimizerOptions(flags: OptimizerFlags): OptimizerOptions {
  if (flags.optimizer === 'sgd') return { kind: 'sgd', momentum: flags.momentum, weightDecay: flags.weightDecay };
  if (flags.optimizer === 'adamw') return { kind: 'adamw', weightDecay: flags.weightDecay };
  throw new LorafaError('--optimizer', `unknown optimizer "${flags.optimizer}"`, `use one of: ${OPTIMIZERS.join(', ')}`);
}

export function describeOptimizer(o: OptimizerOptions): string {
  if (o.kind === 'sgd') return `SGD${o.momentum ? ` momentum=${o.momentum}` : ''}${o.weightDecay ? ` weight_decay=${o.weightDecay}` : ''}`;
  return `AdamW weight_decay=${o.weightDecay ?? 0.01}`;
}

interface ResolvedLimits extends Limits {
  /** The adapter's, with --limits adapter (kernels fold larger grids into 2-D). */
  readonly maxWorkgroupsPerDimension?: number;
}

async function resolveLimits(flags: LimitFlags): Promise<ResolvedLimits> {
  let base: Limits;
  let maxWorkgroupsPerDimension: number | undefined;
  if (flags.limits === 'adapter') {
    const r = await probeAdapter();
    if (!r.ok) throw new LorafaError('--limits adapter', r.reason, `${r.fix}; or plan for a preset: --limits webgpu`);
    base = { alignment: r.limits.minStorageBufferOffsetAlignment, maxBindingSize: r.limits.maxStorageBufferBindingSize, maxBufferSize: r.limits.maxBufferSize };
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

function shown(p: string): string {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}

async function compileCommand(modelPath: string, flags: CompileFlags, cmd: Command): Promise<void> {
  if (flags.out) checkOutputPath(flags.out, 'folder', '-o');
  const s = await setup(modelPath, flags);
  if (flags.out) {
    const preset = flags.limits ?? 'adapter';
    const { maxWorkgroupsPerDimension, ...limits } = await resolveLimits({ ...flags, limits: preset });
    // Planned for this machine's adapter: use its subgroup matmul when it has one (the trainer then
    // needs that feature where it runs, which the runtime checks).
    const gpu = preset === 'adapter' || flags.tune ? await acquireGpu() : undefined;
    const program = compileProgram(s.m, {
      config: s.config,
      overrides: s.overrides,
      mode: flags.mode,
      lora: flags.mode === 'full' ? undefined : s.lora,
      optimizer: optimizerOptions(flags),
      gradCorrection: flags.gradCorrection,
      accumulate: (flags.gradAccum ?? 1) > 1,
      lossScale: flags.lossScale,
      evalBatch: flags.evalBatch,
      seed: flags.seed,
      command: commandLine(),
      verify: flags.verify,
      budget: flags.budget,
      limits: { ...limits, preset },
      // This adapter's kernels (subgroup matmuls on lavapipe, workgroup-memory tiles on a GPU;
      // f16 as array<f16> where it has shader-f16) when planned for it; with a preset, the
      // portable ones a CPU adapter would run.
      ...(gpu && preset === 'adapter' ? kernelOptionsFor(gpu) : { maxWorkgroupsPerDimension }),
      kernels: flags.kernels,
      dtype: flags.dtype,
    });
    const emitted = emitTrainer({ outDir: flags.out, program, log: (line) => console.log(line) });
    const dir = shown(emitted.outDir);
    const spec = program.spec;
    console.log(`wrote ${dir}/trainer.ts, ${dir}/plan.json, ${dir}/kernels/ (${emitted.kernels} kernels; ${program.step.dispatches.length} dispatches per step, ${program.eval.dispatches.length} per evaluation batch)`);
    console.log(`${spec.model} (config ${spec.config}), ${spec.mode}, ${spec.optimizer.kind === 'adamw' ? 'AdamW' : 'SGD'}, batch ${spec.batch}${spec.accumulate ? ' with gradient accumulators' : ''}${spec.lossScale !== undefined ? `, ${describeLossScale(spec.lossScale)}` : ''}; ${spec.dtype ? `${spec.dtype} storage (trainable state f32); ` : ''}${spec.kernels ? `${spec.kernels} kernels; ` : ''}limits ${preset}; GPU memory ${fmtBytes(program.memory.peak)} (lower bound ${fmtBytes(program.memory.lowerBound)})`);
    if (flags.tune) await tuneTrainer(emitted.outDir, { gpu, log: (line) => console.log(line) });
    console.log(`train it:  npx lorafa train ${dir} --data <file> --steps 100${spec.accumulate ? ` --grad-accum ${flags.gradAccum}` : ''}`);
    console.log(`       or: npx tsx ${dir}/trainer.ts --data <file> --steps 100   (where the lorafa package is installed)`);
    // --emit given explicitly still prints; by default -o prints only what it wrote.
    if (cmd.getOptionValueSource('emit') !== 'cli') return;
  }
  // With --budget the whole step is planned, and the IR after recomputation is stage remat.
  const budgeted =
    flags.budget !== undefined
      ? planStep(
          s.graph,
          {
            mode: flags.mode,
            lora: s.lora,
            optimizer: optimizerOptions(flags),
            gradCorrection: flags.gradCorrection,
            verify: flags.verify,
            budget: flags.budget,
            // The step -o would compile: its storage, and loss scaling as it defaults.
            dtype: flags.dtype,
            lossScaling: (flags.lossScale ?? defaultLossScale(flags.dtype)) !== 'none',
          },
          await resolveLimits({ ...flags, limits: flags.limits ?? 'discrete' }),
        )
      : undefined;
  const compiled = budgeted?.compiled ?? compileTraining(s.graph, { mode: flags.mode, verify: flags.verify, lora: s.lora, gradCorrection: flags.gradCorrection });
  if (flags.emit === 'ir') {
    const stage = flags.stage ?? (compiled.stages.some((x) => x.pass === 'remat') ? 'remat' : 'dce');
    const st = compiled.stages.find((x) => x.pass === stage);
    if (!st) throw new LorafaError('--stage', `no stage "${stage}" in mode ${flags.mode}`, `stages: ${compiled.stages.map((x) => x.pass).join(', ')}`);
    process.stdout.write(printGraph(st.graph, { locations: flags.locations }));
    return;
  }
  console.log(summarize(compiled, { file: s.m.displayFile, config: s.config, cfg: s.cfg }));
}

async function planCommand(modelPath: string, flags: PlanFlags): Promise<void> {
  const optimizer = optimizerOptions(flags);
  if (!(STORAGE_DTYPES as readonly string[]).includes(flags.dtype)) {
    throw new LorafaError('--dtype', `unknown storage dtype "${flags.dtype}"`, `use one of: ${STORAGE_DTYPES.join(', ')}`);
  }
  const dtype = flags.dtype as StorageDType;
  // The step a run with this dtype trains: f16 compiles dynamic loss scaling in by default.
  const lossScaling = defaultLossScale(dtype) !== 'none';
  const { maxWorkgroupsPerDimension: _, ...limits } = await resolveLimits(flags);
  const svg = flags.svg ? checkOutputPath(flags.svg, 'file', '--svg') : undefined;
  const { m, graph, lora, config, cfg } = await setup(modelPath, flags);
  const modes: Mode[] = flags.compare || flags.fit !== undefined ? [...MODES] : [flags.mode];
  const ctx = { file: m.displayFile, config, cfg, optimizer: describeOptimizer(optimizer), limitsName: flags.limits };
  if (flags.fit !== undefined) {
    const size = flags.fit;
    const t0 = performance.now();
    const fits = fitBatches({
      size,
      graphAt: (batch) => (batch === cfg.batch ? graph : trace(m, config, { ...(flags.seq !== undefined ? { seq: flags.seq } : {}), batch }, { composed: flags.composed, attention: flags.attention })),
      reference: Number(cfg.batch ?? 1),
      modes,
      lora,
      optimizer,
      lossScaling,
      plan: { limits, dtype },
    });
    const fitCtx = { ...ctx, dtype, size, unit: byteUnit(flags.fitText ?? ''), ms: performance.now() - t0 };
    if (flags.json) process.stdout.write(JSON.stringify(fitJson(fitCtx, fits), null, 2) + '\n');
    else console.log(fitTable(fitCtx, fits));
    if (!svg) return;
  }
  const planned: PlannedMode[] = [];
  const plainPlans = new Map<Mode, { step: Graph; plan: MemoryPlan }>();
  for (const mode of flags.compare ? modes : [flags.mode]) {
    const t0 = performance.now();
    // (The plan does not print what LoRA-FA pruned: explaining it would train the LoRA step again.)
    const compiled = compileTraining(graph, { mode, lora, optimizer, lossScaling, verify: flags.verify, explain: false });
    // LoRA-FA does a subset of LoRA's work: LoRA's layout, restricted, is one of its candidates.
    const loraPlan = mode === 'lora-fa' ? plainPlans.get('lora') : undefined;
    const dominating = loraPlan ? { graph: loraPlan.step, plan: loraPlan.plan } : undefined;
    const plan = planMemory(compiled.step!, { limits, dtype, gradients: compiled.gradients, dominating });
    plainPlans.set(mode, { step: compiled.step!, plan });
    if (flags.budget === undefined) {
      planned.push({ mode, compiled, plan, ms: performance.now() - t0 });
      continue;
    }
    // --budget: backward recomputes what it must for the peak to fit (remat.ts).
    const r = rematerialize(compiled.step!, {
      budget: flags.budget,
      plain: plan,
      plan: (g) => planMemory(g, { limits, dtype, gradients: compiled.gradients }),
      what: `${m.displayFile} (${mode})`,
    });
    const step = flags.verify ? verifyGraph(r.graph, 'remat') : r.graph;
    planned.push({ mode, compiled: { ...compiled, step }, plan: r.plan, ms: performance.now() - t0, remat: { budget: flags.budget, plainPeak: plan.peak, report: r.report, unit: byteUnit(rawFlag('--budget') ?? '') } });
  }
  if (flags.fit !== undefined) {
    writeFileAtomic(svg!, Buffer.from(planSvgText(ctx, flags.compare ? planned : planned[0], { budget: flags.fit })));
    if (!flags.json) console.log(`\nwrote ${shown(svg!)}`);
    return;
  }
  if (flags.json) {
    const doc = flags.compare ? Object.fromEntries(planned.map((p) => [p.mode, planJson(ctx, p)])) : planJson(ctx, planned[0]);
    process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
  } else {
    console.log(flags.compare ? compareTable(ctx, planned) : planTable(ctx, planned[0]));
    if (flags.top) for (const p of planned) console.log(`\n[${p.mode}] ${topTable(p, flags.top)}`);
  }
  if (svg) {
    // --compare: every mode's curve on one picture; otherwise the one mode, stacked by category.
    writeFileAtomic(svg, Buffer.from(planSvgText(ctx, flags.compare ? planned : planned[0], { budget: flags.budget })));
    if (!flags.json) console.log(`\nwrote ${shown(svg)}`);
  }
}

function commonOptions(c: Command, defaultMode: Mode): Command {
  return c
    .argument('<model>', 'a model file (e.g. models/llama.ts), or a Hugging Face checkpoint folder')
    .addOption(new Option('--mode <mode>', 'what trains').choices([...MODES]).default(defaultMode))
    .option('--rank <r>', 'LoRA rank', positiveInt('--rank'), 8)
    .option('--alpha <a>', 'LoRA alpha (scale = alpha/rank); default 2·rank', positiveNumber('--alpha'))
    .option('--targets <names>', "comma-separated linear layer names or suffixes (PEFT target_modules); default: the model's")
    .option('--targets-regex <re>', 'a regular expression that must match the whole linear layer name', regexFlag('--targets-regex'))
    .option('--modules-to-save <names>', "modules trained in full beside the adapters, comma-separated (PEFT modules_to_save; default: the model's new heads)")
    .option('--rslora', 'rank-stabilised scale alpha/√rank')
    .option('--config <name>', "a named size from the model file, or a Hugging Face config.json (default: the model's default)")
    .option('--batch <n>', 'override the batch size', positiveInt('--batch'))
    .option('--seq <n>', 'override the sequence length', positiveInt('--seq'))
    .option('--verify', 'run the IR verifier after every pass');
}

/** The text given for a flag on the command line (`--fit 80GB` or `--fit=80GB`), for echoing its unit. */
function rawFlag(name: string): string | undefined {
  const i = invocation.findIndex((a) => a === name || a.startsWith(`${name}=`));
  if (i < 0) return undefined;
  return invocation[i] === name ? invocation[i + 1] : invocation[i].slice(name.length + 1);
}

function packageVersion(): string {
  const pkg = resolve(import.meta.dirname, '..', '..', 'package.json');
  return (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
}

interface FinetuneCliFlags extends TrainFlags {
  mode: Mode;
  baselines?: boolean;
  rank?: number;
  alpha?: number;
  targets?: string;
  targetsRegex?: string;
  modulesToSave?: string;
  rslora?: boolean;
  config?: string;
  seq?: number;
  gradCorrection?: boolean;
  fromScratch?: boolean;
  initMissing?: boolean;
  verify?: boolean;
}

export function program(helpFor?: string): Command {
  const p = new Command('lorafa')
    .description('compile neural-network training to WGSL for WebGPU, built around LoRA-FA')
    .version(packageVersion(), '-V, --version')
    .configureOutput(usageOutput(`lorafa ${helpFor ?? ''}`.trim() + ' --help'))
    .exitOverride();
  const optimizerAndLimits = (c: Command, defaultLimits: string | undefined) =>
    c
      .addOption(new Option('--optimizer <name>', 'optimizer').choices([...OPTIMIZERS]).default('adamw'))
      .option('--momentum <m>', 'SGD momentum', nonNegativeNumber('--momentum'))
      .option('--weight-decay <w>', 'weight decay (AdamW: decoupled, default 0.01; SGD: L2, default 0)', nonNegativeNumber('--weight-decay'))
      .addOption(
        new Option('--limits <preset>', `device limits: webgpu (spec defaults), discrete (4 GiB buffers, 2 GiB bindings), adapter (this machine), none${defaultLimits ? '' : ' (default with -o: adapter)'}`)
          .choices([...Object.keys(LIMIT_PRESETS), 'adapter'])
          .default(defaultLimits),
      )
      .option('--max-binding-size <bytes>', 'override maxStorageBufferBindingSize', byteSize('--max-binding-size'))
      .option('--max-buffer-size <bytes>', 'override maxBufferSize', byteSize('--max-buffer-size'))
      .option('--alignment <bytes>', 'override minStorageBufferOffsetAlignment', positiveInt('--alignment'));
  optimizerAndLimits(commonOptions(p.command('compile').description('trace a model file and compile its training step (forward, loss, gradients); with -o, a runnable trainer folder'), 'lora-fa'), undefined)
    .addOption(new Option('--emit <what>', 'output').choices(['summary', 'ir']).default('summary'))
    .option('--stage <pass>', 'with --emit ir: the graph after this pass (trace, lora, lora-fa, linear-ce when a frozen head was fused, autodiff, simplify, dce; with --budget also optimizer and remat, the default)')
    .option('--locations', 'with --emit ir: annotate nodes with model file:line')
    .option('-o, --out <dir>', 'write a runnable trainer folder there: trainer.ts, plan.json, kernels/*.wgsl')
    .option('--seed <n>', "with -o: the trainer's default seed of the init and the data order", nonNegativeInt('--seed'), 0)
    .option('--grad-accum <k>', 'with -o: compile gradient accumulators (the trainer then takes --grad-accum k)', positiveInt('--grad-accum'))
    .option('--loss-scale <how>', `with -o: compile loss scaling in unless none, and the trainer's default: ${LOSS_SCALE_HELP}`, lossScaleFlag)
    .option('--grad-correction', "LoRA-FA's gradient correction: gB ← (r/alpha)²·(AᵀA)⁻¹·gB")
    .option('--eval-batch <n>', 'with -o: rows per evaluation batch (default: the training batch)', positiveInt('--eval-batch'))
    .addOption(new Option('--dtype <d>', 'with -o: storage of frozen weights and activations on the GPU (trainable parameters, gradients and optimizer state stay f32)').choices([...STORAGE_DTYPES]).default('f32'))
    .option('--budget <size>', 'the most the step may use (e.g. 24GB, 22GiB, bytes): backward recomputes forward values until it fits (with -o, in the trainer; with --emit ir, stage remat)', byteSize('--budget'))
    .addOption(new Option('--kernels <which>', `with -o: ${KERNELS_HELP}; recorded in the trainer`).choices([...KERNEL_CHOICES]))
    .option('--tune', 'with -o: then time each matmul variant of the trainer on this adapter and write <dir>/tuning.json (as lorafa tune <dir>)')
    .action((model: string, f: CompileFlags, cmd: Command) => {
      if (f.tune && !f.out) throw new LorafaError('--tune', 'tunes a trainer folder: it needs -o', 'add -o <dir>, or tune an existing trainer with lorafa tune <dir>');
      return compileCommand(model, f, cmd);
    });
  optimizerAndLimits(commonOptions(p.command('plan').description('plan every byte of one training step (forward, backward, optimizer update)'), 'lora-fa'), 'discrete')
    .addOption(new Option('--dtype <d>', 'storage of frozen weights and activations (trainable state stays f32)').choices([...STORAGE_DTYPES]).default('f32'))
    .addOption(new Option('--attention <impl>', "how attention lowers: fused (keeps no [b, h, s, s] tensor), composed (keeps two), auto (fused from 8 MiB of scores up)").choices(['auto', 'fused', 'composed']).default('auto'))
    .option('--composed', 'trace attention, cross-entropy, the norms and SwiGLU as compositions of primitive ops, as an eager PyTorch step runs them (the plan before the fused ops)')
    .option('--compare', 'full vs LoRA vs LoRA-FA side by side, with ratios')
    .option('--top <n>', 'the n largest saved activations, and whether each of the first n adapted layers keeps its input', positiveInt('--top'))
    .option('--json', 'the whole plan as JSON')
    .option('--svg <file>', 'write a picture of live bytes along the schedule (with --compare: one curve per mode; with --budget or --fit: the budget as a line)')
    .option('--budget <size>', 'the most the step may use (e.g. 24GB, 22GiB, bytes): backward recomputes forward values until the peak fits; the report gives the extra FLOPs', byteSize('--budget'))
    .option('--fit <size>', 'for each mode, the largest batch (at this --seq) that fits the size (e.g. 80GB) without and with recomputation, and the recomputation overhead there', byteSize('--fit'))
    .action((model: string, f: PlanFlags) => planCommand(model, { ...f, fitText: f.fit !== undefined ? rawFlag('--fit') : undefined }));
  addTrainOptions(
    p
      .command('train')
      .description("train a compiled trainer folder (lorafa compile … -o <dir>) on this machine's GPU; the same as npx tsx <dir>/trainer.ts")
      .argument('<dir>', 'the folder lorafa compile -o wrote'),
  ).action(trainCommand);
  const ft = p
    .command('finetune')
    .description(`compile a model and train it on data, with a report and the adapter: a model file (lorafa finetune model.ts --data train.csv) or a preset (${PRESET_NAMES.join(', ')})`)
    .argument('<model>', `a model file, or a preset: ${PRESET_NAMES.join(', ')}`)
    .addOption(new Option('--mode <mode>', 'what trains').choices([...MODES]).default('lora-fa'))
    .option('--rank <r>', "LoRA rank (default: the preset's, else 8)", positiveInt('--rank'))
    .option('--alpha <a>', "LoRA alpha (default: the preset's, else 2·rank)", positiveNumber('--alpha'))
    .option('--targets <names>', "LoRA target modules, comma-separated (PEFT target_modules; default: the model's)")
    .option('--targets-regex <re>', 'a regular expression that must match the whole linear layer name', regexFlag('--targets-regex'))
    .option('--modules-to-save <names>', "modules trained in full beside the adapters, comma-separated (PEFT modules_to_save; default: the preset's, else the model's new heads)")
    .option('--rslora', 'rank-stabilised scale alpha/√rank')
    .option('--config <name>', "a named size from the model file (default: the preset's or the model's)")
    .option('--seq <n>', 'override the sequence length', positiveInt('--seq'))
    .option('--grad-correction', "LoRA-FA's gradient correction: gB ← (r/alpha)²·(AᵀA)⁻¹·gB")
    .option('--from-scratch', "a preset or checkpoint folder: start from the seeded init, not its base weights")
    .option('--init-missing', "initialise weights the base checkpoint lacks from the model's init, instead of failing (a new classifier head never needs it)")
    .option('--verify', 'run the IR verifier after every pass')
    .option('--baselines', "a preset's classical baseline even when slow (fashion-mnist's logistic regression, several seconds; spam's naive Bayes runs by default)")
    .option('--no-baselines', "skip the preset's classical baselines");
  addCompiledOptions(addRunOptions(addDataOptions(ft), { outHelp: 'where the checkpoints, adapter and reports go (default out/finetune-<model>-<mode>)' })).action(finetuneCommand);
  p.command('tune')
    .description("time each matmul kernel variant that fits each distinct matmul shape of a trainer on this machine's adapter, and write <dir>/tuning.json: the trainer then runs the fastest")
    .argument('<dir>', 'the folder lorafa compile -o wrote')
    .option('--runs <n>', 'timed runs per variant, the median kept', positiveInt('--runs'), 5)
    .action(async (dir: string, f: { runs: number }) => {
      if (!existsSync(join(dir, 'plan.json'))) {
        throw new LorafaError(dir, 'no compiled trainer here (plan.json)', `compile one first: lorafa compile model.ts --mode lora-fa -o ${dir}`);
      }
      await tuneTrainer(dir, { runs: f.runs, log: (line) => console.log(line) });
    });
  p.command('doctor')
    .description("report the WebGPU adapter Dawn finds, its limits and memory (or that WebGPU does not report it) and the host's RAM, or why there is none")
    .action(async () => {
      const r = await probeAdapter();
      console.log(formatAdapterReport(r));
      if (!r.ok) process.exitCode = 1;
    });
  return p;
}

async function finetuneCommand(model: string, f: FinetuneCliFlags): Promise<void> {
  if (f.fromScratch && f.base) throw new LorafaError('--from-scratch', 'both --from-scratch and --base given', 'start from the seeded init (--from-scratch) or from base weights (--base), not both');
  const name = PRESET_NAMES.includes(model as never) && !existsSync(resolve(model)) ? model : (model.split(/[\\/]/).pop() ?? model).replace(/\.m?ts$/, '');
  const out = resolve(f.out ?? join('out', `finetune-${name}-${f.mode}${f.gradCorrection ? '-gc' : ''}`));
  checkOutputPath(out, 'folder', '--out');
  await finetune({
    ...f,
    model,
    targets: f.targets ? splitList(f.targets) : undefined,
    modulesToSave: f.modulesToSave !== undefined ? splitList(f.modulesToSave) : undefined,
    optimizer: f.optimizer as 'adamw' | 'sgd' | undefined,
    base: f.fromScratch ? null : f.base,
    out,
    command: commandLine(),
    progress: f.progress,
  });
}

/** `lorafa train <dir>`: imports <dir>/trainer.ts and calls its run(), so both ways run the same code. */
async function trainCommand(dir: string, flags: TrainFlags): Promise<void> {
  const trainer = resolve(dir, 'trainer.ts');
  if (!existsSync(trainer) || !existsSync(join(dir, 'plan.json'))) {
    throw new LorafaError(dir, 'no compiled trainer here (trainer.ts and plan.json)', `compile one first: lorafa compile model.ts --mode lora-fa -o ${dir}`);
  }
  await registerLoaders();
  const mod = (await import(pathToFileURL(trainer).href)) as { run?: (f: TrainFlags) => Promise<unknown> };
  if (typeof mod.run !== 'function') throw new LorafaError(trainer, 'exports no run(flags)', `regenerate it with lorafa compile … -o ${dir}`);
  await mod.run(flags);
}

let invocation: readonly string[] = [];

/** The command line as typed, for reports and the trainer's "re-run this" note. */
function commandLine(): string {
  const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  return ['lorafa', ...invocation].map(quote).join(' ');
}

export async function main(argv: readonly string[]): Promise<number> {
  invocation = argv;
  return asCommand(async () => {
    const sub = argv.find((a) => !a.startsWith('-'));
    await program(sub && ['compile', 'plan', 'train', 'finetune', 'tune', 'doctor'].includes(sub) ? sub : undefined).parseAsync([...argv], { from: 'user' });
  });
}

export { gpuLimits, planStep };
