// The training loop behind every generated trainer (`out/trainer.ts` and `lorafa train out/`).
//
// 1. Load: plan.json and kernels/ back into the KernelPlan; its hash must be the one trainer.ts
//    was generated with.
// 2. Start: every parameter from its seeded init (rounded to f32), uploaded into buffers exactly
//    as planned; or, with --resume, the trainable parameters and optimizer state of a checkpoint
//    that passes every check (integrity, then the same trainer, then the same seed and lr).
// 3. Step t = start+1 … steps: the synthetic batch of (seed, t), optimizerFeeds(lr, t) (the same
//    bias corrections an uninterrupted run uses at t), one command encoder, the loss read back.
// 4. Checkpoint every K steps and at the end (atomic; the newest two are kept).
import { setTimeout as sleep } from 'node:timers/promises';
import { realpathSync, rmSync } from 'node:fs';
import { join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import cliProgress from 'cli-progress';
import { Command, InvalidArgumentError, Option } from 'commander';
import { readPlanFiles, type LoadedPlan, type TrainerSpec } from '../codegen/trainer-files.ts';
import { LorafaError } from '../ir/errors.ts';
import { fmtBytes } from '../ir/format.ts';
import { optimizerFeeds } from '../passes/optimizer.ts';
import { listCheckpoints, readCheckpoint, removeStaleTemps, writeCheckpoint, type Checkpoint, type CheckpointTensor } from './checkpoint.ts';
import { StepRunner } from './executor.ts';
import { acquireGpu } from './gpu.ts';
import { initParam, resolveDerived } from './init.ts';
import { DATA_SOURCES, syntheticTask, type DataSource, type DataSourceName } from './synthetic.ts';

export type { TrainerSpec } from '../codegen/trainer-files.ts';

export interface LoadedTrainer extends LoadedPlan {
  readonly outDir: string;
  readonly spec: TrainerSpec;
}

export function loadTrainer(outDir: string, spec: TrainerSpec): LoadedTrainer {
  return { ...readPlanFiles(outDir, spec), outDir, spec };
}

export interface TrainOptions {
  /** Train until this step number (a resumed run continues its numbering). */
  readonly steps: number;
  /** Default 1e-3; on --resume, the checkpoint's. */
  readonly lr?: number;
  /** Default: the spec's seed; on --resume, the checkpoint's. */
  readonly seed?: number;
  readonly data?: DataSourceName;
  /** Also checkpoint every K steps (the last step is always checkpointed). */
  readonly checkpointEvery?: number;
  /** Continue from the newest checkpoint in <out>/checkpoints (from scratch when there is none). */
  readonly resume?: boolean;
  /** Continue from this checkpoint file. */
  readonly resumeFrom?: string;
  /** 'auto': a bar on a TTY, plain lines otherwise. */
  readonly progress?: 'auto' | 'bar' | 'lines' | 'none';
  /** Plain-line progress every N steps (default: about ten lines per run). */
  readonly logEvery?: number;
  /** Where plain lines go (default: stdout). */
  readonly log?: (line: string) => void;
  /** Also read back the frozen parameters at the end (tests). */
  readonly readFrozen?: boolean;
}

export interface TrainResult {
  /** The step the run started after (0 for a fresh run). */
  readonly startStep: number;
  readonly endStep: number;
  readonly lr: number;
  readonly seed: number;
  readonly losses: readonly { readonly step: number; readonly loss: number }[];
  /** Final values read back from the GPU: trainable parameters and optimizer state (all, with readFrozen). */
  readonly params: ReadonlyMap<string, Float32Array>;
  /** Initial values uploaded (f32). */
  readonly initial: ReadonlyMap<string, Float32Array>;
  readonly allocatedBytes: number;
  readonly checkpoints: readonly string[];
  readonly resumedFrom?: string;
  /** Mean step time, the first step of the process (shader compilation) left out. */
  readonly msPerStep: number;
}

export const DEFAULT_LR = 1e-3;

export function checkpointDir(outDir: string): string {
  return join(outDir, 'checkpoints');
}

/** What a checkpoint records about the trainer that wrote it; all must match to resume. */
function trainerMeta(spec: TrainerSpec): Record<string, string> {
  return {
    model: spec.model,
    config: spec.config,
    sizes: JSON.stringify(spec.sizes),
    mode: spec.mode,
    lora: JSON.stringify(spec.lora ?? null),
    optimizer: JSON.stringify(spec.optimizer),
    data: spec.data,
    plan_hash: spec.planHash,
  };
}

/** Values of the tensors a checkpoint holds: trainable parameters and optimizer state. */
function checkpointed(t: LoadedTrainer) {
  return t.plan.params.filter((p) => p.trainable || p.role === 'optimizer_state');
}

/** Initial values of every parameter and state tensor (seeded), rounded to f32 as uploaded. */
export function initialValues(t: LoadedPlan, seed: number): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const p of t.plan.params) {
    const init = t.inits[p.name];
    if (!init) throw new LorafaError(p.name, 'plan.json has no init for this parameter');
    const param = { value: { id: 0, name: p.name, type: { dtype: p.dtype, shape: p.shape } }, init, trainable: p.trainable, role: p.role as never };
    out.set(p.name, Float32Array.from(initParam(param, { seed }).data));
  }
  resolveDerived(
    t.plan.params.map((p) => ({ name: p.name, shape: p.shape, init: t.inits[p.name] })),
    (n) => out.get(n),
    (n, data) => out.set(n, Float32Array.from(data)),
  );
  return out;
}

