// One training run on a real task, in process, on this machine's GPU:
//
// 1. Trace the model (task's file and config), compile the training step in the requested mode
//    (full / lora / lora-fa, optionally with LoRA-FA's gradient correction), plan it for this
//    device and lower it to kernels; trace it again at the evaluation batch for a forward-only plan.
// 2. Start from seeded inits, then the shipped base model's weights (a torch-layout safetensors
//    state dict, names mapped by the model's stateDictKey, every shape checked), then optionally a
//    PEFT adapter; derived buffers ((AᵀA)⁻¹) are computed from the values actually used.
// 3. Evaluate the starting point (the frozen base), train `steps` steps (warm-up + cosine decay of
//    the learning rate, batch of step t from (seed, t)), evaluate again.
// 4. GPU bytes are measured, not assumed: the device's createBuffer/destroy are counted
//    (BufferMeter), and the training runner's peak is reported beside the plan's.
import { join, resolve } from 'node:path';
import { existsSync } from 'node:fs';
import { loadModel, trace, type LoadedModel } from '../cli/load.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Tensor } from '../ir/shape.ts';
import type { Graph } from '../ir/types.ts';
import { loadStateDict } from '../io/weights.ts';
import { importPeftAdapter } from '../io/peft.ts';
import type { Compiled, Mode } from '../passes/compile.ts';
import { applyLora, type LoraOptions } from '../passes/lora.ts';
import type { Category, MemoryPlan } from '../passes/memory-plan.ts';
import { optimizerFeeds, type OptimizerOptions } from '../passes/optimizer.ts';
import { StepRunner } from '../runtime/executor.ts';
import { acquireGpu, type Gpu } from '../runtime/gpu.ts';
import { initParams, resolveDerivedTensors } from '../runtime/init.ts';
import { planForwardForGpu, planStepForGpu, type PlannedStep } from '../runtime/session.ts';
import { loadTokenizer, PRETRAINED_DIR, ROOT, TASKS, type Task, type TaskData } from './tasks.ts';
import type { CharTokenizer } from '../data/tokenizer.ts';

export interface RunOptions {
  readonly task: Task;
  readonly mode: Mode;
  readonly gradCorrection?: boolean;
  readonly seed: number;
  readonly steps?: number;
  readonly lr?: number;
  readonly rank?: number;
  readonly alpha?: number;
  readonly targets?: readonly string[];
  readonly optimizer?: OptimizerOptions;
  /** Base weights directory (model.safetensors); default: the task's shipped base; null: from scratch. */
  readonly base?: string | null;
  /** A PEFT adapter directory to start the adapters from. */
  readonly initAdapter?: string;
  /** The step already planned with this GPU's limits for these options (`lorafa finetune`'s plan comparison). */
  readonly planned?: { readonly compiled: Compiled; readonly memory: MemoryPlan };
  /** Evaluate every N steps as well (default: the task's). */
  readonly evalEvery?: number;
  /** Skip the evaluation before training (pretraining from scratch). */
  readonly skipBefore?: boolean;
  readonly log?: (line: string) => void;
  /** Called after every step (progress bars). */
  readonly onStep?: (step: number, steps: number, loss: number, ms: number) => void;
}

export interface Metrics {
  /** Mean cross-entropy over the evaluation set (nats per sample, or per character for LM). */
  readonly loss: number;
  /** Classification: fraction correct. */
  readonly accuracy?: number;
  readonly count: number;
}

export interface RunResult {
  readonly task: string;
  readonly mode: Mode;
  readonly gradCorrection: boolean;
  readonly seed: number;
  readonly steps: number;
  readonly lr: number;
  readonly lora?: LoraOptions;
  readonly data: string;
  readonly before?: Metrics;
  readonly after: Metrics;
  readonly evals: readonly { readonly step: number; readonly metrics: Metrics }[];
  readonly losses: readonly { readonly step: number; readonly loss: number }[];
  /** Mean step time without the first step (which includes the driver's shader compilation). */
  readonly msPerStep: number;
  readonly firstStepMs: number;
  readonly gpu: {
    /** Peak bytes of GPU buffers created for training (BufferMeter), readbacks excluded. */
    readonly measured: number;
    /** The memory plan's peak (what the runner should allocate, plus a 4-byte loss readback). */
    readonly planned: number;
    readonly lowerBound: number;
    readonly atPeak: Readonly<Record<Category, number>>;
  };
  readonly trainable: number;
  readonly device: string;
  /** Final values of the forward graph's parameters (base, adapters, heads), f32. */
  readonly values: ReadonlyMap<string, Float32Array>;
  readonly forward: Graph;
  readonly memory: MemoryPlan;
  readonly model: LoadedModel;
}

