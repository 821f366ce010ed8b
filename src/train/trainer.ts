// The runtime side of a generated trainer: `npx tsx trainer.ts …` calls trainerCli and `lorafa train
// <dir> …` calls the trainer's run(), which calls runTrainer. Both read the program back from the
// folder (plan.json + kernels/, checked against the trainer's plan hash), open the data the flags
// name and run the one training loop, writing checkpoints, the adapter and the reports into the
// folder (or --out).
import { realpathSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command } from 'commander';
import { usageOutput } from './flags.ts';
import { runWithFilteredStderr } from '../runtime/quiet-dawn.ts';
import { asCommand, LorafaError } from '../ir/errors.ts';
import { listCheckpoints, readCheckpoint } from './checkpoint.ts';
import { openTrainingData } from './data.ts';
import { addCompiledOptions, addDataOptions, addRunOptions, type CompiledFlagValues, type DataFlagValues, type RunFlagValues } from './flags.ts';
import { checkpointDir, rel, runTraining, type TrainResult } from './loop.ts';
import { readTuning, TUNING_FILE } from './tuning.ts';
import type { ProgramSpec, TrainingProgram } from './program.ts';
import type { LrScheduleName } from './schedule.ts';
import { readProgram } from './trainer-files.ts';

export type TrainFlags = DataFlagValues & RunFlagValues & CompiledFlagValues;

export const DEFAULT_LR = 1e-3;
export const DEFAULT_STEPS = 100;

/** The flags `lorafa train` and trainer.ts take. */
export function addTrainOptions(c: Command): Command {
  return addCompiledOptions(addRunOptions(addDataOptions(c), { outHelp: 'where checkpoints, the adapter and the reports go (default: the trainer folder)' })).option(
    '--init-missing',
    "initialise weights the --base checkpoint lacks from the model's init, instead of failing",
  );
}

/** The compiled settings a flag may only repeat. */
function checkCompiled(spec: ProgramSpec, f: CompiledFlagValues): void {
  const fix = (flag: string, v: unknown) => `drop ${flag}, or recompile the trainer with it: ${spec.command.replace(/ -o .*$/, '')} ${flag} ${v} -o <dir>`;
  const o = spec.optimizer;
  const compiled: [string, unknown, unknown][] = [
    ['--batch', f.batch, spec.batch],
    ['--eval-batch', f.evalBatch, spec.evalBatch],
    ['--dtype', f.dtype, spec.dtype ?? 'f32'],
    ['--budget', f.budget, spec.budget?.bytes],
    ['--kernels', f.kernels, spec.kernels ?? 'auto'],
    ['--optimizer', f.optimizer, o.kind],
    ['--weight-decay', f.weightDecay, o.weightDecay ?? (o.kind === 'adamw' ? 0.01 : 0)],
    ['--momentum', f.momentum, o.kind === 'sgd' ? (o.momentum ?? 0) : undefined],
  ];
  for (const [flag, given, has] of compiled) {
    if (given !== undefined && given !== has) {
      throw new LorafaError(flag, `this trainer was compiled with ${flag} ${has ?? '(none)'}; ${given} needs another step`, fix(flag, given));
    }
  }
}

/** On --resume, the settings the run was started with fill the flags left out. */
function resumeDefaults(outDir: string, f: TrainFlags): Partial<TrainFlags> {
  if (!f.resume && !f.resumeFrom) return {};
  // The newest readable one (the loop itself refuses a damaged newest checkpoint, naming it).
  const files = f.resumeFrom ? [f.resumeFrom] : listCheckpoints(checkpointDir(outDir)).map((c) => c.file);
  let meta: Readonly<Record<string, string>> | undefined;
  for (const file of files) {
    try {
      meta = readCheckpoint(file).meta;
      break;
    } catch {
      /* try the previous one */
    }
  }
  if (!meta) return {};
  const s = meta.schedule ? (JSON.parse(meta.schedule) as { kind: LrScheduleName; warmup: number; minRatio: number }) : undefined;
  return {
    lr: meta.lr !== undefined ? Number(meta.lr) : undefined,
    seed: meta.seed !== undefined ? Number(meta.seed) : undefined,
    gradAccum: meta.grad_accum !== undefined ? Number(meta.grad_accum) : undefined,
    lossScale: meta.loss_scale !== undefined ? (JSON.parse(meta.loss_scale) as { setting: 'dynamic' | number }).setting : undefined,
    lrSchedule: s?.kind,
    warmup: s?.warmup,
    minLrRatio: s?.minRatio,
  };
}

/** Trains the program in `outDir` with parsed flags (what trainer.ts's run() calls). */
export async function runTrainer(outDir: string, spec: ProgramSpec, flags: TrainFlags): Promise<TrainResult> {
  const program: TrainingProgram = readProgram(outDir, spec);
  checkCompiled(spec, flags);
  // Tuned kernels for this adapter, when `lorafa tune` left some beside the trainer.
  const tuningFile = readTuning(outDir);
  const tuning = tuningFile && { path: rel(join(outDir, TUNING_FILE)), file: tuningFile };
  const out = flags.out ?? outDir;
  const d = resumeDefaults(out, flags);
  const pick = <K extends keyof TrainFlags>(k: K): TrainFlags[K] => (flags[k] !== undefined ? flags[k] : (d[k] as TrainFlags[K]));
  const seed = pick('seed') ?? spec.seed;
  const data = await openTrainingData(program, flags, { seed, base: flags.base });
  try {
    return await runTraining(program, {
      steps: flags.steps ?? DEFAULT_STEPS,
      lr: pick('lr') ?? DEFAULT_LR,
      schedule: pick('lrSchedule'),
      warmup: pick('warmup'),
      minLrRatio: pick('minLrRatio'),
      gradAccum: pick('gradAccum') ?? 1,
      lossScale: pick('lossScale'),
      seed,
      data,
      evalEvery: flags.evalEvery,
      checkpointEvery: flags.checkpointEvery,
      resume: flags.resume,
      resumeFrom: flags.resumeFrom,
      out,
      base: flags.base,
      initAdapter: flags.initAdapter,
      initMissing: flags.initMissing,
      export: { merged: flags.merged },
      command: `${spec.command} && lorafa train …`,
      title: `${spec.model} (${spec.config}): ${spec.mode}`,
      progress: flags.progress,
      logEvery: flags.logEvery,
      profile: flags.profile,
      tuning,
    });
  } finally {
    data.close();
  }
}

/** The trainer's own command line; resolves to the exit code (2 for usage errors). */
export async function trainerCli(outDir: string, spec: ProgramSpec, argv: readonly string[]): Promise<number> {
  // Run as `npx tsx trainer.ts` with stderr a socket: again as a child without Dawn's warnings.
  if (process.argv[1] && isMain(pathToFileURL(join(outDir, 'trainer.ts')).href)) {
    const filtered = await runWithFilteredStderr(process.argv[1], argv);
    if (filtered !== undefined) return filtered;
  }
  const cmd = addTrainOptions(new Command('trainer.ts'))
    .description(`train ${spec.model} (config ${spec.config}, ${spec.mode}) on this machine's GPU`)
    .configureOutput(usageOutput('trainer.ts --help'))
    .exitOverride();
  return asCommand(async () => {
    cmd.parse([...argv], { from: 'user' });
    await runTrainer(outDir, spec, cmd.opts<TrainFlags>());
  });
}

/** True when the module at `url` is the program node was started with (not an import). */
export function isMain(url: string): boolean {
  const arg = process.argv[1];
  if (!arg) return false;
  try {
    return pathToFileURL(realpathSync(arg)).href === url;
  } catch {
    return false;
  }
}