function rel(p: string): string {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}

/**
 * Why checkpoint `c` cannot continue this run, or undefined when it can. Compares the trainer
 * (model, config, mode, LoRA, optimizer, data, plan hash), then every tensor's presence and shape,
 * then the run's seed and lr where the user gave them.
 */
export function incompatibility(t: LoadedTrainer, c: Checkpoint, run: { lr?: number; seed?: number }): { problem: string; fix: string } | undefined {
  const want = trainerMeta(t.spec);
  const diffs = Object.keys(want)
    .filter((k) => c.meta[k] !== want[k])
    .map((k) => `${k} ${c.meta[k] ?? '(missing)'} ≠ ${want[k]} (this trainer)`);
  if (diffs.length) {
    return {
      problem: `was written by a different trainer: ${diffs.join('; ')}`,
      fix: `resume it with the trainer compiled for ${c.meta.model ?? 'its model'} (${c.meta.mode ?? '?'}), or move it out of ${rel(checkpointDir(t.outDir))} and train this model from scratch (drop --resume)`,
    };
  }
  for (const p of checkpointed(t)) {
    const got = c.tensors.get(p.name);
    if (!got) return { problem: `has no tensor "${p.name}"`, fix: 'resume from a checkpoint this trainer wrote' };
    if (got.shape.join(',') !== p.shape.join(',')) return { problem: `holds "${p.name}" as [${got.shape.join(',')}], this trainer's is [${p.shape.join(',')}]`, fix: 'resume from a checkpoint this trainer wrote' };
  }
  const extra = [...c.tensors.keys()].filter((k) => !checkpointed(t).some((p) => p.name === k));
  if (extra.length) return { problem: `holds tensors this trainer does not have: ${extra.slice(0, 5).join(', ')}`, fix: 'resume from a checkpoint this trainer wrote' };
  if (run.seed !== undefined && String(run.seed) !== c.meta.seed) {
    return { problem: `was trained with --seed ${c.meta.seed}, this run asks for --seed ${run.seed} (other data, other init)`, fix: `drop --seed (the checkpoint's is used) or pass --seed ${c.meta.seed}` };
  }
  if (run.lr !== undefined && String(run.lr) !== c.meta.lr) {
    return { problem: `was trained with --lr ${c.meta.lr}, this run asks for --lr ${run.lr}`, fix: `drop --lr (the checkpoint's is used) or pass --lr ${c.meta.lr}` };
  }
  return undefined;
}

/** Reads and checks a checkpoint for this run; throws a LorafaError naming the file otherwise. */
export function loadCompatible(t: LoadedTrainer, file: string, run: { lr?: number; seed?: number }): Checkpoint {
  const c = readCheckpoint(file);
  const why = incompatibility(t, c, run);
  if (why) throw new LorafaError(rel(file), `cannot resume: this checkpoint ${why.problem}`, why.fix);
  return c;
}

/**
 * The checkpoint --resume continues from: the newest in <out>/checkpoints, which must be usable.
 * A damaged or foreign newest checkpoint is refused (never skipped silently: that would drop
 * progress without saying so); the message names the newest usable one for --resume-from.
 */