/** Linear warm-up to lr (at most a tenth of the run), then cosine decay to lr/10 at the last step. */
export function lrAt(t: number, steps: number, lr: number, warmupSteps: number): number {
  // A run shorter than ten warm-ups warms up for a tenth of its steps, so it still reaches the peak and decays.
  const warmup = Math.min(warmupSteps, Math.floor(steps / 10));
  if (t <= warmup) return (lr * t) / Math.max(1, warmup);
  const p = (t - warmup) / Math.max(1, steps - warmup);
  return lr * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, p))));
}

export function baseDir(task: Task, base: string | null | undefined): string | undefined {
  if (base === null) return undefined;
  if (base !== undefined) return resolve(base);
  return task.base ? join(PRETRAINED_DIR, task.base) : undefined;
}

export function loraOptionsFor(task: Task, m: LoadedModel, o: Pick<RunOptions, 'mode' | 'rank' | 'alpha' | 'targets'>): LoraOptions | undefined {
  if (o.mode === 'full') return undefined;
  const d = task.defaults;
  const rank = o.rank ?? d.rank;
  return {
    rank,
    alpha: o.alpha ?? d.alpha,
    targets: o.targets ?? d.targets ?? m.def.defaultTargets ?? [],
    modulesToSave: m.def.modulesToSave,
  };
}

/** Loads base weights for `g`'s own parameters; reports what the file lacks and what it has in excess. */
export function loadBase(file: string, g: Graph, keyFor: ((n: string) => string) | undefined, log: (s: string) => void, shipped = true): Map<string, Float32Array> {
  const fix = shipped
    ? 'restore the shipped base models with `git checkout models/pretrained`, or rebuild them with `npm run pretrain`'
    : `pass --base a directory whose model.safetensors holds ${g.name}'s weights (e.g. written by \`npm run pretrain -- --out DIR\` or \`lorafa finetune --mode full\`), or drop --base to start from the shipped base model`;
  if (!existsSync(file)) throw new LorafaError(file, 'no base model here (model.safetensors)', fix);
  let values: Map<string, Float32Array>;
  let fresh: readonly string[] = [];
  let unused: readonly string[] = [];
  try {
    values = loadStateDict(file, g, { keyFor, strict: false, onKeys: (k) => ([fresh, unused] = [k.missing, k.unexpected]) });
  } catch (e) {
    if (e instanceof LorafaError) throw new LorafaError(e.where, e.problem, fix);
    throw e;
  }
  log(`base: ${values.size} tensors from ${rel(file)}` + (fresh.length ? `; new (initialised here): ${fresh.join(', ')}` : '') + (unused.length ? `; not used by this model: ${unused.join(', ')}` : ''));
  return values;
}

function rel(p: string): string {
  return p.startsWith(ROOT + '/') ? p.slice(ROOT.length + 1) : p;
}

/** Everything a task run needs that does not depend on the mode: data, tokenizer, model. */
export interface TaskContext {
  readonly task: Task;
  readonly model: LoadedModel;
  readonly tokenizer?: CharTokenizer;
  readonly data: TaskData;
  readonly seed: number;
}

