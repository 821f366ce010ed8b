// `lorafa compile <model> -o <dir>`: the training step (with its optimizer), planned for this
// device's limits, lowered to kernels, and written out as a runnable trainer.
import { relative } from 'node:path';
import { acquireGpu } from '../runtime/gpu.ts';
import { absoluteInits, emitTrainer, type EmittedTrainer } from '../codegen/emit-trainer.ts';
import { buildKernelPlan } from '../codegen/kernel-plan.ts';
import type { TrainerSpec } from '../codegen/trainer-files.ts';
import { fmtBytes } from '../ir/format.ts';
import type { Mode } from '../passes/compile.ts';
import type { OptimizerOptions } from '../passes/optimizer.ts';
import { planStep } from '../runtime/session.ts';
import { syntheticTask } from '../runtime/synthetic.ts';
import type { CompileFlags, ResolvedLimits, Setup } from './main.ts';

export interface WriteTrainerOptions {
  readonly mode: Mode;
  readonly flags: CompileFlags;
  readonly optimizer: OptimizerOptions;
  readonly limits: ResolvedLimits;
  /** The --limits preset name, for plan.json. */
  readonly preset: string;
  readonly command: string;
  readonly log?: (line: string) => void;
}

export async function writeTrainer(s: Setup, o: WriteTrainerOptions): Promise<EmittedTrainer> {
  const log = o.log ?? console.log;
  const { maxWorkgroupsPerDimension, ...limits } = o.limits;
  // As `lorafa plan` does: LoRA-FA is also tried in LoRA's layout (planStep), so its peak never
  // exceeds LoRA's and the trainer allocates exactly what `plan` reports.
  const { compiled, memory: plan } = planStep(s.graph, { mode: o.mode, lora: s.lora, optimizer: o.optimizer, verify: o.flags.verify }, limits);
  const step = compiled.step!;
  // Planned for this machine's adapter: use its subgroup matmul when it has one (the trainer then
  // needs that feature where it runs, which the runtime checks).
  const subgroupSize = o.preset === 'adapter' ? (await acquireGpu()).subgroupSize : undefined;
  const kernelPlan = buildKernelPlan(step, plan, { maxWorkgroupsPerDimension, subgroupSize });
  const inits = absoluteInits(Object.fromEntries(step.params.map((p) => [p.value.name, p.init])), s.m.file);
  const sizes = Object.fromEntries(Object.entries(s.cfg).filter(([, v]) => v !== undefined)) as TrainerSpec['sizes'];
  const data = syntheticTask(kernelPlan.inputs, sizes, o.flags.seed);
  const lora = o.mode === 'full' ? undefined : {
    rank: s.lora.rank,
    alpha: s.lora.alpha,
    targets: s.lora.targets instanceof RegExp ? [] : [...s.lora.targets],
    ...(s.lora.targets instanceof RegExp ? { targetsRegex: s.lora.targets.source } : {}),
    rslora: !!s.lora.rslora,
  };
  const emitted = emitTrainer({
    outDir: o.flags.out!,
    spec: {
      model: s.m.def.name,
      modelFile: s.m.file,
      config: s.config,
      sizes,
      mode: o.mode,
      ...(lora ? { lora } : {}),
      optimizer: o.optimizer,
      seed: o.flags.seed,
      data: 'synthetic',
      command: o.command,
    },
    plan: kernelPlan,
    memory: {
      peak: plan.peak,
      lowerBound: plan.lowerBound,
      fragmentation: Number(plan.fragmentation.toFixed(6)),
      peakStep: plan.peakStep,
      schedule: plan.scheduleName,
      limits: { preset: o.preset, ...limits },
      atPeak: plan.atPeak,
    },
    inits,
    dataTask: data.description,
  });
  const shown = relative(process.cwd(), emitted.outDir) || '.';
  const dir = shown.startsWith('..') ? emitted.outDir : shown;
  const at = (f: string) => `${dir}/${f}`;
  log(`wrote ${at('trainer.ts')}, ${at('plan.json')}, ${at('kernels/')} (${kernelPlan.kernels.length} kernels, ${kernelPlan.dispatches.length} dispatches per step)`);
  log(`${s.m.def.name} (config ${s.config}), ${o.mode}, ${o.optimizer.kind === 'adamw' ? 'AdamW' : 'SGD'}; limits ${o.preset}; GPU memory ${fmtBytes(plan.peak)} (lower bound ${fmtBytes(plan.lowerBound)})`);
  log(`data: ${data.description} [synthetic]`);
  log(`train it:  npx tsx ${at('trainer.ts')} --steps 100 --lr 1e-2`);
  log(`       or: npx lorafa train ${dir} --steps 100 --lr 1e-2`);
  return emitted;
}