function findResume(t: LoadedTrainer, run: { lr?: number; seed?: number }): Checkpoint | undefined {
  const all = listCheckpoints(checkpointDir(t.outDir));
  if (!all.length) return undefined;
  try {
    return loadCompatible(t, all[0].file, run);
  } catch (e) {
    if (!(e instanceof LorafaError)) throw e;
    const previous = all.slice(1).find((c) => {
      try {
        loadCompatible(t, c.file, run);
        return true;
      } catch {
        return false;
      }
    });
    const fix = previous
      ? `continue from the previous checkpoint (step ${previous.step}): --resume-from ${rel(previous.file)}` +
        `${e.fix ? `; or ${e.fix}` : `; or delete ${rel(all[0].file)}`}`
      : e.fix ?? `delete ${rel(all[0].file)} and train from scratch (no usable checkpoint is left)`;
    throw new LorafaError(rel(all[0].file), `newest checkpoint: ${e.problem}`, fix);
  }
}

interface Progress {
  step(t: number, loss: number, ms: number): void;
  note(line: string): void;
  end(): void;
}

function progressFor(opts: TrainOptions, first: number, total: number, data: DataSource, gpuBytes: number, log: (s: string) => void): Progress {
  const mode = opts.progress ?? 'auto';
  const rate = (ms: number) => `${Math.round((data.perStep * 1000) / Math.max(ms, 1e-3))} ${data.unit}/s`;
  const gpu = fmtBytes(gpuBytes);
  if (mode === 'none') return { step() {}, note() {}, end() {} };
  if (mode === 'bar' || (mode === 'auto' && process.stderr.isTTY)) {
    const bar = new cliProgress.SingleBar(
      {
        format: 'step {value}/{total} {bar} loss {loss} | {ms} ms/step | {rate} | GPU {gpu} | data {data}',
        hideCursor: true,
        stream: process.stderr,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total, first, { loss: '-', ms: '-', rate: '-', gpu, data: data.name });
    return {
      step: (t, loss, ms) => bar.update(t, { loss: loss.toFixed(4), ms: ms.toFixed(1), rate: rate(ms), gpu, data: data.name }),
      note: (line) => {
        // Printed above the bar, which redraws below it.
        process.stderr.write('\r\x1b[2K');
        log(line);
      },
      end: () => bar.stop(),
    };
  }
  const every = opts.logEvery ?? Math.max(1, Math.round((total - first) / 10));
  // Each line shows the mean step time since the previous line (the first step alone: it
  // includes the driver's shader compilation).
  let sum = 0;
  let count = 0;
  return {
    step: (t, loss, ms) => {
      sum += ms;
      count++;
      if (t === first + 1 || t === total || t % every === 0) {
        const mean = sum / count;
        log(`step ${t}/${total}  loss ${loss.toFixed(4)}  ${mean.toFixed(1)} ms/step  ${rate(mean)}  GPU ${gpu}  data ${data.name}`);
        sum = 0;
        count = 0;
      }
    },
    note: log,
    end() {},
  };
}

function describeOptimizer(spec: TrainerSpec, lr: number): string {
  const o = spec.optimizer;
  if (o.kind === 'sgd') return `SGD lr=${lr}${o.momentum ? ` momentum=${o.momentum}` : ''}${o.weightDecay ? ` weight_decay=${o.weightDecay}` : ''}`;
  return `AdamW lr=${lr} weight_decay=${o.weightDecay ?? 0.01}`;
}

export async function train(t: LoadedTrainer, opts: TrainOptions): Promise<TrainResult> {
  const log = opts.log ?? ((s: string) => void process.stdout.write(s + '\n'));
  const spec = t.spec;
  const data = opts.data ?? 'synthetic';
  if (!(DATA_SOURCES as readonly string[]).includes(data)) {
    throw new LorafaError('--data', `no data source "${data}"`, `until real data sets arrive, use one of: ${DATA_SOURCES.join(', ')}`);
  }
  if (!(Number.isInteger(opts.steps) && opts.steps >= 1)) throw new LorafaError('--steps', `steps must be a positive integer, got ${opts.steps}`);
  const dir = checkpointDir(t.outDir);
  removeStaleTemps(dir);
  const run = { lr: opts.lr, seed: opts.seed };
  const resumed = opts.resumeFrom ? loadCompatible(t, opts.resumeFrom, run) : opts.resume ? findResume(t, run) : undefined;
  const existing = listCheckpoints(dir);
  if (!resumed && existing.length) {
    // A fresh run would prune them as it writes its own: never throw an earlier run away silently.
    throw new LorafaError(
      rel(dir),
      `holds checkpoints of an earlier run (newest: step ${existing[0].step})`,
      `continue it with --resume, or delete ${rel(dir)} to start over`,
    );
  }
  const lr = opts.lr ?? (resumed ? Number(resumed.meta.lr) : DEFAULT_LR);
  const seed = opts.seed ?? (resumed ? Number(resumed.meta.seed) : spec.seed);
  const start = resumed?.step ?? 0;
  if (start > opts.steps) {
    throw new LorafaError(rel(resumed!.file), `this checkpoint is at step ${start}, past --steps ${opts.steps}`, `pass --steps greater than ${start}`);
  }
  const source = syntheticTask(t.plan.inputs, spec.sizes, seed);
  const gpu = await acquireGpu();
  const runner = await StepRunner.create(t.plan, gpu);
  try {
    const initial = initialValues(t, seed);
    runner.writeParams(new Map([...initial].map(([k, data]) => [k, { data }])));
    if (resumed) runner.writeParams(resumed.tensors);

    log(`lorafa train: ${spec.model} (config ${spec.config}), ${spec.mode}, ${describeOptimizer(spec, lr)}, seed ${seed}`);
    log(`data: ${source.description} [synthetic]`);
    log(`device: ${gpu.description}; GPU buffers ${fmtBytes(runner.allocatedBytes)} (plan peak ${fmtBytes(t.plan.bytes)})`);
    if (opts.resume && !resumed) log(`no checkpoint in ${rel(dir)}: starting at step 0`);
    if (resumed) log(`resuming from ${rel(resumed.file)} (step ${start})`);
    if (start === opts.steps) log(`already at step ${start}: nothing to do`);

    const meta = (step: number) => ({ ...trainerMeta(spec), lr: String(lr), seed: String(seed), data_task: source.description, step: String(step) });
    const save = async (step: number): Promise<string> => {
      const values = await runner.readParams();
      const tensors = new Map<string, CheckpointTensor>(checkpointed(t).map((p) => [p.name, { shape: p.shape, data: values.get(p.name)! }]));
      return writeCheckpoint(dir, step, tensors, meta(step));
    };

    const progress = progressFor(opts, start, opts.steps, source, runner.allocatedBytes, log);
    const losses: { step: number; loss: number }[] = [];
    const checkpoints: string[] = [];
    const delay = Number(process.env.LORAFA_STEP_DELAY_MS ?? 0);
    const times: number[] = [];
    const replaced = existing.filter((c) => c.step > start);
    try {
      for (let step = start + 1; step <= opts.steps; step++) {
        const feeds = { ...source.batch(step), ...optimizerFeeds(spec.optimizer, lr, step) };
        const t0 = performance.now();
        const loss = await runner.step(feeds);
        const dt = performance.now() - t0;
        times.push(dt);
        if (!Number.isFinite(loss)) {
          throw new LorafaError(`step ${step}`, `the loss is ${loss}`, `train again with a lower --lr (${lr} now)`);
        }
        losses.push({ step, loss });
        progress.step(step, loss, dt);
        if (step === opts.steps || (opts.checkpointEvery && step % opts.checkpointEvery === 0)) {
          // Checkpoints after the one this run resumed from belong to the timeline it replaces
          // (e.g. a damaged newest one): removed when this run writes its first, so that the
          // newest two kept are this run's (the resumed-from one stays until then).
          for (const c of replaced.splice(0)) {
            rmSync(c.file, { force: true });
            progress.note(`removed ${rel(c.file)} (after step ${start}: replaced by this run)`);
          }
          const file = await save(step);
          checkpoints.push(file);
          if (step !== opts.steps) progress.note(`checkpoint ${rel(file)}`);
        }
        if (delay > 0) await sleep(delay);
      }
    } finally {
      progress.end();
    }
    if (checkpoints.length) log(`checkpoint ${rel(checkpoints[checkpoints.length - 1])}`);
    // The first step of a process includes the driver's shader compilation: reported apart.
    const steady = times.length > 1 ? times.slice(1) : times;
    const msPerStep = steady.length ? steady.reduce((a, b) => a + b, 0) / steady.length : 0;
    if (losses.length) {
      const first = times.length > 1 ? ` (first step ${times[0].toFixed(0)} ms, which includes pipeline warm-up)` : '';
      log(
        `done: steps ${start + 1}–${opts.steps}, loss ${losses[0].loss.toFixed(4)} → ${losses[losses.length - 1].loss.toFixed(4)}, ` +
          `${msPerStep.toFixed(1)} ms/step${first}, ${Math.round((source.perStep * 1000) / Math.max(msPerStep, 1e-3))} ${source.unit}/s [synthetic data]`,
      );
    }
    const all = await runner.readParams();
    const params = new Map([...all].filter(([k]) => opts.readFrozen || checkpointed(t).some((p) => p.name === k)));
    return { startStep: start, endStep: opts.steps, lr, seed, losses, params, initial, allocatedBytes: runner.allocatedBytes, checkpoints, resumedFrom: resumed?.file, msPerStep };
  } finally {
    runner.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// The command line shared by `npx tsx out/trainer.ts …` and `lorafa train out/ …`.

function positiveInt(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got "${v}"`);
    return n;
  };
}

export interface TrainFlags {
  steps: number;
  lr?: number;
  seed?: number;
  data: string;
  checkpointEvery?: number;
  resume?: boolean;
  resumeFrom?: string;
  progress: 'auto' | 'bar' | 'lines' | 'none';
  logEvery?: number;
}

export function addTrainOptions(c: Command): Command {
  return c
    .option('--steps <n>', 'train until step n (a resumed run keeps its numbering)', positiveInt('--steps'), 100)
    .option('--lr <x>', `learning rate (default ${DEFAULT_LR}; with --resume, the checkpoint's)`, (v) => {
      const n = Number(v);
      if (!(Number.isFinite(n) && n >= 0)) throw new InvalidArgumentError(`--lr must be a number ≥ 0, got "${v}"`);
      return n;
    })
    .option('--seed <n>', "seed of the init and the data (default: the trainer's; with --resume, the checkpoint's)", (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`--seed must be an integer ≥ 0, got "${v}"`);
      return n;
    })
    .addOption(new Option('--data <name>', 'data source (only a synthetic learnable task for now)').choices([...DATA_SOURCES]).default('synthetic'))
    .option('--checkpoint-every <k>', 'also checkpoint every k steps (the last step always is)', positiveInt('--checkpoint-every'))
    .option('--resume', 'continue from the newest checkpoint in <out>/checkpoints (from scratch if there is none)')
    .option('--resume-from <file>', 'continue from this checkpoint')
    .addOption(new Option('--progress <how>', 'a progress bar (on a terminal), plain lines, or nothing').choices(['auto', 'bar', 'lines', 'none']).default('auto'))
    .option('--log-every <n>', 'with plain lines: one every n steps', positiveInt('--log-every'));
}

export function trainOptionsFrom(flags: TrainFlags): TrainOptions {
  return {
    steps: flags.steps,
    lr: flags.lr,
    seed: flags.seed,
    data: flags.data as DataSourceName,
    checkpointEvery: flags.checkpointEvery,
    resume: flags.resume,
    resumeFrom: flags.resumeFrom,
    progress: flags.progress,
    logEvery: flags.logEvery,
  };
}

/** Trains the compiled trainer in `outDir` with parsed flags (what `lorafa train` calls). */
export async function runTrainer(outDir: string, spec: TrainerSpec, flags: TrainFlags): Promise<TrainResult> {
  return train(loadTrainer(outDir, spec), trainOptionsFrom(flags));
}

/** The trainer's own command line; resolves to the exit code. */
export async function trainerCli(outDir: string, spec: TrainerSpec, argv: readonly string[]): Promise<number> {
  const cmd = addTrainOptions(new Command(`trainer.ts`))
    .description(`train ${spec.model} (config ${spec.config}, ${spec.mode}) on this machine's GPU`)
    .showHelpAfterError();
  try {
    cmd.parse([...argv], { from: 'user' });
    await runTrainer(outDir, spec, cmd.opts<TrainFlags>());
    return 0;
  } catch (e) {
    if (e instanceof LorafaError) {
      console.error(`lorafa: ${e.message}`);
      return 1;
    }
    throw e;
  }
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