export async function openTask(task: Task, seed: number, opts: { base?: string | null; tokenizerDir?: string; evalOn?: 'test' | 'validation' } = {}): Promise<TaskContext> {
  const model = await loadModel(join(ROOT, task.model));
  const cfg = model.def.configs[task.config];
  const needsTokenizer = task.name === 'brown' || task.name === 'spam';
  const tokDir = opts.tokenizerDir ?? baseDir(task, opts.base) ?? join(PRETRAINED_DIR, TASKS.brown.produces!);
  const tokenizer = needsTokenizer ? loadTokenizer(tokDir, opts.tokenizerDir === undefined && typeof opts.base === 'string') : undefined;
  if (tokenizer && typeof cfg.vocab === 'number' && tokenizer.vocabSize > cfg.vocab) {
    throw new LorafaError(`${task.model} config ${task.config}`, `vocab ${cfg.vocab} is smaller than the tokenizer's ${tokenizer.vocabSize} symbols`, 'raise vocab in the config');
  }
  const data = task.open({ seed, batch: cfg.batch, seq: cfg.seq, tokenizer, evalOn: opts.evalOn });
  return { task, model, tokenizer, data, seed };
}

function argmaxAccuracy(logits: ArrayLike<number>, labels: Int32Array, valid: number, classes: number): { correct: number; loss: number } {
  let correct = 0;
  let loss = 0;
  for (let r = 0; r < valid; r++) {
    let best = 0;
    let max = -Infinity;
    for (let c = 0; c < classes; c++) {
      const v = logits[r * classes + c];
      if (v > max) {
        max = v;
        best = c;
      }
    }
    let z = 0;
    for (let c = 0; c < classes; c++) z += Math.exp(logits[r * classes + c] - max);
    loss += Math.log(z) + max - logits[r * classes + labels[r]];
    if (best === labels[r]) correct++;
  }
  return { correct, loss };
}

/** Evaluates the forward plan on the task's fixed evaluation set. */
async function evaluate(runner: StepRunner, ctx: TaskContext, evalBatch: number, classes: number | undefined): Promise<Metrics> {
  let count = 0;
  let lossSum = 0;
  let correct = 0;
  for (const b of ctx.data.evalSet(evalBatch)) {
    const loss = await runner.step(b.feeds);
    if (ctx.task.kind === 'lm') {
      lossSum += loss * b.valid;
      count += b.valid;
      continue;
    }
    const logits = await runner.readOutput('logits');
    const r = argmaxAccuracy(logits, b.labels!, b.valid, classes!);
    correct += r.correct;
    lossSum += r.loss;
    count += b.valid;
  }
  return ctx.task.kind === 'lm' ? { loss: lossSum / count, count } : { loss: lossSum / count, accuracy: correct / count, count };
}

export async function runTask(ctx: TaskContext, o: Omit<RunOptions, 'task' | 'seed'>): Promise<RunResult> {
  const { task, model: m, seed } = ctx;
  const log = o.log ?? (() => {});
  const d = task.defaults;
  const steps = o.steps ?? d.steps;
  const lr = o.lr ?? d.lr[o.mode];
  const optimizer = o.optimizer ?? d.optimizer;
  const lora = loraOptionsFor(task, m, o);
  const gpu: Gpu = await acquireGpu();
  const cfg = m.def.configs[task.config];
  const classes = typeof cfg.classes === 'number' ? cfg.classes : undefined;

  // 1. Plans: the training step, and the forward graph at the evaluation batch.
  const graph = trace(m, task.config);
  const planned: PlannedStep = planStepForGpu(graph, { mode: o.mode, lora, optimizer, gradCorrection: o.gradCorrection }, gpu, o.planned);
  const step = planned.compiled.step!;
  const evalBatch = Math.min(d.evalBatch, Math.max(1, ctx.data.testCount));
  const evalModel = trace(m, task.config, { batch: evalBatch });
  const evalGraph = lora ? applyLora(evalModel, lora).graph : evalModel;
  const evalPlan = planForwardForGpu(evalGraph, gpu);

  // 2. Starting values.
  const values = initParams(step, { seed }) as Map<string, Tensor>;
  const dir = baseDir(task, o.base);
  if (dir) {
    for (const [k, v] of loadBase(join(dir, 'model.safetensors'), graph, m.def.stateDictKey, log, o.base === undefined)) values.set(k, { shape: values.get(k)!.shape, data: Float64Array.from(v) });
  }
  if (o.initAdapter) {
    const a = importPeftAdapter(o.initAdapter, planned.compiled.forward, { keyFor: m.def.stateDictKey });
    for (const [k, v] of a.values) values.set(k, { shape: values.get(k)!.shape, data: Float64Array.from(v) });
    log(`adapter: ${a.values.size} tensors from ${rel(resolve(o.initAdapter))}`);
  }
  resolveDerivedTensors(step.params, values);
  const f32 = new Map([...values].map(([k, v]) => [k, { data: Float32Array.from(v.data) }]));

  // 3. Evaluation runner first (its bytes are not the training step's), then the training runner,
  //    measured from here.
  const evalRunner = await StepRunner.create(evalPlan.kernels, gpu);
  try {
    const forwardNames = new Set(evalGraph.params.map((p) => p.value.name));
    const toEval = (vals: ReadonlyMap<string, { data: ArrayLike<number> } | Float32Array>) =>
      evalRunner.writeParams(new Map([...vals].filter(([k]) => forwardNames.has(k)).map(([k, v]) => [k, v instanceof Float32Array ? { data: v } : v])));
    toEval(f32);
    const evals: { step: number; metrics: Metrics }[] = [];
    const before = o.skipBefore ? undefined : await evaluate(evalRunner, ctx, evalBatch, classes);
    if (before) {
      evals.push({ step: 0, metrics: before });
      log(`step 0 (before training): ${fmtMetrics(before)}`);
    }

    const baseline = gpu.memory.live;
    gpu.memory.resetPeak();
    const runner = await StepRunner.create(planned.kernels, gpu);
    let measured = 0;
    const losses: { step: number; loss: number }[] = [];
    const times: number[] = [];
    let finalValues: Map<string, Float32Array>;
    try {
      runner.writeParams(f32);
      const every = o.evalEvery ?? d.evalEvery;
      for (let t = 1; t <= steps; t++) {
        const feeds = { ...ctx.data.batch(t), ...optimizerFeeds(optimizer, lrAt(t, steps, lr, d.warmup), t) };
        const t0 = performance.now();
        const loss = await runner.step(feeds);
        const ms = performance.now() - t0;
        times.push(ms);
        if (!Number.isFinite(loss)) throw new LorafaError(`${task.name} step ${t}`, `the loss is ${loss}`, `train again with a lower --lr (${lr} now)`);
        losses.push({ step: t, loss });
        o.onStep?.(t, steps, loss, ms);
        if (t === steps) measured = gpu.memory.peak - baseline;
        if (every > 0 && t % every === 0 && t !== steps) {
          toEval(await runner.readParams());
          const mt = await evaluate(evalRunner, ctx, evalBatch, classes);
          evals.push({ step: t, metrics: mt });
          log(`step ${t}: train loss ${loss.toFixed(4)}, eval ${fmtMetrics(mt)}`);
        }
      }
      finalValues = await runner.readParams();
    } finally {
      runner.destroy();
    }
    toEval(finalValues);
    const after = await evaluate(evalRunner, ctx, evalBatch, classes);
    evals.push({ step: steps, metrics: after });
    const steady = times.length > 1 ? times.slice(1) : times;
    const forwardValues = new Map([...finalValues].filter(([k]) => forwardNames.has(k)));
    return {
      task: task.name,
      mode: o.mode,
      gradCorrection: !!o.gradCorrection,
      seed,
      steps,
      lr,
      lora,
      data: ctx.data.description,
      before,
      after,
      evals,
      losses,
      msPerStep: steady.reduce((a, b) => a + b, 0) / Math.max(1, steady.length),
      firstStepMs: times[0] ?? 0,
      gpu: { measured, planned: planned.kernels.bytes, lowerBound: planned.memory.lowerBound, atPeak: planned.memory.atPeak },
      trainable: step.params.filter((p) => p.trainable).reduce((s, p) => s + p.value.type.shape.reduce((a, b) => a * b, 1), 0),
      device: gpu.description,
      values: forwardValues,
      forward: planned.compiled.forward,
      memory: planned.memory,
      model: m,
    };
  } finally {
    evalRunner.destroy();
  }
}

export function fmtMetrics(m: Metrics): string {
  return m.accuracy !== undefined
    ? `accuracy ${(100 * m.accuracy).toFixed(2)}% (${m.count} samples), loss ${m.loss.toFixed(4)}`
    : `loss ${m.loss.toFixed(4)} nats/char = ${(m.loss / Math.LN2).toFixed(3)} bits/char (${m.count} characters)`;
}
